"""Rate limits shared by every worker process and server: each tenant's token bucket lives here
(app.access.admission.SharedBuckets), not in each process's memory, so `serve --workers 4` no longer
allows four times a tenant's requestsPerSecond. UNLOGGED: a crash forgets the buckets, which only
refills them.

Revision ID: m0019
Revises: m0018
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "m0019"
down_revision: str | None = "m0018"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.Text(), primary_key=True),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),  # epoch seconds, from the servers' clocks
        schema="tenantry",
        prefixes=["UNLOGGED"],
    )


def downgrade() -> None:
    op.drop_table("rate_buckets", schema="tenantry")
