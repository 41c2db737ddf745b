"""Device templates a tenant defines, and the children it shares each with.

Revision ID: m0010
Revises: m0009
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "m0010"
down_revision: str | None = "m0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "device_templates",
        sa.Column("id", sa.Uuid(), primary_key=True, server_default=sa.func.gen_random_uuid()),
        sa.Column("owner_tenant", sa.Text(), sa.ForeignKey("tenantry.tenants.id"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("fragments", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("series", postgresql.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema="tenantry",
    )
    op.create_index("device_templates_owner_idx", "device_templates", ["owner_tenant"], schema="tenantry")
    op.create_table(
        "device_template_shares",
        sa.Column("template_id", sa.Uuid(), sa.ForeignKey("tenantry.device_templates.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("tenant_id", sa.Text(), sa.ForeignKey("tenantry.tenants.id"), primary_key=True),
        schema="tenantry",
    )


def downgrade() -> None:
    op.drop_table("device_template_shares", schema="tenantry")
    op.drop_table("device_templates", schema="tenantry")
