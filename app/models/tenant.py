"""Tables inside every tenant schema. `schema=None`: the routed search_path picks the tenant.

Citus-ready rules (DESIGN.md): every table has a primary key defined at creation, foreign
keys stay inside the tenant schema, no triggers.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    MetaData,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(schema=None)

devices = Table(
    "devices",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("name", Text, nullable=False),
    Column("type", Text),
    Column("owner", Text),
    Column("fragments", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("devices_type_idx", "type", "id"),
)

options = Table(
    "options",
    metadata,
    Column("category", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

external_ids = Table(
    "external_ids",
    metadata,
    Column("type", Text, primary_key=True),
    Column("value", Text, primary_key=True),
    Column("device_id", BigInteger, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("external_ids_device_idx", "device_id"),
)
