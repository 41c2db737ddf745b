"""The IoT data plane: groups, child devices, measurements, events, alarms, operations,
device credentials, custom roles and retention rules.

Revision ID: t0003
Revises: t0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "t0003"
down_revision: str | None = "t0002"
branch_labels: str | None = None
depends_on: str | None = None

TS = sa.DateTime(timezone=True)


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True)


def _device_fk() -> sa.Column[int]:
    # Deleting a device deletes its data (documented; the alternative leaves orphans to purge).
    return sa.Column("device_id", sa.BigInteger(), sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False)


def upgrade() -> None:
    op.add_column("devices", sa.Column("parent_id", sa.BigInteger(),
                                       sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=True))
    op.create_index("devices_parent_idx", "devices", ["parent_id"])
    op.create_index("devices_fragments_idx", "devices", ["fragments"], postgresql_using="gin",
                    postgresql_ops={"fragments": "jsonb_path_ops"})

    op.create_table(
        "groups",
        _id(),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("parent_id", sa.BigInteger(), sa.ForeignKey("groups.id", ondelete="CASCADE")),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("groups_parent_idx", "groups", ["parent_id"])
    op.create_table(
        "group_devices",
        sa.Column("group_id", sa.BigInteger(), sa.ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("device_id", sa.BigInteger(), sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    )
    op.create_index("group_devices_device_idx", "group_devices", ["device_id"])

    op.create_table(
        "measurements",
        _id(),
        # No foreign key here: at ingest rates the per-row check costs a third of the insert.
        # Writers lock the devices they write for (FOR KEY SHARE, once per batch) and a device's
        # deletion deletes its measurements explicitly (app.services.inventory.devices.delete_device).
        sa.Column("device_id", sa.BigInteger(), nullable=False),
        sa.Column("time", TS, nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("series", sa.Text(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("unit", sa.Text()),
    )
    # Every read is by device and time range (keyset on time, id); series/type filter on top.
    op.create_index("measurements_device_time_idx", "measurements", ["device_id", "time", "id"])
    # Retention deletes by age: BRIN is tiny and nearly free to maintain for append-mostly time.
    op.create_index("measurements_time_brin", "measurements", ["time"], postgresql_using="brin")

    op.create_table(
        "events",
        _id(),
        _device_fk(),
        sa.Column("time", TS, nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("attributes", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("events_device_time_idx", "events", ["device_id", "time", "id"])
    op.create_index("events_type_time_idx", "events", ["type", "time", "id"])
    op.create_index("events_time_brin", "events", ["time"], postgresql_using="brin")

    op.create_table(
        "alarms",
        _id(),
        _device_fk(),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="ACTIVE"),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("first_raised_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("last_raised_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("severity IN ('CRITICAL', 'MAJOR', 'MINOR', 'WARNING')", name="alarms_severity_check"),
        sa.CheckConstraint("status IN ('ACTIVE', 'ACKNOWLEDGED', 'CLEARED')", name="alarms_status_check"),
    )
    # At most one open alarm per device and type: raising again is an upsert on this index.
    op.create_index("alarms_open_key", "alarms", ["device_id", "type"], unique=True,
                    postgresql_where=sa.text("status <> 'CLEARED'"))
    op.create_index("alarms_device_idx", "alarms", ["device_id", "id"])
    op.create_index("alarms_status_severity_idx", "alarms", ["status", "severity", "id"])

    op.create_table(
        "operations",
        _id(),
        _device_fk(),
        sa.Column("status", sa.Text(), nullable=False, server_default="PENDING"),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("failure_reason", sa.Text()),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("status IN ('PENDING', 'EXECUTING', 'SUCCESSFUL', 'FAILED')",
                           name="operations_status_check"),
    )
    op.create_index("operations_device_status_idx", "operations", ["device_id", "status", "id"])

    op.create_table(
        "device_tokens",
        _id(),
        _device_fk(),
        sa.Column("token_hash", sa.LargeBinary(), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("revoked_at", TS),
    )
    op.create_index("device_tokens_device_idx", "device_tokens", ["device_id"])

    op.create_table(
        "roles",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("permissions", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
    )

    op.create_table(
        "retention_rules",
        _id(),
        sa.Column("data_type", sa.Text(), nullable=False),
        sa.Column("type", sa.Text()),
        sa.Column("max_age_days", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("data_type IN ('MEASUREMENT', 'EVENT', 'ALARM', 'OPERATION', '*')",
                           name="retention_rules_data_type_check"),
        sa.CheckConstraint("max_age_days > 0", name="retention_rules_max_age_check"),
    )


def downgrade() -> None:
    for table in ("retention_rules", "roles", "device_tokens", "operations", "alarms", "events", "measurements",
                  "group_devices", "groups"):
        op.drop_table(table)
    op.drop_index("devices_fragments_idx", "devices")
    op.drop_index("devices_parent_idx", "devices")
    op.drop_column("devices", "parent_id")
