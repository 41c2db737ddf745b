"""Availability: a device with a required interval that sends nothing for longer is UNAVAILABLE
(with an alarm) until it reports again (app.services.inventory.availability). `last_seen_at` is
when the device itself last sent something; it is kept to a few seconds, not written per message.
Adding nullable columns and a constant default is a catalog change only, whatever the table's size.

Revision ID: t0008
Revises: t0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "t0008"
down_revision: str | None = "t0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("required_interval", sa.Integer()))
    op.add_column("devices", sa.Column("last_seen_at", sa.DateTime(timezone=True)))
    op.add_column("devices", sa.Column("availability", sa.Text(), nullable=False, server_default="UNKNOWN"))
    op.create_check_constraint("devices_availability_check", "devices",
                               "availability IN ('AVAILABLE', 'UNAVAILABLE', 'UNKNOWN')")
    op.create_index("devices_monitored_idx", "devices", ["id"], postgresql_where=sa.text("required_interval IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("devices_monitored_idx", "devices")
    op.drop_constraint("devices_availability_check", "devices")
    for column in ("availability", "last_seen_at", "required_interval"):
        op.drop_column("devices", column)
