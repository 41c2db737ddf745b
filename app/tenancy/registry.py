"""The tenant registry, cached in process.

Every routed request needs its tenant's status and every management-plane check needs its
path; reading them from PostgreSQL each time would add a round trip to every request. The
cache holds each record for `ttl` seconds (about one second), and this process drops an
entry the moment it changes one, so a suspension is seen here at once and in every other
worker process within the TTL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.engine import Row

from app.db.transaction import Executor
from app.models.management import memberships, refresh_tokens, tenants, users


@dataclass(frozen=True)
class TenantRecord:
    id: str
    domain: str
    company: str
    kind: str
    status: str
    parent_id: str | None
    path: tuple[str, ...]
    depth: int
    allow_create_tenants: bool
    contact_name: str | None
    contact_email: str | None
    custom_properties: dict[str, Any]
    template: str
    max_devices: int | None
    max_users: int | None
    max_subtenants: int | None
    storage_bytes: int | None
    requests_per_second: int | None
    request_burst: int | None
    suspended_from: str | None
    parent_access: str
    schema_version: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Row[Any]) -> TenantRecord:
        m = row._mapping
        return cls(**{name: m[name] for name in _FIELDS} | {"path": tuple(m["path"])})

    def is_strict_descendant_of(self, ancestor_id: str) -> bool:
        return ancestor_id in self.path and ancestor_id != self.id


_FIELDS = tuple(TenantRecord.__dataclass_fields__)
TENANT_COLUMNS = tuple(tenants.c[name] for name in _FIELDS)


def select_tenants() -> Any:
    return select(*TENANT_COLUMNS)


K = TypeVar("K")
V = TypeVar("V")


class _TTLCache(Generic[K, V]):
    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._clock = clock
        self._items: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> tuple[bool, V | None]:
        hit = self._items.get(key)
        if hit is None or hit[0] < self._clock():
            return False, None
        return True, hit[1]

    def put(self, key: K, value: V) -> None:
        if len(self._items) > 100_000:  # bounded: drop everything rather than grow forever
            self._items.clear()
        self._items[key] = (self._clock() + self._ttl, value)

    def drop(self, keys: Iterable[K]) -> None:
        for key in keys:
            self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()


@dataclass(frozen=True)
class MembershipInfo:
    role: str
    group_ids: tuple[int, ...] | None  # None: the whole tenant
    scope: str = "TENANT"  # SUBTREE: the same role in every descendant's management plane


class _SingleFlight(Generic[K, V]):
    """Concurrent misses for one key are answered by one lookup: when an entry expires under
    load, hundreds of requests would otherwise each query (and each hold a connection for) the
    same row at the same moment."""

    def __init__(self) -> None:
        self._pending: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            value = await load()
        except BaseException as exc:
            # Waiters retry with their own lookup rather than inherit this caller's failure
            # (it may be this caller's cancellation or its own connection's trouble).
            future.set_exception(_Retry())
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise exc from None
        else:
            future.set_result(value)
            return value
        finally:
            del self._pending[key]


class _Retry(Exception):
    pass


class Registry:
    """Cached reads of tenants and memberships from the management schema."""

    def __init__(self, *, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._tenants: _TTLCache[str, TenantRecord | None] = _TTLCache(ttl, clock)
        self._roles: _TTLCache[tuple[UUID, str], MembershipInfo | None] = _TTLCache(ttl, clock)
        self._tenant_flight: _SingleFlight[str, TenantRecord | None] = _SingleFlight()
        self._role_flight: _SingleFlight[tuple[UUID, str], MembershipInfo | None] = _SingleFlight()
        self._disabled: _TTLCache[UUID, bool] = _TTLCache(ttl, clock)
        self._disabled_flight: _SingleFlight[UUID, bool] = _SingleFlight()
        self._sessions: _TTLCache[UUID, bool] = _TTLCache(ttl, clock)
        self._session_flight: _SingleFlight[UUID, bool] = _SingleFlight()
        self.lookups = 0  # database round trips made (tests check that misses are merged)

    async def tenant(self, db: Executor, tenant_id: str) -> TenantRecord | None:
        while True:
            found, record = self._tenants.get(tenant_id)
            if found:
                return record
            try:
                return await self._tenant_flight.run(tenant_id, lambda: self._load_tenant(db, tenant_id))
            except _Retry:
                continue

    async def _load_tenant(self, db: Executor, tenant_id: str) -> TenantRecord | None:
        self.lookups += 1
        row = (await db.execute(select_tenants().where(tenants.c.id == tenant_id))).first()
        record = TenantRecord.from_row(row) if row is not None else None
        self._tenants.put(tenant_id, record)
        return record

    async def membership(self, db: Executor, user_id: UUID, tenant_id: str) -> MembershipInfo | None:
        """The user's direct membership in the tenant (role and group scope), or None."""
        key = (user_id, tenant_id)
        while True:
            found, info = self._roles.get(key)
            if found:
                return info
            try:
                return await self._role_flight.run(key, lambda: self._load_membership(db, key))
            except _Retry:
                continue

    async def _load_membership(self, db: Executor, key: tuple[UUID, str]) -> MembershipInfo | None:
        self.lookups += 1
        user_id, tenant_id = key
        stmt = select(memberships.c.role, memberships.c.group_ids, memberships.c.scope).where(
            memberships.c.user_id == user_id, memberships.c.tenant_id == tenant_id
        )
        row = (await db.execute(stmt)).first()
        info = MembershipInfo(row.role, tuple(row.group_ids) if row.group_ids is not None else None,
                              row.scope) if row else None
        self._roles.put(key, info)
        return info

    async def user_disabled(self, db: Executor, user_id: UUID) -> bool:
        """Whether the user is disabled (cached like memberships: a disable is seen here at once,
        in other processes within the TTL)."""
        while True:
            found, disabled = self._disabled.get(user_id)
            if found:
                return bool(disabled)
            try:
                return await self._disabled_flight.run(user_id, lambda: self._load_disabled(db, user_id))
            except _Retry:
                continue

    async def _load_disabled(self, db: Executor, user_id: UUID) -> bool:
        self.lookups += 1
        row = (await db.execute(select(users.c.disabled_at).where(users.c.id == user_id))).first()
        disabled = row is not None and row.disabled_at is not None
        self._disabled.put(user_id, disabled)
        return disabled

    async def session_alive(self, db: Executor, family: UUID) -> bool:
        """Whether a login session (refresh-token family) still stands: logout, a password change or
        reset and refresh-token reuse end it, and with it every access token issued in it (cached
        like the rest: seen here at once, in other processes within the TTL)."""
        while True:
            found, alive = self._sessions.get(family)
            if found:
                return bool(alive)
            try:
                return await self._session_flight.run(family, lambda: self._load_session(db, family))
            except _Retry:
                continue

    async def _load_session(self, db: Executor, family: UUID) -> bool:
        self.lookups += 1
        row = (await db.execute(select(refresh_tokens.c.id).where(
            refresh_tokens.c.family_id == family, refresh_tokens.c.revoked_at.is_(None)).limit(1))).first()
        self._sessions.put(family, row is not None)
        return row is not None

    def forget_sessions(self) -> None:
        """Drop every cached session state (after sessions were ended in this process)."""
        self._sessions.clear()

    def forget_user(self, user_id: UUID) -> None:
        self._disabled.drop([user_id])

    def forget_tenants(self, ids: Iterable[str]) -> None:
        self._tenants.drop(ids)

    def forget_membership(self, user_id: UUID, tenant_id: str) -> None:
        self._roles.drop([(user_id, tenant_id)])

    def clear(self) -> None:
        self._tenants.clear()
        self._roles.clear()
        self._disabled.clear()
        self._sessions.clear()
