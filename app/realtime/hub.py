"""The realtime hub: one per process, between PostgreSQL's notifications and live subscriptions.

- One LISTEN connection per process (`tenantry_changes`, `tenantry_access`; app.runtime.announcements
  describes the payloads). Writers NOTIFY inside their transaction, so only committed changes
  arrive, from any worker process.
- Notifications are drained in batches; for each (tenant, kind) that has subscribers, the rows
  are fetched once, in one transaction under that tenant's role, and offered to each subscriber
  its rights let see at delivery time: the permission it subscribed with, its group scope (one
  query per distinct scope), a device token's own device. Nothing is fetched for tenants nobody
  listens to.
- Each subscription has a bounded queue (`subscription_queue`). A consumer that falls behind
  loses the OLDEST events; the next event it receives says how many it missed
  (`extensions.missed`), so a dashboard knows to refetch.
- Sessions (a WebSocket connection, an SSE stream) are checked again by the access gate: at once
  when an access notification names their tenant or user, when their token expires, and every
  `subscription_recheck_seconds` (custom roles and device tokens live in tenant schemas, which
  send no trigger). A session that fails, or lost a permission one of its subscriptions needs,
  ends (WebSocket close 4403, SSE end).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import orjson
import psycopg
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access.acting import management_transaction, tenant_transaction
from app.access.gate import AccessGate
from app.access.principal import Routed
from app.access.scope import Scope
from app.db.notify import ACCESS, CHANGES
from app.db.transaction import Executor
from app.errors import LimitExceeded
from app.models.management import copy_jobs
from app.models.tenant import devices
from app.realtime.deliveries import FETCH, Delivery
from app.realtime.sessions import Session, Subscription
from app.runtime.announcements import verified
from app.services.sharing import jobs
from app.tenancy.registry import TenantRecord, select_tenants

log = logging.getLogger("tenantry.realtime")

RECHECKS_PER_TICK = 100
FREEZE_MIN_SESSIONS = 200
FREEZE_SECONDS = 600.0
MANAGEMENT = "*"  # the key of management-plane topics (copy jobs); tenants' lifecycle is per ancestor


class Hub:
    def __init__(self, *, engine: AsyncEngine, gate: AccessGate, per_connection: int, per_tenant: int,
                 queue_size: int, recheck_seconds: float, per_user: int | None = None,
                 counted: Callable[[str, int], None] = lambda tenant, n: None) -> None:
        self.engine = engine
        self.gate = gate
        self.per_connection = per_connection
        self.per_tenant = per_tenant
        # One caller's share of a tenant's subscriptions: a parent-level admin (or one token) opening
        # connection after connection cannot use up the tenant's cap for its own people.
        self.per_user = per_user if per_user is not None else max(1, per_tenant // 4)
        self.queue_size = queue_size
        self.recheck_seconds = recheck_seconds
        self.counted = counted  # usage: events delivered, per tenant
        self.sessions: set[Session] = set()
        self.listening = asyncio.Event()
        self._topics: dict[tuple[str, str], set[Subscription]] = defaultdict(set)
        self._per_tenant: Counter[str] = Counter()
        self._per_user: Counter[tuple[str, str, str]] = Counter()
        self._pending: list[str] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._suspect: set[str] = set()  # "tenant:<id>" / "user:<uuid>" whose sessions are checked at once

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._listen(), name="realtime-listen"),
                           asyncio.create_task(self._deliver_loop(), name="realtime-deliver"),
                           asyncio.create_task(self._recheck_loop(), name="realtime-recheck"),
                           asyncio.create_task(self._collector_loop(), name="realtime-collector")]

    async def stop(self) -> None:
        for session in list(self.sessions):
            session.end("the server is shutting down")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    def session(self, *, authorization: str | None, tenant_header: str | None, routed: Routed,
                expires_at: int | None, on_end: Callable[[str], None], client: str | None = None) -> Session:
        session = Session(self, authorization=authorization, tenant_header=tenant_header, routed=routed,
                          expires_at=expires_at, on_end=on_end, client=client)
        self.sessions.add(session)
        return session

    def next_periodic_check(self) -> float:
        """Spread over ±50 % of the interval, so sessions opened together are not checked together."""
        return time.monotonic() + self.recheck_seconds * random.uniform(0.5, 1.5)  # noqa: S311 - spreading load

    @property
    def subscription_count(self) -> int:
        return sum(self._per_tenant.values())

    def add_subscription(self, subscription: Subscription) -> None:
        if self._per_tenant[subscription.tenant_id] >= self.per_tenant:
            raise LimitExceeded(f"at most {self.per_tenant} live subscriptions per tenant (per server process)",
                                limit="subscriptionsPerTenant", max=self.per_tenant)
        caller = _caller(subscription)
        if self._per_user[caller] >= self.per_user:
            raise LimitExceeded(f"at most {self.per_user} live subscriptions per caller in a tenant (per server "
                                "process)", limit="subscriptionsPerUser", max=self.per_user)
        self._per_tenant[subscription.tenant_id] += 1
        self._per_user[caller] += 1
        self._topics[(subscription.tenant_id, subscription.kind)].add(subscription)

    def remove_subscription(self, subscription: Subscription) -> None:
        subscription.close()
        topic = self._topics.get((subscription.tenant_id, subscription.kind))
        if topic is not None and subscription in topic:
            topic.discard(subscription)
            if not topic:
                del self._topics[(subscription.tenant_id, subscription.kind)]
            self._per_tenant[subscription.tenant_id] -= 1
            if self._per_tenant[subscription.tenant_id] <= 0:
                del self._per_tenant[subscription.tenant_id]
            caller = _caller(subscription)
            self._per_user[caller] -= 1
            if self._per_user[caller] <= 0:
                del self._per_user[caller]

    # --- notifications ------------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Keep one LISTEN connection; reconnect with backoff (events while it was down are lost:
        a subscriber sees a gap, never a wrong event)."""
        delay = 0.5
        cargs, cparams = self.engine.dialect.create_connect_args(self.engine.url)
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(*cargs, **{**cparams, "autocommit": True})
                async with conn:
                    await conn.execute(f"LISTEN {CHANGES}")
                    await conn.execute(f"LISTEN {ACCESS}")
                    self.listening.set()
                    delay = 0.5
                    async for note in conn.notifies():
                        if note.channel == ACCESS:
                            self._access_changed(note.payload)
                        elif verified(note.payload):
                            self._pending.append(note.payload)
                            self._wake.set()
                        else:  # not signed with this server's key: anyone may NOTIFY, nobody forges events
                            log.warning("realtime: dropped a change notification that does not verify")
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                self.listening.clear()
                log.warning("realtime: LISTEN connection lost (%s); reconnecting in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _access_changed(self, payload: str) -> None:
        kind, _, rest = payload.partition(":")
        key = rest.split(":", 1)[0]
        registry = self.gate.registry
        if kind == "tenant":
            registry.forget_tenants([key])  # also fresh for requests: the TTL need not pass
            if rest.count(":") and self._topics:  # a tenant's own row changed: its ancestors' `tenants` topics
                self._pending.append(orjson.dumps({"t": MANAGEMENT, "k": "tenant", "o": rest.split(":")[1],
                                                   "id": key}).decode())
                self._wake.set()
        elif kind == "user":
            with contextlib.suppress(ValueError):
                registry.forget_user(UUID(key))
        suspect = f"{kind}:{key}"
        self._suspect.add(suspect)
        for session in self.sessions:  # nothing later reaches them before the gate has answered again
            if session.ended is None and session.named_by({suspect}):
                session.hold()

    async def _deliver_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            try:
                await self._deliver(batch)
            except Exception:  # one bad batch must not stop delivery for everyone
                log.exception("realtime: delivering %d notifications failed", len(batch))

    async def _deliver(self, batch: Sequence[str]) -> None:
        """Group the batch by (tenant, kind), fetch each group once, offer it to its subscribers."""
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for payload in batch:
            note = orjson.loads(payload)
            kind = note["k"]
            tenant = note["t"]
            if kind == "tenant":
                if any(key[1] == "tenant" for key in self._topics):
                    grouped[(MANAGEMENT, "tenant")].append(note)
            elif (key := (tenant if kind != "copyjob" else MANAGEMENT, kind)) in self._topics:
                grouped[key].append(note)
        by_tenant: dict[str, list[tuple[str, list[dict[str, Any]]]]] = defaultdict(list)
        for (tenant, kind), notes in grouped.items():
            by_tenant[tenant].append((kind, notes))
        for tenant, work in by_tenant.items():
            if tenant == MANAGEMENT:
                await self._deliver_management(work)
            else:
                await self._deliver_tenant(tenant, work)

    async def _deliver_tenant(self, tenant_id: str, work: list[tuple[str, list[dict[str, Any]]]]) -> None:
        tx = tenant_transaction(self.engine, tenant_id)
        try:
            for kind, notes in work:
                deliveries = await FETCH[kind](tx, notes)
                subscribers = list(self._topics.get((tenant_id, kind), ()))
                if deliveries and subscribers:
                    await self._offer(tx, deliveries, subscribers)
        finally:
            await tx.finish(commit=False)

    async def _offer(self, db: Executor, deliveries: list[Delivery], subscribers: list[Subscription]) -> None:
        """Each delivery to each subscriber whose rights (as they are now) cover its device."""
        visible: dict[Scope, set[int]] = {}
        device_ids = sorted({d.device_id for d in deliveries if d.device_id is not None})
        for scope in {s.routed.scope for s in subscribers}:
            if scope.group_ids is not None and device_ids:
                rows = await db.execute(select(devices.c.id).where(devices.c.id.in_(device_ids),
                                                                   scope.devices(devices.c.id)))
                visible[scope] = {r.id for r in rows}
        delivered: Counter[str] = Counter()
        for delivery in deliveries:
            for subscription in subscribers:
                if not subscription.permitted or not _sees(subscription.routed.scope, delivery, visible):
                    continue
                chosen = subscription.select(delivery)
                if chosen is not None:
                    subscription.offer(chosen)
                    delivered[subscription.tenant_id] += 1
        for tenant, n in delivered.items():
            self.counted(tenant, n)

    async def _deliver_management(self, work: list[tuple[str, list[dict[str, Any]]]]) -> None:
        tx = management_transaction(self.engine)
        try:
            for kind, notes in work:
                if kind == "copyjob":
                    ids = list({UUID(n["job"]) for n in notes})
                    rows = (await tx.execute(select(*jobs.JOB_COLUMNS, copy_jobs.c.requested_by)
                                             .where(copy_jobs.c.id.in_(ids)))).all()
                    for row in rows:
                        delivery = Delivery("copyjob", row.status, jobs.CopyJob(*tuple(row)[:-1]))
                        for subscription in list(self._topics.get((MANAGEMENT, "copyjob"), ())):
                            if subscription.routed.principal.user_id == row.requested_by:
                                chosen = subscription.select(delivery)
                                if chosen is not None:
                                    subscription.offer(chosen)
                elif kind == "tenant":
                    ids = list({n["id"] for n in notes})
                    ops = {n["id"]: n["o"] for n in notes}
                    rows = (await tx.execute(select_tenants().where(text("id = ANY(:ids)")), {"ids": ids})).all()
                    for row in rows:
                        record = TenantRecord.from_row(row)
                        op = "DELETED" if record.status == "DELETED" else (
                            "CREATED" if ops.get(record.id) == "INSERT" else "UPDATED")
                        delivery = Delivery("tenant", op, record)
                        for (owner, kind_), subscribers in list(self._topics.items()):
                            if kind_ != "tenant" or not record.is_strict_descendant_of(owner):
                                continue
                            for subscription in list(subscribers):
                                if subscription.permitted:
                                    chosen = subscription.select(delivery)
                                    if chosen is not None:
                                        subscription.offer(chosen)
        finally:
            await tx.finish(commit=False)

    # --- rechecks -----------------------------------------------------------------------------------

    async def _collector_loop(self) -> None:
        """Keep the garbage collector's full passes short while many sessions are open.

        A WebSocket session is a few hundred long-lived objects; with a thousand of them every full
        collection traversed them all and paused delivery for 40-160 ms (bench/realtime.py). Once the
        open sessions have grown by a tenth, what is alive is collected once and frozen (out of the
        collector's reach); every FREEZE_SECONDS — sooner when half the frozen sessions have closed —
        it is unfrozen, so what closed meanwhile is freed by the next collections."""
        frozen_sessions, frozen_at = 0, time.monotonic()
        while True:
            await asyncio.sleep(5.0)
            open_now = len(self.sessions)
            expired = time.monotonic() - frozen_at > FREEZE_SECONDS or open_now < frozen_sessions // 2
            if frozen_sessions and expired:
                gc.unfreeze()
                frozen_sessions = 0
            if open_now >= FREEZE_MIN_SESSIONS and open_now > frozen_sessions * 1.1:
                gc.collect()
                gc.freeze()
                frozen_sessions, frozen_at = open_now, time.monotonic()

    async def _recheck_loop(self) -> None:
        """Sessions named by access notifications first, then expired and periodically due ones, at
        most RECHECKS_PER_TICK every 0.2 s: a gate check costs a few queries, and a thousand at once
        (a tenant-wide change) would stall deliveries for everyone."""
        waiting: dict[Session, None] = {}  # ordered, without duplicates
        while True:
            await asyncio.sleep(0.2)
            suspects, self._suspect = self._suspect, set()
            now, wall = time.monotonic(), time.time()
            for s in list(self.sessions):
                if s.ended is None and s.named_by(suspects):
                    waiting[s] = None
            for s in list(self.sessions):
                if s.ended is None and (s.next_check <= now or (s.expires_at is not None and s.expires_at <= wall)):
                    waiting[s] = None
            due = list(itertools.islice(waiting, RECHECKS_PER_TICK))
            for session in due:
                del waiting[session]
            for session in due:
                if session.ended is not None:
                    continue
                try:
                    await session.recheck()
                except Exception:
                    log.exception("realtime: checking a session again failed; it ends")
                    session.end("internal error")


def _caller(subscription: Subscription) -> tuple[str, str, str]:
    """(tenant, actor type, actor id): whose share of the tenant's subscriptions this one is."""
    actor = subscription.session.routed.actor
    return subscription.tenant_id, actor.type, str(actor.id)


def _sees(scope: Scope, delivery: Delivery, visible: dict[Scope, set[int]]) -> bool:
    if scope.unrestricted:
        return True
    if delivery.device_id is None:
        return False  # e.g. a deleted device: only unrestricted subscribers hear of it
    if scope.device_id is not None:
        return delivery.device_id == scope.device_id
    return delivery.device_id in visible.get(scope, set())


# --- fetching what changed ------------------------------------------------------------------------------
