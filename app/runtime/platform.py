"""The process-wide parts every request and command shares, built once from Settings."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from app.access.acting import request_limits
from app.access.admission import InFlight, RateLimiter, SharedBuckets
from app.access.credentials import LastUsed
from app.access.gate import AccessGate
from app.auth.passwords import Passwords
from app.auth.tokens import AccessTokens
from app.db import prepared
from app.db.embedded import Supervisor
from app.db.engines import Database
from app.db.transaction import keep_connections, limit_schemas_per_connection, release_kept
from app.db.wakes import Waker
from app.runtime.metering import Meter
from app.runtime.metrics import RequestMetrics
from app.runtime.throttle import LoginThrottle
from app.settings import Settings
from app.tenancy.registry import Registry


@dataclass
class Platform:
    settings: Settings
    db: Database
    registry: Registry
    passwords: Passwords
    access_tokens: AccessTokens
    meter: Meter
    metrics: RequestMetrics
    rate_limiter: RateLimiter
    api_token_use: LastUsed
    login_throttle: LoginThrottle
    # The wall clock of business rules (invitation expiry…); tests replace it instead of sleeping.
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # Background work started by requests (copy jobs): referenced here so it is not collected.
    background: set[asyncio.Task[None]] = field(default_factory=set)
    gate: AccessGate = field(init=False)
    # The embedded PostgreSQL's supervisor, while `serve` runs one (TENANTRY_DATABASE_URL unset).
    embedded: Supervisor | None = None
    # What higher layers built on this platform and must stop before it closes (the realtime hub,
    # owned by the transport that serves subscriptions): the platform imports none of them.
    _closing: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Wakes the change log's readers after requests' COMMITs, many tenants in one NOTIFY.
    waker: Waker = field(init=False)

    def __post_init__(self) -> None:
        self.waker = Waker(self.db.app)
        self.gate = AccessGate(
            engine=self.db.app, registry=self.registry, access_tokens=self.access_tokens,
            rate_limiter=self.rate_limiter, api_token_use=self.api_token_use, clock=lambda: self.clock(),
            in_flight=InFlight(self.settings.max_in_flight, wait=self.settings.pool_wait_seconds,
                               share=self.settings.tenant_in_flight),
            limits=request_limits(self.settings.statement_timeout_seconds, self.settings.lock_timeout_seconds,
                                  self.settings.idle_in_transaction_seconds),
            waker=self.waker,
        )

    def on_close(self, stop: Callable[[], Awaitable[None]]) -> None:
        """Run `stop` when the platform closes, before its pools are disposed."""
        self._closing.append(stop)

    @classmethod
    def create(cls, settings: Settings) -> Platform:
        db = Database.connect(settings)
        # Requests keep a few clean connections between them (app.db.transaction._Kept).
        keep_connections(db.app, limit=max(1, settings.pool_size // 2))
        limit_schemas_per_connection(db.app, settings.schemas_per_connection)
        prepared.enabled = settings.prepared_statements  # one setting per process, as the engines are
        metrics = RequestMetrics(max_tenants=settings.metrics_max_tenants)
        shared = SharedBuckets(db.app.url.set(drivername="postgresql").render_as_string(hide_password=False))
        return cls(
            settings=settings,
            db=db,
            meter=Meter(db.app, flushed=lambda outcome: metrics.usage_flushes.labels(outcome).inc()),
            metrics=metrics,
            rate_limiter=RateLimiter(anonymous_rate=settings.anonymous_requests_per_second, shared=shared),
            api_token_use=LastUsed(),
            login_throttle=LoginThrottle(shared=shared),  # the same buckets: one connection per process
            registry=Registry(ttl=settings.registry_ttl_seconds),
            passwords=Passwords(time_cost=settings.argon2_time_cost, memory_kib=settings.argon2_memory_kib),
            access_tokens=AccessTokens(
                secret=settings.resolved_secret_key(),
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
                ttl_seconds=settings.access_token_ttl_seconds,
            ),
        )

    async def close(self) -> None:
        stops, self._closing = self._closing, []
        for stop in stops:
            await stop()
        await self.waker.close()  # what requests committed last still wakes its readers
        await release_kept(self.db.app)
        if self.rate_limiter.shared is not None:
            await self.rate_limiter.shared.close()
        await self.db.dispose()
