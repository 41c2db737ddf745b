"""Group-scoped (inventory) memberships: a membership may be restricted to device groups.

Revision ID: m0002
Revises: m0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "m0002"
down_revision: str | None = "m0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # NULL: the whole tenant; otherwise only devices in these groups (and their subgroups).
    op.add_column("memberships", sa.Column("group_ids", postgresql.ARRAY(sa.BigInteger())), schema="tenantry")


def downgrade() -> None:
    op.drop_column("memberships", "group_ids", schema="tenantry")
