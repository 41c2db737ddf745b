"""Idempotency keys: the first answer to a mutation, replayed for a retry with the same key.

Revision ID: m0013
Revises: m0012
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "m0013"
down_revision: str | None = "m0012"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("caller", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("tenant_id", "caller", "key"),
        schema="tenantry",
    )
    op.create_index("idempotency_keys_created_idx", "idempotency_keys", ["created_at"], schema="tenantry")


def downgrade() -> None:
    op.drop_table("idempotency_keys", schema="tenantry")
