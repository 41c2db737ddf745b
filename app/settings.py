"""Configuration from the environment (12-factor); every setting is optional.

Settings are read once into an immutable object and passed explicitly, so tests can build
their own without touching the process environment.
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


N = TypeVar("N", int, float)


def _number(env: dict[str, str], name: str, default: N, kind: type[N]) -> N:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from exc


def _choice(env: dict[str, str], name: str, default: str, allowed: tuple[str, ...], *, upper: bool = False) -> str:
    value = env.get(name, default)
    value = value.upper() if upper else value
    if value not in allowed:
        raise SystemExit(f"{name} must be one of: {', '.join(allowed)}")
    return value


def _int(env: dict[str, str], name: str, default: int) -> int:
    return _number(env, name, default, int)


def _change_log(env: dict[str, str]) -> dict[str, Any]:
    """The change log readers' settings (caps, webhooks' outbound rules)."""
    return {
        "consumers_per_tenant": _int(env, "TENANTRY_CONSUMERS_PER_TENANT", 20),
        "webhooks_per_tenant": _int(env, "TENANTRY_WEBHOOKS_PER_TENANT", 10),
        "shares_per_tenant": _int(env, "TENANTRY_SHARES_PER_TENANT", 20),
        "webhook_allowed_networks": tuple(
            n.strip() for n in env.get("TENANTRY_WEBHOOK_ALLOWED_NETWORKS", "").split(",") if n.strip()),
        "webhook_timeout_seconds": _float(env, "TENANTRY_WEBHOOK_TIMEOUT", 10.0),
        "webhook_retry_hours": _float(env, "TENANTRY_WEBHOOK_RETRY_HOURS", 24.0),
    }


def _capacity(env: dict[str, str]) -> dict[str, Any]:
    """How long one request may hold the database, and one tenant's share of the process."""
    return {
        "statement_timeout_seconds": _float(env, "TENANTRY_STATEMENT_TIMEOUT", 15.0),
        "lock_timeout_seconds": _float(env, "TENANTRY_LOCK_TIMEOUT", 3.0),
        "idle_in_transaction_seconds": _float(env, "TENANTRY_IDLE_IN_TRANSACTION_TIMEOUT", 30.0),
        "tenant_in_flight_setting": _int(env, "TENANTRY_TENANT_IN_FLIGHT", 0),
        "anonymous_requests_per_second": _float(env, "TENANTRY_ANONYMOUS_RATE", 20.0),
        "max_document_bytes": _int(env, "TENANTRY_MAX_DOCUMENT_BYTES", 100_000),
        "max_anonymous_document_bytes": _int(env, "TENANTRY_MAX_ANONYMOUS_DOCUMENT_BYTES", 10_000),
        "header_timeout_seconds": _float(env, "TENANTRY_HEADER_TIMEOUT", 10.0),
        "body_timeout_seconds": _float(env, "TENANTRY_BODY_TIMEOUT", 30.0),
        "usage_flush_seconds": _float(env, "TENANTRY_USAGE_FLUSH_INTERVAL", 1.0),
        "max_query_cost": _int(env, "TENANTRY_MAX_QUERY_COST", 500_000),
        "unpaged_list_estimate": _int(env, "TENANTRY_UNPAGED_LIST_ESTIMATE", 100),
    }


def _subscriptions(env: dict[str, str]) -> dict[str, Any]:
    return {
        "subscriptions_per_connection": _int(env, "TENANTRY_SUBSCRIPTIONS_PER_CONNECTION", 100),
        "subscriptions_per_tenant": _int(env, "TENANTRY_SUBSCRIPTIONS_PER_TENANT", 2000),
        "subscriptions_per_user": _int(env, "TENANTRY_SUBSCRIPTIONS_PER_USER", 500),
        "subscription_queue": _int(env, "TENANTRY_SUBSCRIPTION_QUEUE", 1000),
        "subscription_recheck_seconds": _float(env, "TENANTRY_SUBSCRIPTION_RECHECK", 60.0),
        "keepalive_seconds": _float(env, "TENANTRY_KEEPALIVE", 15.0),
    }


