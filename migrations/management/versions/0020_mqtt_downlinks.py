"""Devices over MQTT: where the bridge stands in each tenant's change log when pushing operations to
devices' downlink topics (app.realtime.mqtt). A tenant gets a row when its first device logs in
at the broker, positioned at its log's head then; the row is locked while a batch is published, so
one bridge process serves a tenant at a time and operations reach a device in log order.

Revision ID: m0020
Revises: m0019
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "m0020"
down_revision: str | None = "m0019"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "mqtt_downlinks",
        sa.Column("tenant_id", sa.Text(), sa.ForeignKey("tenantry.tenants.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        schema="tenantry",
    )


def downgrade() -> None:
    op.drop_table("mqtt_downlinks", schema="tenantry")
