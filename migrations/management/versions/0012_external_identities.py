"""External identities bound to users by (issuer, subject); single sign-on sessions keep a reach.

An identity provider's sign-in used to find the platform user by the `email` claim, so any
tenant admin who ran a provider could sign in as anyone. Now a provider's (issuer, subject)
maps to a user only through a stored link, made when the provider creates a new account or
when a signed-in user links their account explicitly.

Revision ID: m0012
Revises: m0011
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "m0012"
down_revision: str | None = "m0011"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "external_identities",
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("tenantry.users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("issuer", "subject"),
        schema="tenantry",
    )
    op.create_index("external_identities_user_idx", "external_identities", ["user_id"], schema="tenantry")
    # The tenant (or "<tenant>/*" for its subtree) a single sign-on session is limited to.
    op.add_column("refresh_tokens", sa.Column("reach", sa.Text()), schema="tenantry")


def downgrade() -> None:
    op.drop_column("refresh_tokens", "reach", schema="tenantry")
    op.drop_table("external_identities", schema="tenantry")