def _mqtt(env: dict[str, str]) -> dict[str, Any]:
    """Devices over MQTT through a broker (docs/mqtt.md): the bridge runs when the AMQP URL is set."""
    return {
        "mqtt_amqp_url": env.get("TENANTRY_MQTT_AMQP_URL") or None,
        "mqtt_management_url": env.get("TENANTRY_MQTT_MANAGEMENT_URL") or None,
        "mqtt_vhost": env.get("TENANTRY_MQTT_VHOST", "/"),
        "mqtt_queue": env.get("TENANTRY_MQTT_QUEUE", "tenantry.uplinks"),
        "mqtt_hook_networks": tuple(n.strip() for n in env.get(
            "TENANTRY_MQTT_HOOK_NETWORKS", "127.0.0.0/8,::1/128").split(",") if n.strip()),
        "mqtt_prefetch": _int(env, "TENANTRY_MQTT_PREFETCH", 500),
        "availability_interval_seconds": _float(env, "TENANTRY_AVAILABILITY_INTERVAL", 10.0),
    }


def _float(env: dict[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float)


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = Path(".tenantry")
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    secret_key: str | None = None
    admin_email: str | None = None
    admin_password: str | None = None
    cors_origins: tuple[str, ...] = ()
    log_format: str = "console"
    log_level: str = "INFO"
    # production: GraphiQL off, no introspection for anonymous callers, TENANTRY_PUBLIC_URL required.
    env: str = "development"
    graphiql: bool = True
    # Levels of the tenant tree, management included (management=0 … max_tenant_depth-1).
    max_tenant_depth: int = 4
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    # A rotated refresh token presented again this soon gets the same successor (two tabs, a retry);
    # later, it revokes the whole login session as a stolen token's reuse.
    refresh_reuse_grace_seconds: int = 30
    jwt_issuer: str = "tenantry"
    jwt_audience: str = "tenantry-api"
    max_body_bytes: int = 1024 * 1024
    # Proxies whose X-Forwarded-For names the client (addresses or CIDRs); none: the peer is the client.
    trusted_proxies: tuple[str, ...] = ()
    max_query_depth: int = 15
    max_query_aliases: int = 30
    max_query_tokens: int = 4000
    # The estimated objects an operation may return (app.graphql.engine.cost); unpaged lists count
    # this many items each.
    max_query_cost: int = 500_000
    unpaged_list_estimate: int = 100
    page_size_cap: int = 500
    pool_size: int = 10
    # A pooled connection is closed once it has worked in this many tenant schemas (backend catalog
    # caches grow with each; on Citus, so do its cached connections to the workers, one per tenant
    # role): None is 500, or 20 on Citus (app.db.transaction.limit_schemas_per_connection).
    schemas_per_connection: int | None = None
    # Longest wait for a pooled connection or an in-flight slot before UNAVAILABLE (503).
    pool_wait_seconds: float = 2.0
    # Requests of one process doing database work at once; 0 → the pool's size + overflow - 2,
    # so the pool always has room for a request's rare second connection and background jobs.
    max_in_flight_setting: int = 0
    # One tenant's (or one anonymous client address's) share of those slots, and so of the pool;
    # 0 → a third of max_in_flight. Beyond it the tenant's requests wait (pool_wait_seconds) for
    # one of its own slots: one tenant's stuck work never takes the others' capacity.
    tenant_in_flight_setting: int = 0
    # Per request transaction (transaction-local, so jobs and migrations are not bound by them):
    # a statement running longer, a lock waited for longer, a transaction left idle longer is
    # cancelled and answered UNAVAILABLE naming the timeout. 0 disables one.
    # Before authentication, work must be cheap to refuse: GraphQL requests without a credential,
    # per client address (a burst of twice this); a document's size, checked before it is parsed;
    # how long a client may take to send its request headers, and its body.
    anonymous_requests_per_second: float = 20.0
    max_document_bytes: int = 100_000
    max_anonymous_document_bytes: int = 10_000
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    statement_timeout_seconds: float = 15.0
    lock_timeout_seconds: float = 3.0
    idle_in_transaction_seconds: float = 30.0
    owner_pool_size: int = 2
    app_role: str = "tenantry_app"
    # Citus connects to workers as the current role, so there tenant roles must be LOGIN.
    tenant_roles_login: bool = False
    registry_ttl_seconds: float = 1.0
    invitation_ttl_seconds: int = 48 * 3600
    # How often the server applies retention rules (0: never; `tenantry retention run` always can).
    retention_interval_seconds: int = 3600
    # Allocations between young-generation collections (Python's default is 700; 0 keeps it). A
    # 1,000-row ingest request holds some 3,000 objects: at 700 each was traversed by several
    # collections and promoted; at 50,000 nearly all are freed by reference counting first
    # (bench.peer (g): 15-25% less server CPU a batch).
    gc_young_threshold: int = 50_000
    # How often usage counters are written (what a SIGKILLed worker can lose; each flush is one
    # upsert per active tenant and day).
    usage_flush_seconds: float = 1.0
    # Mail: smtp://user:password@host:port (or smtps://); unset → mails are logged.
    smtp_url: str | None = None
    mail_from: str = "Tenantry <noreply@tenantry.local>"
    # Self sign-up creates STANDARD tenants under this tenant; unset → sign-up is off.
    signup_parent: str | None = None
    # The server's public base URL (OIDC redirect URI); unset → taken from each request.
    public_url: str | None = None
    # Identity-provider issuers tenants may configure; empty → any http(s) issuer.
    oidc_allowed_issuers: tuple[str, ...] = ()
    # Spare tenant schemas kept ready (provisioning takes one as it is instead of running the DDL).
    spare_schemas: int = 5
    # Copies estimated above this many rows run as background jobs.
    copy_inline_rows: int = 50_000
    # Read queries the planner can answer in SQL alone skip GraphQL execution (app.graphql.engine.compiled).
    compiled_reads: bool = True
    # The compiled paths' statements PREPAREd once per connection (app.db.prepared). Off behind a
    # pooler that hands one client's statements to several server sessions (PgBouncer's transaction mode).
    prepared_statements: bool = True
    # Operator's allow-list of GraphQL documents (app.http.persisted); unset → any document.
    trusted_documents: Path | None = None
    # Realtime (app.realtime.hub): caps, each subscription's queue (beyond it the subscription reads
    # the change log itself until it catches up), how often live sessions are checked again, and
    # the keep-alive interval.
    subscriptions_per_connection: int = 100
    subscriptions_per_tenant: int = 2000
    subscriptions_per_user: int = 500  # one caller's share of a tenant's subscriptions
    subscription_queue: int = 1000
    subscription_recheck_seconds: float = 60.0
    keepalive_seconds: float = 15.0
    # The change log's readers (app.services.changes): caps per tenant, and webhooks' outbound rules.
    consumers_per_tenant: int = 20
    webhooks_per_tenant: int = 10
    shares_per_tenant: int = 20
    # Networks webhooks may reach although private, loopback or link-local (CIDRs; default none).
    webhook_allowed_networks: tuple[str, ...] = ()
    webhook_timeout_seconds: float = 10.0
    webhook_retry_hours: float = 24.0  # failing this long, an endpoint is disabled
    metering: bool = True  # off only to measure what metering costs (bench/usage.py)
    usage_snapshot_seconds: int = 3600
    metrics_max_tenants: int = 1000
    # Share of a limit at which a tenant's admins are warned (once per crossing).
    limit_warning_ratio: float = 0.8
    # argon2 cost; lowered only by the test suite, never by configuration.
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    # MQTT (app.realtime.mqtt): the broker's AMQP URL (the bridge runs when set), its management
    # API (disconnecting revoked devices), the virtual host devices use, the bridge's shared queue,
    # the networks the broker's auth hooks are answered to, and uplinks in flight per bridge.
    mqtt_amqp_url: str | None = None
    mqtt_management_url: str | None = None
    mqtt_vhost: str = "/"
    mqtt_queue: str = "tenantry.uplinks"
    mqtt_hook_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    mqtt_prefetch: int = 500
    availability_interval_seconds: float = 10.0  # how often silent devices are looked for (0: never)
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        origins = tuple(o.strip() for o in env.get("TENANTRY_CORS_ORIGINS", "").split(",") if o.strip())
        log_format = _choice(env, "TENANTRY_LOG_FORMAT", "console", ("console", "json"))
        log_level = _choice(env, "TENANTRY_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"), upper=True)
        environment = _choice(env, "TENANTRY_ENV", "development", ("development", "production"))
        public_url = env.get("TENANTRY_PUBLIC_URL") or None
        if environment == "production" and public_url is None:
            # Without it the OIDC redirect URI would come from each request's Host header.
            raise SystemExit("TENANTRY_ENV=production needs TENANTRY_PUBLIC_URL (the server's public base URL)")
        return cls(
            env=environment,
            database_url=env.get("TENANTRY_DATABASE_URL") or None,
            data_dir=Path(env.get("TENANTRY_DATA_DIR", ".tenantry")),
            host=env.get("TENANTRY_HOST", "127.0.0.1"),
            port=_int(env, "TENANTRY_PORT", 8000),
            workers=_int(env, "TENANTRY_WORKERS", 1),
            secret_key=env.get("TENANTRY_SECRET_KEY") or None,
            admin_email=env.get("TENANTRY_ADMIN_EMAIL") or None,
            admin_password=env.get("TENANTRY_ADMIN_PASSWORD") or None,
            cors_origins=origins,
            log_format=log_format,
            log_level=log_level,
            graphiql=_bool(env.get("TENANTRY_GRAPHIQL"), True) and environment != "production",
            max_tenant_depth=_int(env, "TENANTRY_MAX_TENANT_DEPTH", 4),
            access_token_ttl_seconds=_int(env, "TENANTRY_ACCESS_TOKEN_TTL", 900),
            refresh_token_ttl_seconds=_int(env, "TENANTRY_REFRESH_TOKEN_TTL", 30 * 24 * 3600),
            refresh_reuse_grace_seconds=_int(env, "TENANTRY_REFRESH_REUSE_GRACE", 30),
            max_body_bytes=_int(env, "TENANTRY_MAX_BODY_BYTES", 1024 * 1024),
            trusted_proxies=tuple(p.strip() for p in env.get("TENANTRY_TRUSTED_PROXIES", "").split(",") if p.strip()),
            page_size_cap=_int(env, "TENANTRY_PAGE_SIZE_CAP", 500),
            pool_size=_int(env, "TENANTRY_POOL_SIZE", 10),
            schemas_per_connection=(_int(env, "TENANTRY_SCHEMAS_PER_CONNECTION", 500)
                                    if env.get("TENANTRY_SCHEMAS_PER_CONNECTION") else None),
            pool_wait_seconds=_float(env, "TENANTRY_POOL_WAIT", 2.0),
            max_in_flight_setting=_int(env, "TENANTRY_MAX_IN_FLIGHT", 0),
            **_capacity(env),
            oidc_allowed_issuers=tuple(i.strip().rstrip("/") for i in
                                       env.get("TENANTRY_OIDC_ALLOWED_ISSUERS", "").split(",") if i.strip()),
            app_role=env.get("TENANTRY_APP_ROLE", "tenantry_app"),
            tenant_roles_login=_bool(env.get("TENANTRY_TENANT_ROLES_LOGIN"), False),
            retention_interval_seconds=_int(env, "TENANTRY_RETENTION_INTERVAL", 3600),
            gc_young_threshold=_int(env, "TENANTRY_GC_THRESHOLD", 50_000),
            smtp_url=env.get("TENANTRY_SMTP_URL") or None,
            mail_from=env.get("TENANTRY_MAIL_FROM", "Tenantry <noreply@tenantry.local>"),
            signup_parent=env.get("TENANTRY_SIGNUP_PARENT") or None,
            public_url=public_url,
            copy_inline_rows=_int(env, "TENANTRY_COPY_INLINE_ROWS", 50_000),
            compiled_reads=_bool(env.get("TENANTRY_COMPILED_READS"), True),
            prepared_statements=_bool(env.get("TENANTRY_PREPARED_STATEMENTS"), True),
            trusted_documents=Path(trusted) if (trusted := env.get("TENANTRY_TRUSTED_DOCUMENTS")) else None,
            spare_schemas=_int(env, "TENANTRY_SPARE_SCHEMAS", 5),
            **_subscriptions(env),
            **_change_log(env),
            **_mqtt(env),
            usage_snapshot_seconds=_int(env, "TENANTRY_USAGE_SNAPSHOT_INTERVAL", 3600),
            metrics_max_tenants=_int(env, "TENANTRY_METRICS_MAX_TENANTS", 1000),
            limit_warning_ratio=_int(env, "TENANTRY_LIMIT_WARNING_PERCENT", 80) / 100,
        )

    def __post_init__(self) -> None:
        if self.env == "production":  # GraphiQL is never served in production, however it is configured
            object.__setattr__(self, "graphiql", False)

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def pool_overflow(self) -> int:
        return self.pool_size // 2

    @property
    def max_in_flight(self) -> int:
        return self.max_in_flight_setting or max(1, self.pool_size + self.pool_overflow - 2)

    @property
    def tenant_in_flight(self) -> int:
        return self.tenant_in_flight_setting or max(1, math.ceil(self.max_in_flight / 3))

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    def resolved_secret_key(self) -> str:
        """The JWT signing secret: configured, else generated once and kept in the data dir."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        # Created with 0600 so the key is not readable by other local users.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race: use its key
            return path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        return key
