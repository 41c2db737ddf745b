"""Admission: how much work a process takes on, per tenant and in all.

- requestsPerSecond: a token bucket per tenant in each server process (burst = requestBurst,
  default one second's worth). With N worker processes a tenant gets up to N times its rate in
  the worst case (documented; a shared limiter would cost a round trip).
- In-flight requests per process are capped below what the connection pool can serve, and a
  request waits for a slot at most `wait` seconds before it is refused as UNAVAILABLE
  (HTTP 503 + Retry-After): under overload the server answers "busy", it never stalls.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from app.errors import RateLimited, Unavailable
from app.tenancy.registry import TenantRecord


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per tenant. In-process: with N worker processes a tenant gets up to N
    times its rate in the worst case (documented; a shared limiter would cost a round trip)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, tenant: TenantRecord) -> None:
        rate = tenant.requests_per_second
        if rate is None:
            return
        burst = float(tenant.request_burst or rate)
        now = self._clock()
        bucket = self._buckets.get(tenant.id)
        if bucket is None:
            bucket = self._buckets[tenant.id] = _Bucket(tokens=burst, updated=now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return
        retry_after = max(1, math.ceil((1 - bucket.tokens) / rate)) if rate > 0 else 60
        raise RateLimited(f"more than {rate} requests per second for this tenant", limit="requestsPerSecond",
                          retryAfter=retry_after)


class InFlight:
    """At most `limit` requests of this process hold (or wait for) database work at once."""

    def __init__(self, limit: int, *, wait: float) -> None:
        self.limit = max(1, limit)
        self._slots = asyncio.Semaphore(self.limit)
        self._wait = wait
        self.waiting = 0  # requests waiting for a slot (and so for a connection): a metrics gauge

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked():  # only a saturated process pays for the timed wait (a task)
            self.waiting += 1
            try:
                await asyncio.wait_for(self._slots.acquire(), timeout=self._wait)
            except TimeoutError as exc:
                raise Unavailable("the server is busy: too many requests in flight", retryAfter=1) from exc
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        try:
            yield
        finally:
            self._slots.release()
