"""Usage metering (daily counters and snapshots), limit warnings, and the mail outbox.

Revision ID: m0003
Revises: m0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "m0003"
down_revision: str | None = "m0002"
branch_labels: str | None = None
depends_on: str | None = None

S = "tenantry"
COUNTERS = ("request_count", "device_request_count", "measurements_created_count", "events_created_count",
            "events_updated_count", "alarms_created_count", "alarms_updated_count", "inventories_created_count",
            "inventories_updated_count", "operations_created_count", "operations_updated_count")
SNAPSHOTS = ("device_count", "device_with_children_count", "storage_size", "user_count", "subtenant_count")


def upgrade() -> None:
    # No foreign key to tenants: rows outlive nothing (tenant rows are never removed), and the
    # flush's add-upsert stays a single statement without a per-row check.
    op.create_table(
        "usage_daily",
        sa.Column("tenant_id", sa.Text(), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        *(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0") for name in COUNTERS + SNAPSHOTS),
        schema=S,
    )
    op.create_index("usage_daily_day_idx", "usage_daily", ["day", "tenant_id"], schema=S)
    op.create_table(
        "limit_warnings",
        sa.Column("tenant_id", sa.Text(), primary_key=True),
        sa.Column("limit_name", sa.Text(), primary_key=True),
        sa.Column("crossed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("usage", sa.BigInteger(), nullable=False),
        sa.Column("limit_value", sa.BigInteger(), nullable=False),
        schema=S,
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), primary_key=True),
        sa.Column("tenant_id", sa.Text()),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        schema=S,
    )
    op.create_index("outbox_unsent_idx", "outbox", ["id"], schema=S, postgresql_where=sa.text("sent_at IS NULL"))


def downgrade() -> None:
    for table in ("outbox", "limit_warnings", "usage_daily"):
        op.drop_table(table, schema=S)
