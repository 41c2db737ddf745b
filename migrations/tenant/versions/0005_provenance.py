"""Provenance of copied data: where copied inventory and data came from.

Inventory (devices, groups) is mapped in `provenance` ((source tenant, kind, source id) →
target id), which copies use to translate device ids. Data rows carry their origin inline
(origin_tenant, origin_id): a re-run skips what it copied before without a provenance row
per row. Events and alarms get a partial unique index on it (their re-runs upsert on it);
measurements none — at a million rows per copy that index would cost more than the rows
themselves, and copies into one target from one source are serialised by a lock instead.

Revision ID: t0005
Revises: t0004
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "t0005"
down_revision: str | None = "t0004"
branch_labels: str | None = None
depends_on: str | None = None

DATA_TABLES = ("measurements", "events", "alarms")
UPSERTED = ("events", "alarms")


def upgrade() -> None:
    op.create_table(
        "provenance",
        sa.Column("source_tenant", sa.Text(), primary_key=True),
        sa.Column("kind", sa.Text(), primary_key=True),
        sa.Column("source_id", sa.BigInteger(), primary_key=True),
        sa.Column("target_id", sa.BigInteger(), nullable=False),
        sa.Column("copied_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    for table in DATA_TABLES:
        op.add_column(table, sa.Column("origin_tenant", sa.Text()))
        op.add_column(table, sa.Column("origin_id", sa.BigInteger()))
    for table in UPSERTED:
        op.create_index(f"{table}_origin_key", table, ["origin_tenant", "origin_id"], unique=True,
                        postgresql_where=sa.text("origin_id IS NOT NULL"))


def downgrade() -> None:
    for table in UPSERTED:
        op.drop_index(f"{table}_origin_key", table)
    for table in DATA_TABLES:
        op.drop_column(table, "origin_id")
        op.drop_column(table, "origin_tenant")
    op.drop_table("provenance")
