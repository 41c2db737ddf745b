"""Usage counts what a tenant's operations were estimated to cost (the objects their answers could
hold: app.graphql.engine.cost), beside how many there were.

Revision ID: m0018
Revises: m0017
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "m0018"
down_revision: str | None = "m0017"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("usage_daily", sa.Column("query_cost", sa.BigInteger(), nullable=False, server_default="0"),
                  schema="tenantry")


def downgrade() -> None:
    op.drop_column("usage_daily", "query_cost", schema="tenantry")
