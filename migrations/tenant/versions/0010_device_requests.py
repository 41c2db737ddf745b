"""Devices asking to join (requestDeviceRegistration): one row per external id — PREAUTHORIZED by an
admin ahead of time, or PENDING once a device asked with its claim code (kept hashed), ACCEPTED when an
admin (or the preauthorisation) let it in and its device exists, DELIVERED once the device collected its
credentials (once). In the tenant's own schema: a parent never reads them, and they go with the tenant.

Revision ID: t0010
Revises: t0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "t0010"
down_revision: str | None = "t0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "device_requests",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), primary_key=True),
        sa.Column("external_id", sa.Text(), nullable=False, unique=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("claim_hash", sa.LargeBinary()),
        sa.Column("device_id", sa.BigInteger(), sa.ForeignKey("devices.id", ondelete="SET NULL")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("requested_at", sa.DateTime(timezone=True)),
        sa.Column("accepted_at", sa.DateTime(timezone=True)),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("status IN ('PREAUTHORIZED', 'PENDING', 'ACCEPTED', 'DELIVERED')",
                           name="device_requests_status_check"),
    )
    op.create_index("device_requests_status_idx", "device_requests", ["status", "id"])


def downgrade() -> None:
    op.drop_index("device_requests_status_idx", "device_requests")
    op.drop_table("device_requests")
