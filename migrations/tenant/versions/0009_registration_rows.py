"""The rows of bulk registration jobs (the jobs are in the management schema, m0022): what each row
asked for, and once registered its outcome (CREATED, EXISTING, FAILED, SKIPPED), device and reason.
In the tenant's own schema: a parent never reads them, and they go with the tenant.

Revision ID: t0009
Revises: t0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "t0009"
down_revision: str | None = "t0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "registration_rows",
        sa.Column("job_id", sa.Uuid(), primary_key=True),
        sa.Column("line", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("type", sa.Text()),
        sa.Column("external_id", sa.Text()),
        sa.Column("group_ref", sa.Text()),
        sa.Column("outcome", sa.Text()),
        sa.Column("device_id", sa.BigInteger()),
        sa.Column("message", sa.Text()),
    )


def downgrade() -> None:
    op.drop_table("registration_rows")
