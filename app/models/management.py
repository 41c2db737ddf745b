"""Tables of the management schema: the tenant registry, identities, memberships, tokens, audit.

Tenant roles are never granted anything here; only the application role and the owner are.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
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

from app.db.naming import MANAGEMENT_SCHEMA

metadata = MetaData(schema=MANAGEMENT_SCHEMA)

TENANT_KINDS = ("MANAGEMENT", "ENTERPRISE", "STANDARD")
TENANT_STATUSES = ("ACTIVE", "SUSPENDED", "DELETED")

tenants = Table(
    "tenants",
    metadata,
    Column("id", Text, primary_key=True),
    Column("domain", Text, nullable=False),
    Column("company", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="ACTIVE"),
    Column("parent_id", Text, ForeignKey("tenants.id"), nullable=True),
    # Ids from the root down to this tenant (inclusive): subtree queries are `path @> {id}`.
    Column("path", ARRAY(Text), nullable=False),
    Column("depth", Integer, nullable=False),
    Column("allow_create_tenants", Boolean, nullable=False, server_default=text("false")),
    Column("contact_name", Text),
    Column("contact_email", Text),
    Column("custom_properties", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("template", Text, nullable=False),
    Column("max_devices", BigInteger),
    Column("max_users", BigInteger),
    Column("max_subtenants", BigInteger),
    Column("storage_bytes", BigInteger),
    Column("requests_per_second", Integer),
    Column("request_burst", Integer),
    # The tenant whose suspension suspended this one (itself when suspended directly), so
    # activating an ancestor revives exactly the tenants its suspension took down.
    Column("suspended_from", Text),
    # Whether parent-level (SUBTREE) members may reach this tenant's data; set by its own admins.
    Column("parent_access", Text, nullable=False, server_default="MANAGEMENT_ONLY"),
    Column("schema_version", Text),
    Column("migration_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("deleted_at", DateTime(timezone=True)),
    CheckConstraint("kind IN ('MANAGEMENT', 'ENTERPRISE', 'STANDARD')", name="tenants_kind_check"),
    CheckConstraint("status IN ('ACTIVE', 'SUSPENDED', 'DELETED')", name="tenants_status_check"),
    CheckConstraint("parent_access IN ('MANAGEMENT_ONLY', 'FULL')", name="tenants_parent_access_check"),
    # A deleted tenant keeps its row (usage history) but frees its domain.
    Index("tenants_domain_live_key", "domain", unique=True, postgresql_where=text("status <> 'DELETED'")),
    Index("tenants_path_idx", "path", postgresql_using="gin"),
    Index("tenants_parent_idx", "parent_id"),
)

users = Table(
    "users",
    metadata,
    Column("id", Uuid, primary_key=True, server_default=func.gen_random_uuid()),
    Column("email", Text, nullable=False),
    Column("password_hash", Text),
    Column("display_name", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_login_at", DateTime(timezone=True)),
    Column("disabled_at", DateTime(timezone=True)),  # a disabled user signs in nowhere; tokens stop
    Index("users_email_key", func.lower(text("email")), unique=True),
)

# Single-use password reset tokens (stored hashed), mailed through the outbox, valid one hour.
password_resets = Table(
    "password_resets",
    metadata,
    Column("id", Uuid, primary_key=True, server_default=func.gen_random_uuid()),
    Column("user_id", Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("token_hash", LargeBinary, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True)),
)

memberships = Table(
    "memberships",
    metadata,
    Column("user_id", Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("tenant_id", Text, ForeignKey("tenants.id"), primary_key=True),
    Column("role", Text, nullable=False),
    # TENANT: this tenant only; SUBTREE: the same role in every descendant's management plane.
    Column("scope", Text, nullable=False, server_default="TENANT"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # NULL: the whole tenant; otherwise only devices in these groups (and their subgroups).
    Column("group_ids", ARRAY(BigInteger)),
    CheckConstraint("scope IN ('TENANT', 'SUBTREE')", name="memberships_scope_check"),
    Index("memberships_tenant_idx", "tenant_id"),
)

invitations = Table(
    "invitations",
    metadata,
    Column("id", Uuid, primary_key=True, server_default=func.gen_random_uuid()),
    Column("tenant_id", Text, ForeignKey("tenants.id"), nullable=False),
    Column("email", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("token_hash", LargeBinary, nullable=False, unique=True),
    Column("invited_by", Uuid, ForeignKey("users.id", ondelete="SET NULL")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("accepted_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Index("invitations_tenant_idx", "tenant_id"),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("id", Uuid, primary_key=True, server_default=func.gen_random_uuid()),
    # Every token issued by rotation from one login shares a family; reuse of a rotated
    # token revokes the whole family (the thief's and the owner's copies alike).
    Column("family_id", Uuid, nullable=False),
    Column("user_id", Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("tenant_id", Text),
    Column("token_hash", LargeBinary, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("rotated_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    # A single sign-on session's only reach ("<tenant>" or "<tenant>/*"); null: unrestricted.
    Column("reach", Text),
    # Set when rotated: the token that replaced it, and that token's secret sealed with the platform
    # key (app.services.sessions.login.refresh), for a reuse within the grace window.
    Column("successor_id", Uuid),
    Column("successor_box", LargeBinary),
    Index("refresh_tokens_family_idx", "family_id"),
    Index("refresh_tokens_user_idx", "user_id"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("tenant_id", Text, nullable=False),
    Column("actor_type", Text, nullable=False),
    Column("actor_id", Text),
    Column("action", Text, nullable=False),
    Column("target", Text),
    Column("changes", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("request_id", Text),
    Index("audit_log_tenant_idx", "tenant_id", "id"),
)

USAGE_COUNTERS = ("request_count", "device_request_count", "measurements_created_count", "events_created_count",
                  "events_updated_count", "alarms_created_count", "alarms_updated_count", "inventories_created_count",
                  "inventories_updated_count", "operations_created_count", "operations_updated_count",
                  "subscription_event_count", "change_count", "webhook_delivery_count", "query_cost")
USAGE_SNAPSHOTS = ("device_count", "device_with_children_count", "storage_size", "user_count", "subtenant_count")

usage_daily = Table(
    "usage_daily",
    metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    *(Column(name, BigInteger, nullable=False, server_default="0") for name in USAGE_COUNTERS + USAGE_SNAPSHOTS),
    Index("usage_daily_day_idx", "day", "tenant_id"),
)

# Closed days summed once per aligned block of 2**level days (migration m0024, which keeps them
# equal to their days): summaries over a range read a few blocks per tenant, not every day.
usage_blocks = Table(
    "usage_blocks",
    metadata,
    Column("level", SmallInteger, primary_key=True),
    Column("start", Date, primary_key=True),
    Column("tenant_id", Text, primary_key=True),
    *(Column(name, BigInteger, nullable=False) for name in USAGE_COUNTERS),
    Column("peak_device_count", BigInteger, nullable=False),
    Column("peak_storage_size", BigInteger, nullable=False),
    Column("last_day", Date, nullable=False),
)

usage_closed = Table(
    "usage_closed",
    metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("through", Date),  # the last day the blocks cover (NULL: none yet)
    CheckConstraint("id = 1", name="usage_closed_one_row"),
)

limit_warnings = Table(
    "limit_warnings",
    metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("limit_name", Text, primary_key=True),
    Column("crossed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("usage", BigInteger, nullable=False),
    Column("limit_value", BigInteger, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("tenant_id", Text),
    Column("recipient", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("sent_at", DateTime(timezone=True)),
    Index("outbox_unsent_idx", "id", postgresql_where=text("sent_at IS NULL")),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Uuid, primary_key=True, server_default=func.gen_random_uuid()),
    Column("tenant_id", Text, ForeignKey("tenants.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("token_hash", LargeBinary, nullable=False, unique=True),
    Column("permissions", ARRAY(Text), nullable=False),
    Column("created_by", Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Index("api_tokens_tenant_idx", "tenant_id"),
)

signups = Table(
    "signups",
    metadata,
    Column("id", Uuid, primary_key=True, server_default=func.gen_random_uuid()),
    Column("email", Text, nullable=False),
    Column("password_hash", Text, nullable=False),
    Column("company", Text, nullable=False),
    Column("token_hash", LargeBinary, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True)),
    Column("tenant_id", Text),
)

identity_providers = Table(
    "identity_providers",
    metadata,
    Column("tenant_id", Text, ForeignKey("tenants.id"), primary_key=True),
    Column("issuer", Text, nullable=False),
    Column("client_id", Text, nullable=False),
    Column("client_secret_encrypted", LargeBinary, nullable=False),
    Column("role_claim", Text, nullable=False, server_default="roles"),
    Column("role_mapping", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("default_role", Text),
    Column("inherit", Boolean, nullable=False, server_default=text("false")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# A provider's (issuer, subject) → the platform user it signs in. Never matched by email.
external_identities = Table(
    "external_identities",
    metadata,
    Column("issuer", Text, primary_key=True),
    Column("subject", Text, primary_key=True),
    Column("user_id", Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("external_identities_user_idx", "user_id"),
)

# The first answer to a mutation sent with an Idempotency-Key, per tenant and caller (24 h).
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("caller", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("request_hash", LargeBinary, nullable=False),
    Column("response", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("idempotency_keys_created_idx", "created_at"),
)

# Token buckets of tenants' requestsPerSecond, shared by every server process (app.access.admission).
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("key", Text, primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    prefixes=["UNLOGGED"],
)

# Where the MQTT bridge stands in each tenant's change log, pushing operations to devices (m0020).
mqtt_downlinks = Table(
    "mqtt_downlinks",
    metadata,
    Column("tenant_id", Text, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Tenants with devices whose availability is monitored (m0021).
monitored_tenants = Table(
    "monitored_tenants",
    metadata,
    Column("tenant_id", Text, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
    Column("since", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Bulk registration jobs (m0022); their rows are in the tenant's schema (registration_rows).
registration_jobs = Table(
    "registration_jobs",
    metadata,
    Column("id", Uuid, primary_key=True, server_default=func.gen_random_uuid()),
    Column("tenant_id", Text, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("mode", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="QUEUED"),
    Column("total", Integer, nullable=False),
    Column("processed", Integer, nullable=False, server_default="0"),
    Column("created", Integer, nullable=False, server_default="0"),
    Column("existing", Integer, nullable=False, server_default="0"),
    Column("failed", Integer, nullable=False, server_default="0"),
    Column("error", Text),
    Column("requested_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    CheckConstraint("status IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED')", name="registration_jobs_status_check"),
    CheckConstraint("mode IN ('ALL_OR_NOTHING', 'PER_ROW')", name="registration_jobs_mode_check"),
    Index("registration_jobs_running_idx", "status", postgresql_where=text("status IN ('QUEUED', 'RUNNING')")),
)

# Each move of a tenant to another parent: the export names the parent of each period.
tenant_moves = Table(
    "tenant_moves",
    metadata,
    Column("id", Uuid, primary_key=True, server_default=func.gen_random_uuid()),
    Column("tenant_id", Text, ForeignKey("tenants.id"), nullable=False),
    Column("old_parent", Text, nullable=False),
    Column("new_parent", Text, nullable=False),
    Column("moved_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("tenant_moves_tenant_idx", "tenant_id", "moved_at"),
)

# Tenant options (category + key → value); keys under "credentials." are sealed secrets.
tenant_options = Table(
    "tenant_options",
    metadata,
    Column("tenant_id", Text, ForeignKey("tenants.id"), primary_key=True),
    Column("category", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("value", Text),
    Column("sealed", LargeBinary),
    Column("inheritable", Boolean, nullable=False, server_default=text("false")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

copy_jobs = Table(
    "copy_jobs",
    metadata,
    Column("id", Uuid, primary_key=True, server_default=func.gen_random_uuid()),
    Column("source_tenant", Text, nullable=False),
    Column("target_tenant", Text, nullable=False),
    Column("requested_by", Uuid, nullable=False),
    Column("spec", JSONB, nullable=False),
    Column("status", Text, nullable=False, server_default="QUEUED"),
    Column("counts", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("heartbeat_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    CheckConstraint("status IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED')", name="copy_jobs_status_check"),
    Index("copy_jobs_running_idx", "status", postgresql_where=text("status IN ('QUEUED', 'RUNNING')")),
)

device_token_moves = Table(
    "device_token_moves",
    metadata,
    Column("token_hash", LargeBinary, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("moved_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

device_templates = Table(
    "device_templates",
    metadata,
    Column("id", Uuid, primary_key=True, server_default=func.gen_random_uuid()),
    Column("owner_tenant", Text, ForeignKey("tenants.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("fragments", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("series", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("version", Integer, nullable=False, server_default="1"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("device_templates_owner_idx", "owner_tenant"),
)

device_template_shares = Table(
    "device_template_shares",
    metadata,
    Column("template_id", Uuid, ForeignKey("device_templates.id", ondelete="CASCADE"), primary_key=True),
    Column("tenant_id", Text, ForeignKey("tenants.id"), primary_key=True),
)

spare_schemas = Table(
    "spare_schemas",
    metadata,
    Column("id", Text, primary_key=True),
    Column("revision", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", Uuid, primary_key=True, server_default=func.gen_random_uuid()),
    Column("tenant_id", Text, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("url", Text, nullable=False),
    Column("kinds", ARRAY(Text), nullable=False),
    Column("description", Text),
    Column("secret", LargeBinary, nullable=False),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("position", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("failing_since", DateTime(timezone=True)),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("disabled_reason", Text),
    Column("created_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("webhooks_tenant_idx", "tenant_id"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("webhook_id", Uuid, ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("message_id", Text, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("kind", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("http_status", Integer),
    Column("attempt", Integer, nullable=False),
    Column("latency_ms", Float),
    Column("error", Text),
    Column("redelivery", Boolean, nullable=False, server_default=text("false")),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("webhook_deliveries_webhook_idx", "webhook_id", "id"),
)

shares = Table(
    "shares",
    metadata,
    Column("id", Uuid, primary_key=True, server_default=func.gen_random_uuid()),
    Column("source_tenant", Text, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("target_tenant", Text, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("proposed_in", Text, nullable=False),
    Column("selection", JSONB, nullable=False),
    Column("state", Text, nullable=False, server_default="PROPOSED"),
    Column("source_accepted_by", Text),
    Column("target_accepted_by", Text),
    Column("position", BigInteger),
    Column("copied", BigInteger, nullable=False, server_default="0"),
    Column("error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("state IN ('PROPOSED', 'ACTIVE', 'PAUSED', 'REVOKED')", name="shares_state_check"),
    Index("shares_source_idx", "source_tenant"),
    Index("shares_target_idx", "target_tenant"),
)
