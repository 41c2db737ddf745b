"""Admission: how much work a process takes on, per tenant and in all.

- requestsPerSecond: a token bucket per tenant (burst = requestBurst, default one second's worth),
  kept in PostgreSQL and shared by every worker process and server (one round trip, only for
  tenants with a rate); counted in the process while the database cannot answer.
- In-flight requests per process are capped below what the connection pool can serve, one
  tenant's at a share of that cap, and a request waits for a slot at most `wait` seconds before it
  is refused as UNAVAILABLE (HTTP 503 + Retry-After): under overload the server answers "busy",
  it never stalls, and one tenant's overload is its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from app.errors import RateLimited, Unavailable
from app.models.management import rate_buckets
from app.tenancy.registry import TenantRecord

log = logging.getLogger("tenantry.admission")


@dataclass
class _Bucket:
    tokens: float
    updated: float


# One statement per check, on the limiter's own autocommit connection: the bucket's row lock is
# held for that statement only (in the request's transaction it would serialise the tenant's
# requests until COMMIT). `now` comes from the server's clock, in epoch seconds.
_TAKE = """INSERT INTO tenantry.rate_buckets AS b (key, tokens, updated_at) VALUES (%(k)s, %(burst)s - 1, %(now)s)
ON CONFLICT (key) DO UPDATE SET
  tokens = LEAST(%(burst)s, b.tokens + GREATEST(0, %(now)s - b.updated_at) * %(rate)s) - 1,
  updated_at = GREATEST(b.updated_at, %(now)s)
WHERE LEAST(%(burst)s, b.tokens + GREATEST(0, %(now)s - b.updated_at) * %(rate)s) >= 1
RETURNING tokens"""


# Counters over a fixed window (login attempts: exactly `cap` within WINDOW seconds, as a user is
# told), in the same table: `tokens` counts the window's attempts, `updated_at` is when it began.
_ATTEMPT = """INSERT INTO tenantry.rate_buckets AS b (key, tokens, updated_at) VALUES (%(k)s, 1, %(now)s)
ON CONFLICT (key) DO UPDATE SET
  tokens = CASE WHEN b.updated_at <= %(now)s - %(window)s THEN 1 ELSE b.tokens + 1 END,
  updated_at = CASE WHEN b.updated_at <= %(now)s - %(window)s THEN %(now)s ELSE b.updated_at END
WHERE b.updated_at <= %(now)s - %(window)s OR b.tokens < %(cap)s
RETURNING tokens"""
_ATTEMPTS = """SELECT CASE WHEN updated_at <= %(now)s - %(window)s THEN 0 ELSE tokens END,
       updated_at + %(window)s - %(now)s FROM tenantry.rate_buckets WHERE key = %(k)s"""
_GIVE_BACK = "UPDATE tenantry.rate_buckets SET tokens = GREATEST(0, tokens - 1) WHERE key = %(k)s"
_RESET = "DELETE FROM tenantry.rate_buckets WHERE key = %(k)s"


async def purge_buckets(engine: AsyncEngine, idle_seconds: float = 3600.0) -> int:
    """Forget buckets untouched for an hour: full again at every rate used here (an address sweep's
    rows must not pile up)."""
    async with engine.begin() as conn:
        gone = await conn.execute(delete(rate_buckets).where(rate_buckets.c.updated_at < time.time() - idle_seconds))
    return int(gone.rowcount)


class SharedBuckets:
    """Token buckets in PostgreSQL (`tenantry.rate_buckets`), so that every worker process and every
    server draws from one bucket per tenant. One autocommit connection of its own per process (not
    a pooled one: a request holds one pooled connection at most), checks one at a time on it."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def take(self, key: str, rate: float, burst: float) -> bool:
        """Whether a token was taken; psycopg.Error when the database cannot say."""
        return await self._run(_TAKE, {"k": key, "rate": rate, "burst": burst}) is not None

    async def attempt(self, key: str, cap: int, window: float) -> bool:
        """Count an attempt in the key's current window, unless `cap` are counted there already."""
        return await self._run(_ATTEMPT, {"k": key, "cap": cap, "window": window}) is not None

    async def attempts(self, key: str, window: float) -> tuple[int, float]:
        """The attempts of the key's current window, and the seconds until it ends."""
        row = await self._run(_ATTEMPTS, {"k": key, "window": window})
        return (int(row[0]), float(row[1])) if row is not None else (0, 0.0)

    async def give_back(self, key: str) -> None:
        await self._run(_GIVE_BACK, {"k": key})

    async def reset(self, key: str) -> None:
        await self._run(_RESET, {"k": key})

    async def _run(self, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True, connect_timeout=5)
            try:
                cursor = await self._conn.execute(sql, {**params, "now": time.time()})
                return await cursor.fetchone() if cursor.description else None
            except psycopg.Error:
                await self._conn.close()
                self._conn = None
                raise

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


