"""Parent access policy: whether parent-level users may reach a tenant's data.

Revision ID: m0005
Revises: m0004
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "m0005"
down_revision: str | None = "m0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Expand-only: a column with a default, so running servers are unaffected.
    op.add_column("tenants", sa.Column("parent_access", sa.Text(), nullable=False, server_default="MANAGEMENT_ONLY"),
                  schema="tenantry")
    op.create_check_constraint("tenants_parent_access_check", "tenants",
                               "parent_access IN ('MANAGEMENT_ONLY', 'FULL')", schema="tenantry")


def downgrade() -> None:
    op.drop_constraint("tenants_parent_access_check", "tenants", schema="tenantry")
    op.drop_column("tenants", "parent_access", schema="tenantry")
