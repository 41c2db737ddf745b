"""A warm pool of spare tenant schemas (role, schema, DDL and grants made ahead of time).

Revision ID: m0011
Revises: m0010
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "m0011"
down_revision: str | None = "m0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "spare_schemas",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("revision", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema="tenantry",
    )


def downgrade() -> None:
    op.drop_table("spare_schemas", schema="tenantry")