class RateLimiter:
    """Token buckets: one per tenant (its requestsPerSecond: shared by every process through
    `SharedBuckets`), one per anonymous client address (in process: a burst from one address is
    this process's to refuse, and it costs no round trip)."""

    MAX_KEYS = 100_000  # beyond it, buckets start afresh (an address sweep must not grow memory)

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, anonymous_rate: float = 0,
                 shared: SharedBuckets | None = None) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self.anonymous_rate = anonymous_rate  # requests a second per client address without a credential; 0: off
        self.shared = shared  # tenants' buckets in PostgreSQL; None (or the database failing): this process's

    async def take(self, tenant: TenantRecord) -> None:
        rate = tenant.requests_per_second
        if rate is None:
            return
        burst = float(tenant.request_burst or rate)
        message = f"more than {rate} requests per second for this tenant"
        if self.shared is not None:
            try:
                taken = await self.shared.take("tenant:" + tenant.id, float(rate), burst)
            except (psycopg.Error, OSError):
                log.warning("shared rate limits unavailable; counting in this process", exc_info=True)
            else:
                if not taken:
                    raise RateLimited(message, limit="requestsPerSecond",
                                      retryAfter=max(1, math.ceil(1 / rate)) if rate > 0 else 60)
                return
        self._take(tenant.id, rate, burst, message, "requestsPerSecond")

    def take_anonymous(self, client: str) -> None:
        """Work for a caller with no credential, counted per client address before the document is
        parsed (a burst of twice the rate): anonymous traffic cannot take the event loop."""
        rate = self.anonymous_rate
        if rate > 0:
            self._take("client:" + client, rate, 2.0 * rate,
                       f"more than {rate:g} requests per second from this address without a credential",
                       "anonymousRequestsPerSecond")

    def _take(self, key: str, rate: float, burst: float, message: str, limit: str) -> None:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.MAX_KEYS:
                self._buckets.clear()
            bucket = self._buckets[key] = _Bucket(tokens=burst, updated=now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return
        retry_after = max(1, math.ceil((1 - bucket.tokens) / rate)) if rate > 0 else 60
        raise RateLimited(message, limit=limit, retryAfter=retry_after)


@dataclass
class _Share:
    slots: asyncio.Semaphore
    users: int = 0  # requests holding or waiting for one of these slots (the share is dropped at 0)


class InFlight:
    """At most `limit` requests of this process hold (or wait for) database work at once, and at
    most `share` of them for one key (a tenant, or an anonymous client address: see
    `RequestAccess.admission_key`). Since a request holds one pooled connection at most, the share
    bounds a tenant's part of the pool too: with one tenant's requests stuck behind a lock, the
    others still find slots and connections. Beyond its share a key's requests queue among
    themselves, never in front of other keys'."""

    def __init__(self, limit: int, *, wait: float, share: int | None = None) -> None:
        self.limit = max(1, limit)
        self.share = max(1, min(share or self.limit, self.limit))
        self._slots = asyncio.Semaphore(self.limit)
        self._shares: dict[str, _Share] = {}
        self._wait = wait
        self.waiting = 0  # requests waiting for a slot (and so for a connection): a metrics gauge

    @contextlib.asynccontextmanager
    async def slot(self, key: str = "") -> AsyncIterator[None]:
        share = self._shares.get(key)
        if share is None:
            share = self._shares[key] = _Share(asyncio.Semaphore(self.share))
        share.users += 1
        try:
            deadline = time.monotonic() + self._wait
            await self._acquire(share.slots, deadline, "too many requests in flight for this tenant")
            try:
                await self._acquire(self._slots, deadline, "the server is busy: too many requests in flight")
                try:
                    yield
                finally:
                    self._slots.release()
            finally:
                share.slots.release()
        finally:
            share.users -= 1
            if share.users == 0:
                del self._shares[key]

    async def _acquire(self, slots: asyncio.Semaphore, deadline: float, busy: str) -> None:
        if not slots.locked():  # only a saturated process (or share) pays for the timed wait (a task)
            await slots.acquire()
            return
        self.waiting += 1
        try:
            await asyncio.wait_for(slots.acquire(), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError as exc:
            raise Unavailable(busy, retryAfter=1) from exc
        finally:
            self.waiting -= 1
