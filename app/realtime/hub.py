"""The realtime hub: one per process, between PostgreSQL's notifications and live subscriptions.

- Every change is an entry of its tenant's durable log (app.runtime.announcements). One LISTEN
  connection per process hears which tenants' logs grew (`tenantry_changes`, sent after COMMIT, from
  any worker process: app.db.wakes) and who may do what changed (`tenantry_access`). Every
  `SWEEP_SECONDS` it reads its tenants' logs whether it heard of them or not.
- For each tenant that has subscribers the hub keeps a cursor: on a wake-up it reads the log past
  it, once, in one transaction under that tenant's role, and offers each change to each
  subscriber its rights let see at delivery time: the permission it subscribed with, its group
  scope (one query per distinct scope), a device token's own device. Nothing is read for tenants
  nobody listens to. A lost LISTEN connection loses nothing: on reconnecting the hub reads on
  from its cursors.
- A subscription resumed `after:` a position, or whose consumer fell behind its bounded queue
  (`subscription_queue`), reads the log itself until it reaches the hub's cursor, then goes live
  (app.realtime.sessions.Subscription): no gap and no duplicate at the seam, nothing dropped.
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
from typing import cast
from uuid import UUID

import psycopg
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access.acting import management_transaction, read_as_tenants, tenant_transaction
from app.access.gate import AccessGate
from app.access.principal import Routed
from app.access.scope import Scope
from app.db.engines import own_connection
from app.db.notify import ACCESS, CHANGES
from app.db.transaction import Executor, Transaction
from app.errors import LimitExceeded
from app.models.tenant import devices
from app.realtime.deliveries import Delivery, Readers
from app.realtime.deliveries import deliveries as FETCH
from app.realtime.sessions import Session, Subscription
from app.services.changes import log

log_ = logging.getLogger("tenantry.realtime")

RECHECKS_PER_TICK = 100
FREEZE_MIN_SESSIONS = 200
FREEZE_SECONDS = 600.0
READ_PAGE = 2000  # log entries read per round by the hub
TENANTS_PER_READ = 50  # tenants' logs read in one round trip
REPLAY_PAGE = 500  # … and by a subscription catching up
RETRY_SECONDS = 0.2
SWEEP_SECONDS = 5.0  # every followed log is read this often even when no wake-up came (`Hub._sweep`)


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
        self._pending: set[str] = set()  # tenants whose logs grew
        self._cursors: dict[str, int] = {}  # per tenant with subscribers: the last position offered
        self._retrying: set[str] = set()
        self._retried: set[str] = set()
        self.on_change: list[Callable[[str], None]] = []  # told of every tenant whose log grew
        self.on_access: list[Callable[[str], None]] = []  # told of every `tenant:<id>` / `user:<uuid>` changed
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

    def cursor(self, tenant_id: str) -> int:
        """The last position of `tenant_id`'s log the hub has offered to live subscriptions."""
        return self._cursors.get(tenant_id, 0)

    async def add_subscription(self, subscription: Subscription, after: str | None) -> None:
        """Count it against the caps, find where it starts in its tenant's log (`after`, checked, or
        now) and register it; from then on it hears every change past that position."""
        self._check_caps(subscription)
        tenant = subscription.tenant_id
        tx = tenant_transaction(self.engine, tenant)
        try:
            start = await log.checked_after(tx, tenant, after)
            now = (await log.head(tx)).last
        finally:
            await tx.finish(commit=False)
        self._check_caps(subscription)  # others may have been added meanwhile
        live_from = self._cursors.setdefault(tenant, now)
        subscription.start(start if start is not None else live_from, live_from)
        self._per_tenant[tenant] += 1
        self._per_user[_caller(subscription)] += 1
        self._topics[(tenant, subscription.kind)].add(subscription)

    def _check_caps(self, subscription: Subscription) -> None:
        if self._per_tenant[subscription.tenant_id] >= self.per_tenant:
            raise LimitExceeded(f"at most {self.per_tenant} live subscriptions per tenant (per server process)",
                                limit="subscriptionsPerTenant", max=self.per_tenant)
        if self._per_user[_caller(subscription)] >= self.per_user:
            raise LimitExceeded(f"at most {self.per_user} live subscriptions per caller in a tenant (per server "
                                "process)", limit="subscriptionsPerUser", max=self.per_user)

    def remove_subscription(self, subscription: Subscription) -> None:
        subscription.close()
        tenant = subscription.tenant_id
        topic = self._topics.get((tenant, subscription.kind))
        if topic is not None and subscription in topic:
            topic.discard(subscription)
            if not topic:
                del self._topics[(tenant, subscription.kind)]
            self._per_tenant[tenant] -= 1
            if self._per_tenant[tenant] <= 0:
                del self._per_tenant[tenant]
                self._cursors.pop(tenant, None)  # nobody listens: the next one starts from the head then
            caller = _caller(subscription)
            self._per_user[caller] -= 1
            if self._per_user[caller] <= 0:
                del self._per_user[caller]

    # --- notifications ------------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Keep one LISTEN connection; reconnect with backoff, then read on from every cursor (the
        log, not the notification, is the news: nothing committed meanwhile is lost)."""
        delay = 0.1  # a restarted PostgreSQL answers within a second: resume at once, not seconds later
        while True:
            try:
                conn = await own_connection(self.engine)
                async with conn:
                    await conn.execute(f"LISTEN {CHANGES}")
                    await conn.execute(f"LISTEN {ACCESS}")
                    self._wake_tenants(list(self._cursors))
                    self.listening.set()
                    delay = 0.1
                    async for note in conn.notifies():
                        if note.channel == ACCESS:
                            self._access_changed(note.payload)
                        else:
                            for hook in self.on_change:  # webhooks, shares: they read the log too
                                hook(note.payload)
                            if note.payload in self._cursors:
                                self._wake_tenants([note.payload])
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                self.listening.clear()
                log_.warning("realtime: LISTEN connection lost (%s); reconnecting in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _wake_tenants(self, tenants: Sequence[str]) -> None:
        self._pending.update(tenants)
        self._wake.set()

    def _access_changed(self, payload: str) -> None:
        kind, _, rest = payload.partition(":")
        key = rest.split(":", 1)[0]
        registry = self.gate.registry
        if kind == "tenant":
            registry.forget_tenants([key])  # also fresh for requests: the TTL need not pass
        elif kind == "user":
            with contextlib.suppress(ValueError):
                registry.forget_user(UUID(key))
        suspect = f"{kind}:{key}"
        self._suspect.add(suspect)
        for hook in self.on_access:  # the MQTT bridge: devices whose tokens went are disconnected
            hook(suspect)
        for session in self.sessions:  # nothing later reaches them before the gate has answered again
            if session.ended is None and session.named_by({suspect}):
                session.hold()

    async def _deliver_loop(self) -> None:
        sweep_at = time.monotonic() + SWEEP_SECONDS
        while True:
            # Busy tenants' wake-ups must not put off the sweep of a quiet one: it is due by the clock.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, sweep_at - time.monotonic()))
            if time.monotonic() >= sweep_at:
                self._sweep()
                sweep_at = time.monotonic() + SWEEP_SECONDS
            self._wake.clear()
            tenants = sorted(t for t in self._pending if t in self._cursors)
            self._pending = set()
            for start in range(0, len(tenants), TENANTS_PER_READ):
                chunk = tenants[start:start + TENANTS_PER_READ]
                try:
                    await self._deliver_batch(chunk)
                except Exception:  # one batch's failure must not stop delivery for everyone
                    log_.exception("realtime: reading the change logs of %d tenants failed", len(chunk))
                    for tenant in chunk:
                        self._later(tenant)

    async def _deliver_batch(self, tenants: list[str]) -> None:
        """The logs of these tenants past their cursors, read in ONE round trip (each under its own
        role), then offered tenant by tenant; if that read fails (a schema just dropped), each tenant
        is read on its own."""
        kinds = {t: sorted({k for (tenant, k) in self._topics if tenant == t}) for t in tenants}
        queries = {t: log.page_sql(self._cursors[t], READ_PAGE, kinds[t]) for t in tenants
                   if kinds[t] and t in self._cursors}
        if not queries:
            return
        try:
            pages = await read_as_tenants(self.engine, queries)
        except psycopg.Error:
            for tenant in queries:
                try:
                    if not await self._deliver_tenant(tenant):
                        self._later(tenant)
                except Exception:
                    log_.exception("realtime: reading the change log of %s failed", tenant)
                    self._later(tenant)
            return
        for tenant, rows in pages.items():
            cursor = self._cursors.get(tenant)
            if cursor is None:
                continue
            changes, upto = log.page_of(tenant, rows, cursor, READ_PAGE)
            if upto == cursor:
                self._later(tenant)  # woken before the commit was visible (Citus): look again shortly
                continue
            self._retried.discard(tenant)
            readers = self._readers(tenant)
            try:
                await self._offer_page(tenant, kinds[tenant], changes, upto, readers)
            finally:
                await readers.finish()
            if len(changes) == READ_PAGE:
                self._wake_tenants([tenant])  # more to read

    def _sweep(self) -> None:
        """Read every followed log past its cursor, heard of or not: a wake-up is sent after COMMIT
        (app.db.wakes), so one lost with the process that committed delays delivery this long at
        most. A sweep that finds nothing is not looked at again (`_later`)."""
        quiet = [tenant for tenant in self._cursors if tenant not in self._pending]
        self._retried.update(quiet)
        self._wake_tenants(quiet)

    def _later(self, tenant: str) -> None:
        """Look again shortly, once: a wake-up can come before a distributed commit is visible on its
        worker (Citus commits the coordinator first), and a failed read is retried. A second look
        that finds nothing either (a wake-up for kinds nobody here follows) is not repeated."""
        if tenant in self._retried:
            self._retried.discard(tenant)
            return
        if tenant not in self._retrying:
            self._retrying.add(tenant)
            asyncio.get_running_loop().call_later(RETRY_SECONDS, self._retry, tenant)

    def _retry(self, tenant: str) -> None:
        self._retrying.discard(tenant)
        if tenant in self._cursors:
            self._retried.add(tenant)
            self._wake_tenants([tenant])

    async def _deliver_tenant(self, tenant_id: str) -> bool:
        """Offer what the tenant's log holds past the cursor; whether anything new was there."""
        kinds = sorted({kind for (tenant, kind) in self._topics if tenant == tenant_id})
        if not kinds:
            return True
        readers = self._readers(tenant_id)
        found = False
        try:
            while tenant_id in self._cursors:
                cursor = self._cursors[tenant_id]
                changes, upto = await log.page(readers.tenant, tenant_id, after=cursor, limit=READ_PAGE, kinds=kinds)
                if upto == cursor:
                    break
                found = True
                await self._offer_page(tenant_id, kinds, changes, upto, readers)
        finally:
            await readers.finish()
        return found

    async def _offer_page(self, tenant_id: str, kinds: list[str], changes: list[log.Change], upto: int,
                          readers: _Readers) -> None:
        """Offer a page of the tenant's log to its live subscribers, then move its cursor to `upto`."""
        deliveries = await FETCH(readers, changes)
        if tenant_id not in self._cursors:
            return
        for kind in kinds:
            subscribers = list(self._topics.get((tenant_id, kind), ()))
            mine = [d for d in deliveries if d.kind == kind]
            if mine and subscribers:
                await self._offer(readers.tenant, mine, subscribers)
        self._cursors[tenant_id] = max(self._cursors.get(tenant_id, upto), upto)

    def _readers(self, tenant_id: str) -> _Readers:
        return _Readers(tenant_transaction(self.engine, tenant_id), lambda: management_transaction(self.engine))

    async def replay(self, subscription: Subscription, after: int) -> tuple[list[Delivery], int]:
        """What `subscription` may see of its tenant's log past `after` (a page), and how far that read."""
        readers = self._readers(subscription.tenant_id)
        try:
            changes, upto = await log.page(readers.tenant, subscription.tenant_id, after=after,
                                           kinds=[subscription.kind], limit=REPLAY_PAGE)
            deliveries = await FETCH(readers, changes)
            chosen = [c for d in deliveries for c in [await self._choose(readers.tenant, subscription, d)]
                      if c is not None]
        finally:
            await readers.finish()
        return chosen, upto

    async def _choose(self, db: Executor, subscription: Subscription, delivery: Delivery) -> Delivery | None:
        visible = await _visibility(db, [delivery], [subscription])
        if not subscription.permitted or not _sees(subscription, delivery, visible):
            return None
        return subscription.select(delivery)

    async def _offer(self, db: Executor, deliveries: list[Delivery], subscribers: list[Subscription]) -> None:
        """Each delivery to each subscriber whose rights (as they are now) cover it."""
        visible = await _visibility(db, deliveries, subscribers)
        delivered: Counter[str] = Counter()
        for delivery in deliveries:
            for subscription in subscribers:
                if not subscription.permitted or not _sees(subscription, delivery, visible):
                    continue
                chosen = subscription.select(delivery)
                if chosen is not None:
                    subscription.offer(chosen)
                    delivered[subscription.session.tenant_id] += 1
        for tenant, n in delivered.items():
            self.counted(tenant, n)

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
                    log_.exception("realtime: checking a session again failed; it ends")
                    session.end("internal error")


