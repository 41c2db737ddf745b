"""OIDC identity providers per tenant (optionally inherited by its subtenants).

Revision ID: m0007
Revises: m0006
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "m0007"
down_revision: str | None = "m0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "identity_providers",
        sa.Column("tenant_id", sa.Text(), sa.ForeignKey("tenantry.tenants.id"), primary_key=True),
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=False),
        # AES-GCM with a key derived from the platform secret: a database dump alone reveals nothing.
        sa.Column("client_secret_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("role_claim", sa.Text(), nullable=False, server_default="roles"),
        sa.Column("role_mapping", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("default_role", sa.Text()),
        sa.Column("inherit", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema="tenantry",
    )


def downgrade() -> None:
    op.drop_table("identity_providers", schema="tenantry")
