"""Bulk registration jobs (app.services.connectivity.registration): one row per upload, its mode,
status and counts, written after each thousand rows (`heartbeat_at`): housekeeping fails a job whose
process stopped. The rows themselves live in the tenant's schema (registration_rows, t0009).

Revision ID: m0022
Revises: m0021
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "m0022"
down_revision: str | None = "m0021"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "registration_jobs",
        sa.Column("id", sa.Uuid(), primary_key=True, server_default=sa.func.gen_random_uuid()),
        sa.Column("tenant_id", sa.Text(), sa.ForeignKey("tenantry.tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="QUEUED"),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("processed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("existing", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error", sa.Text()),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("status IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED')",
                           name="registration_jobs_status_check"),
        sa.CheckConstraint("mode IN ('ALL_OR_NOTHING', 'PER_ROW')", name="registration_jobs_mode_check"),
        schema="tenantry",
    )
    op.create_index("registration_jobs_running_idx", "registration_jobs", ["status"], schema="tenantry",
                    postgresql_where=sa.text("status IN ('QUEUED', 'RUNNING')"))


def downgrade() -> None:
    op.drop_table("registration_jobs", schema="tenantry")