def _caller(subscription: Subscription) -> tuple[str, str, str]:
    """(tenant, actor type, actor id): whose share of the tenant's subscriptions this one is."""
    actor = subscription.session.routed.actor
    return subscription.tenant_id, actor.type, str(actor.id)


def _sees(subscription: Subscription, delivery: Delivery, visible: dict[Scope, set[int]]) -> bool:
    if delivery.kind == "copyjob":  # only the one who asked for the job hears of it
        return bool(delivery.value[1] == subscription.routed.principal.user_id)
    if delivery.kind not in log.DEVICE_KINDS:
        return True  # the tenant's own management-plane news (tenants of its subtree): the permission decides
    scope = subscription.routed.scope
    if scope.unrestricted:
        return True
    if delivery.device_id is None:
        return False  # e.g. a deleted device: only unrestricted subscribers hear of it
    if scope.device_id is not None:
        return delivery.device_id == scope.device_id
    return delivery.device_id in visible.get(scope, set())


async def _visibility(db: Executor, deliveries: Sequence[Delivery],
                      subscribers: Sequence[Subscription]) -> dict[Scope, set[int]]:
    """For each group scope among the subscribers, which of the deliveries' devices it covers (one query each)."""
    visible: dict[Scope, set[int]] = {}
    device_ids = sorted({d.device_id for d in deliveries if d.device_id is not None})
    for scope in {s.routed.scope for s in subscribers}:
        if scope.group_ids is not None and device_ids:
            rows = await db.execute(select(devices.c.id).where(devices.c.id.in_(device_ids),
                                                               scope.devices(devices.c.id)))
            visible[scope] = {r.id for r in rows}
    return visible


class _Readers(Readers):
    async def finish(self) -> None:
        await cast(Transaction, self.tenant).finish(commit=False)
        if self._opened is not None:
            await cast(Transaction, self._opened).finish(commit=False)
