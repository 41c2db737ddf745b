"""Tenants with devices whose availability is monitored: the monitor (app.services.inventory.
availability) looks only into these schemas, not into every tenant's, every few seconds. A tenant
gets a row when one of its devices is given a required interval.

Revision ID: m0021
Revises: m0020
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "m0021"
down_revision: str | None = "m0020"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "monitored_tenants",
        sa.Column("tenant_id", sa.Text(), sa.ForeignKey("tenantry.tenants.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema="tenantry",
    )


def downgrade() -> None:
    op.drop_table("monitored_tenants", schema="tenantry")
