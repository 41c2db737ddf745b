"""External ids (type + value, unique per tenant) resolving to a device.

Revision ID: t0002
Revises: t0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "t0002"
down_revision: str | None = "t0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "external_ids",
        sa.Column("type", sa.Text(), primary_key=True),
        sa.Column("value", sa.Text(), primary_key=True),
        sa.Column("device_id", sa.BigInteger(), sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("external_ids_device_idx", "external_ids", ["device_id"])


def downgrade() -> None:
    op.drop_table("external_ids")
