"""Device credentials that moved with their device to another tenant.

A device token names the tenant it was issued in; after a migration the device keeps its
token, and this table (token hash → tenant) routes it to where the device now lives.

Revision ID: m0009
Revises: m0008
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "m0009"
down_revision: str | None = "m0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "device_token_moves",
        sa.Column("token_hash", sa.LargeBinary(), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema="tenantry",
    )


def downgrade() -> None:
    op.drop_table("device_token_moves", schema="tenantry")
