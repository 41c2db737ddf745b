"""A rotated refresh token remembers its successor (sealed with the platform key), so that the
same token presented again within the grace window (two tabs refreshing at once, a retry after a
lost answer) gets the same successor instead of revoking the login session.

Revision ID: m0023
Revises: m0022
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "m0023"
down_revision: str | None = "m0022"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("refresh_tokens", sa.Column("successor_id", sa.Uuid()), schema="tenantry")
    op.add_column("refresh_tokens", sa.Column("successor_box", sa.LargeBinary()), schema="tenantry")


def downgrade() -> None:
    op.drop_column("refresh_tokens", "successor_box", schema="tenantry")
    op.drop_column("refresh_tokens", "successor_id", schema="tenantry")
