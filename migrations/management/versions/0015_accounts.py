"""Accounts: disabled users, and single-use password reset tokens.

Revision ID: m0015
Revises: m0014
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "m0015"
down_revision: str | None = "m0014"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("disabled_at", sa.DateTime(timezone=True)), schema="tenantry")
    op.create_table(
        "password_resets",
        sa.Column("id", sa.Uuid(), primary_key=True, server_default=sa.func.gen_random_uuid()),
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("tenantry.users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True)),
        schema="tenantry",
    )


def downgrade() -> None:
    op.drop_table("password_resets", schema="tenantry")
    op.drop_column("users", "disabled_at", schema="tenantry")
