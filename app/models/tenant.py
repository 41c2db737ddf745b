"""Tables inside every tenant schema. `schema=None`: the routed search_path picks the tenant.

Citus-ready rules (DESIGN.md): every table has a primary key defined at creation, foreign
keys stay inside the tenant schema, no triggers.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

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
    Column("parent_id", BigInteger, ForeignKey("devices.id", ondelete="CASCADE")),
    # Availability (t0008): seconds a device may stay silent; when it last sent; what follows.
    Column("required_interval", Integer),
    Column("last_seen_at", DateTime(timezone=True)),
    Column("availability", Text, nullable=False, server_default="UNKNOWN"),
    CheckConstraint("availability IN ('AVAILABLE', 'UNAVAILABLE', 'UNKNOWN')", name="devices_availability_check"),
    Index("devices_type_idx", "type", "id"),
    Index("devices_parent_idx", "parent_id"),
    Index("devices_fragments_idx", "fragments", postgresql_using="gin", postgresql_ops={"fragments": "jsonb_path_ops"}),
    Index("devices_monitored_idx", "id", postgresql_where=text("required_interval IS NOT NULL")),
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

TS = DateTime(timezone=True)


def _id() -> Column[int]:
    return Column("id", BigInteger, Identity(always=False), primary_key=True)


def _device_fk() -> Column[int]:
    return Column("device_id", BigInteger, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False)


groups = Table(
    "groups",
    metadata,
    _id(),
    Column("name", Text, nullable=False),
    Column("parent_id", BigInteger, ForeignKey("groups.id", ondelete="CASCADE")),
    Column("created_at", TS, nullable=False, server_default=func.now()),
    Index("groups_parent_idx", "parent_id"),
)

group_devices = Table(
    "group_devices",
    metadata,
    Column("group_id", BigInteger, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    Column("device_id", BigInteger, ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    Index("group_devices_device_idx", "device_id"),
)

measurements = Table(
    "measurements",
    metadata,
    _id(),
    # No foreign key (see migration t0003): writers lock their devices once per batch instead.
    Column("device_id", BigInteger, nullable=False),
    Column("time", TS, nullable=False),
    Column("type", Text, nullable=False),
    Column("series", Text, nullable=False),
    Column("value", Float, nullable=False),
    Column("unit", Text),
    Column("origin_tenant", Text),
    Column("origin_id", BigInteger),
    Index("measurements_device_time_idx", "device_id", "time", "id"),
    Index("measurements_time_brin", "time", postgresql_using="brin"),
)

events = Table(
    "events",
    metadata,
    _id(),
    _device_fk(),
    Column("time", TS, nullable=False),
    Column("type", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("attributes", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", TS, nullable=False, server_default=func.now()),
    Column("updated_at", TS, nullable=False, server_default=func.now()),
    Column("origin_tenant", Text),
    Column("origin_id", BigInteger),
    Index("events_device_time_idx", "device_id", "time", "id"),
    Index("events_origin_key", "origin_tenant", "origin_id", unique=True,
          postgresql_where=text("origin_id IS NOT NULL")),
    Index("events_type_time_idx", "type", "time", "id"),
    Index("events_time_brin", "time", postgresql_using="brin"),
)

alarms = Table(
    "alarms",
    metadata,
    _id(),
    _device_fk(),
    Column("type", Text, nullable=False),
    Column("severity", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="ACTIVE"),
    Column("text", Text, nullable=False),
    Column("count", Integer, nullable=False, server_default="1"),
    Column("first_raised_at", TS, nullable=False, server_default=func.now()),
    Column("last_raised_at", TS, nullable=False, server_default=func.now()),
    Column("updated_at", TS, nullable=False, server_default=func.now()),
    CheckConstraint("severity IN ('CRITICAL', 'MAJOR', 'MINOR', 'WARNING')", name="alarms_severity_check"),
    Column("origin_tenant", Text),
    Column("origin_id", BigInteger),
    CheckConstraint("status IN ('ACTIVE', 'ACKNOWLEDGED', 'CLEARED')", name="alarms_status_check"),
    Index("alarms_origin_key", "origin_tenant", "origin_id", unique=True,
          postgresql_where=text("origin_id IS NOT NULL")),
    Index("alarms_open_key", "device_id", "type", unique=True, postgresql_where=text("status <> 'CLEARED'")),
    Index("alarms_device_idx", "device_id", "id"),
    Index("alarms_status_severity_idx", "status", "severity", "id"),
)

operations = Table(
    "operations",
    metadata,
    _id(),
    _device_fk(),
    Column("status", Text, nullable=False, server_default="PENDING"),
    Column("description", Text, nullable=False),
    Column("payload", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("failure_reason", Text),
    Column("created_at", TS, nullable=False, server_default=func.now()),
    Column("updated_at", TS, nullable=False, server_default=func.now()),
    CheckConstraint("status IN ('PENDING', 'EXECUTING', 'SUCCESSFUL', 'FAILED')", name="operations_status_check"),
    Index("operations_device_status_idx", "device_id", "status", "id"),
)

device_tokens = Table(
    "device_tokens",
    metadata,
    _id(),
    _device_fk(),
    Column("token_hash", LargeBinary, nullable=False, unique=True),
    Column("created_at", TS, nullable=False, server_default=func.now()),
    Column("revoked_at", TS),
    Index("device_tokens_device_idx", "device_id"),
)

roles = Table(
    "roles",
    metadata,
    Column("name", Text, primary_key=True),
    Column("permissions", ARRAY(Text), nullable=False),
    Column("created_at", TS, nullable=False, server_default=func.now()),
)

retention_rules = Table(
    "retention_rules",
    metadata,
    _id(),
    Column("data_type", Text, nullable=False),
    Column("type", Text),
    Column("max_age_days", Integer, nullable=False),
    Column("created_at", TS, nullable=False, server_default=func.now()),
    CheckConstraint("data_type IN ('MEASUREMENT', 'EVENT', 'ALARM', 'OPERATION', '*')",
                    name="retention_rules_data_type_check"),
    CheckConstraint("max_age_days > 0", name="retention_rules_max_age_check"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("time", TS, nullable=False, server_default=func.now()),
    Column("actor_type", Text, nullable=False),
    Column("actor_id", Text),
    Column("action", Text, nullable=False),
    Column("target", Text),
    Column("changes", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("request_id", Text),
    Index("audit_log_time_idx", "time", postgresql_using="brin"),
)

provenance = Table(
    "provenance",
    metadata,
    Column("source_tenant", Text, primary_key=True),
    Column("kind", Text, primary_key=True),
    Column("source_id", BigInteger, primary_key=True),
    Column("target_id", BigInteger, nullable=False),
    Column("copied_at", TS, nullable=False, server_default=func.now()),
)

shared_templates = Table(
    "shared_templates",
    metadata,
    Column("template_id", Uuid, primary_key=True),
    Column("source_tenant", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("fragments", JSONB, nullable=False),
    Column("series", JSONB, nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", TS, nullable=False, server_default=func.now()),
)

# The durable change log (migration t0007 explains the position rule).
change_head = Table(
    "change_head",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("last", BigInteger, nullable=False),
    Column("floor", BigInteger, nullable=False),
)

changes = Table(
    "changes",
    metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("logged_at", TS, nullable=False, server_default=func.clock_timestamp()),
    Column("kind", Text, nullable=False),
    Column("op", Text, nullable=False),
    Column("device_id", BigInteger),
    Column("body", JSONB, nullable=False),
    Index("changes_logged_at_idx", "logged_at"),
)

event_consumers = Table(
    "event_consumers",
    metadata,
    Column("name", Text, primary_key=True),
    Column("kinds", ARRAY(Text), nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("created_at", TS, nullable=False, server_default=func.now()),
    Column("acknowledged_at", TS),
)

# The rows of bulk registration jobs (t0009; the jobs: management.registration_jobs).
registration_rows = Table(
    "registration_rows",
    metadata,
    Column("job_id", Uuid, primary_key=True),
    Column("line", Integer, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False),
    Column("type", Text),
    Column("external_id", Text),
    Column("group_ref", Text),
    Column("outcome", Text),
    Column("device_id", BigInteger),
    Column("message", Text),
)

# Devices asking to join (app.services.connectivity.claims; t0010).
device_requests = Table(
    "device_requests",
    metadata,
    _id(),
    Column("external_id", Text, nullable=False, unique=True),
    Column("status", Text, nullable=False),
    Column("claim_hash", LargeBinary),
    Column("device_id", BigInteger, ForeignKey("devices.id", ondelete="SET NULL")),
    Column("created_at", TS, nullable=False, server_default=func.now()),
    Column("requested_at", TS),
    Column("accepted_at", TS),
    Column("delivered_at", TS),
    CheckConstraint("status IN ('PREAUTHORIZED', 'PENDING', 'ACCEPTED', 'DELIVERED')",
                    name="device_requests_status_check"),
    Index("device_requests_status_idx", "status", "id"),
)
