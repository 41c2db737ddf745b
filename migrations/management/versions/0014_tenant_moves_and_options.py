"""Tenant moves (parent history, for invoices by period) and tenant options (settings, sealed secrets).

Revision ID: m0014
Revises: m0013
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "m0014"
down_revision: str | None = "m0013"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "tenant_moves",
        sa.Column("id", sa.Uuid(), primary_key=True, server_default=sa.func.gen_random_uuid()),
        sa.Column("tenant_id", sa.Text(), sa.ForeignKey("tenantry.tenants.id"), nullable=False),
        sa.Column("old_parent", sa.Text(), nullable=False),
        sa.Column("new_parent", sa.Text(), nullable=False),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema="tenantry",
    )
    op.create_index("tenant_moves_tenant_idx", "tenant_moves", ["tenant_id", "moved_at"], schema="tenantry")
    op.create_table(
        "tenant_options",
        sa.Column("tenant_id", sa.Text(), sa.ForeignKey("tenantry.tenants.id"), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text()),  # null for a secret
        sa.Column("sealed", sa.LargeBinary()),  # a secret's value, AES-GCM sealed
        sa.Column("inheritable", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("tenant_id", "category", "key"),
        schema="tenantry",
    )


def downgrade() -> None:
    op.drop_table("tenant_options", schema="tenantry")
    op.drop_table("tenant_moves", schema="tenantry")
