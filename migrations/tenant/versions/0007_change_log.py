"""The tenant's durable change log, its head, and its named consumers.

`changes` holds every change subscriptions announce (app.runtime.announcements appends them in the
writing transaction). Positions come from `change_head`, a one-row counter updated by the append
statement just before COMMIT: its row lock is held until the transaction ends, so the next writer
takes the next position only after this one is visible. Positions are therefore gap-free and in
commit order as every reader sees them (a serial alone is not: a transaction that drew 10 may
commit after 11 was read). `floor` is the last position retention removed. (The time is
`clock_timestamp()`, given explicitly: Citus 13 deparses now() in an INSERT … SELECT into
SQL its workers refuse; and it is the moment just before COMMIT, when entries are appended.)

Revision ID: t0007
Revises: t0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "t0007"
down_revision: str | None = "t0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "change_head",
        sa.Column("id", sa.SmallInteger(), primary_key=True, autoincrement=False),
        sa.Column("last", sa.BigInteger(), nullable=False),
        sa.Column("floor", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name="change_head_one_row"),
    )
    op.execute("INSERT INTO change_head (id, last, floor) VALUES (1, 0, 0)")
    op.create_table(
        "changes",
        sa.Column("position", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.clock_timestamp()),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("op", sa.Text(), nullable=False),
        sa.Column("device_id", sa.BigInteger()),
        sa.Column("body", postgresql.JSONB(), nullable=False),
    )
    op.create_index("changes_logged_at_idx", "changes", ["logged_at"])
    op.create_table(
        "event_consumers",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("kinds", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("event_consumers")
    op.drop_index("changes_logged_at_idx", "changes")
    op.drop_table("changes")
    op.drop_table("change_head")
