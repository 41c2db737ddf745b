"""A realtime connection's side of the hub: its Session (credentials, subscriptions, rechecks) and
each Subscription's bounded queue. app.realtime.hub fans changes out to them."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from app.access.gate import AccessGate
from app.access.principal import Routed
from app.errors import AppError, LimitExceeded, Unavailable
from app.realtime.deliveries import Delivery


class Hub(Protocol):
    """What a session needs of the hub that holds it (app.realtime.hub.Hub)."""

    gate: AccessGate
    per_connection: int
    queue_size: int
    sessions: set[Session]

    def next_periodic_check(self) -> float: ...

    async def add_subscription(self, subscription: Subscription, after: str | None) -> None: ...

    def remove_subscription(self, subscription: Subscription) -> None: ...

    def cursor(self, tenant_id: str) -> int: ...

    async def replay(self, subscription: Subscription, after: int) -> tuple[list[Delivery], int]: ...


Select = Callable[[Delivery], Delivery | None]


class Subscription:
    """One subscription's place in its tenant's change log; iterate it for its deliveries.

    Live, it is handed what the hub reads from the log as it is committed (a bounded queue). It is
    *catching up* when it resumed `after:` a position behind the hub, or when its consumer fell so
    far behind that the queue filled: then it reads the log itself, page by page, from the last
    position it handed out, and goes live again at the exact position the hub has reached — so a
    slow or reconnecting consumer gets every change once, in order, and none is ever dropped."""

    def __init__(self, session: Session, *, tenant_id: str, kind: str, needs: tuple[str, ...], data: bool,
                 select: Select, capacity: int) -> None:
        self.session = session
        self.tenant_id = tenant_id  # whose log it reads
        self.kind = kind
        self.needs = needs  # any one of these permissions keeps it alive
        self.data = data  # needs data access (parentAccess FULL for parent-level callers)
        self.select = select
        self.capacity = capacity
        self._items: deque[Delivery] = deque()
        self._backlog: deque[Delivery] = deque()
        self._wake = asyncio.Event()
        self.handed_out = 0  # the position of the last delivery handed out (or where it resumed)
        self.read_upto = 0  # catching up: the log is read up to here
        self.catching_up = False
        self.closed = False
        self.permitted = self.allowed(session.routed)  # kept current by the session's rechecks

    @property
    def routed(self) -> Routed:
        return self.session.routed

    def allowed(self, routed: Routed) -> bool:
        if self.data and not routed.has_data_access:
            return False
        return not self.needs or any(p in routed.permissions for p in self.needs)

    def start(self, position: int, live_from: int) -> None:
        """Begin after `position`; the hub has offered everything up to `live_from` already."""
        self.handed_out = self.read_upto = position
        self.catching_up = position < live_from

    def offer(self, delivery: Delivery) -> None:
        if self.closed or self.catching_up or delivery.position <= self.read_upto:
            return  # catching up reads it from the log; at or below read_upto it was read already
        if len(self._items) >= self.capacity:
            # The consumer fell behind: what is queued is read again from the log, in order.
            self._items.clear()
            self.catching_up, self.read_upto = True, self.handed_out
            self._backlog.clear()
        else:
            self._items.append(delivery)
            self.read_upto = delivery.position
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    def __aiter__(self) -> Subscription:
        return self

    async def _catch_up(self) -> None:
        deliveries, upto = await self.session.hub.replay(self, self.read_upto)
        if self.closed or not self.catching_up:
            return
        self._backlog.extend(deliveries)
        self.read_upto = upto
        if upto >= self.session.hub.cursor(self.tenant_id):
            self.catching_up = False  # no await since the check: the hub's next offer follows on

    async def __anext__(self) -> Delivery:
        while not self._backlog and not self._items:
            if self.closed:
                raise StopAsyncIteration
            if self.catching_up:
                await self._catch_up()
                continue
            self._wake.clear()
            await self._wake.wait()
        await self.session.cleared.wait()  # held while an access change is checked (Session.hold)
        if self.closed:
            raise StopAsyncIteration
        delivery = self._backlog.popleft() if self._backlog else self._items.popleft()
        self.handed_out = delivery.position
        return delivery


class Session:
    """One connection's credentials and subscriptions (a WebSocket, or one SSE stream)."""

    def __init__(self, hub: Hub, *, authorization: str | None, tenant_header: str | None, routed: Routed,
                 expires_at: int | None, on_end: Callable[[str], None], client: str | None = None) -> None:
        self.hub = hub
        self.client = client  # the peer's address, as a request's: login throttling and audit
        self.authorization = authorization
        self.tenant_header = tenant_header
        self.routed = routed
        self.rights = _rights(routed)
        self.expires_at = expires_at
        self.on_end = on_end
        self.subscriptions: dict[str, Subscription] = {}
        self.next_check = hub.next_periodic_check()
        self.ended: str | None = None
        # Set while nothing about this session's access is in doubt. An access notification naming it
        # clears it at once, before any later change is delivered, until the gate has answered again:
        # a removed member or revoked token gets no event committed after the change.
        self.cleared = asyncio.Event()
        self.cleared.set()
        self._holds = 0  # a hold during a recheck waits for the next one
        self._opening = 0

    @property
    def tenant_id(self) -> str:
        return self.routed.tenant.id

    async def open(self, key: str, *, kind: str, needs: tuple[str, ...], data: bool, select: Select,
                   tenant_id: str | None = None, after: str | None = None) -> Subscription:
        if len(self.subscriptions) + self._opening >= self.hub.per_connection:
            raise LimitExceeded(f"at most {self.hub.per_connection} subscriptions per connection",
                                limit="subscriptionsPerConnection", max=self.hub.per_connection)
        subscription = Subscription(self, tenant_id=tenant_id or self.tenant_id, kind=kind, needs=needs, data=data,
                                    select=select, capacity=self.hub.queue_size)
        self._opening += 1  # counted while the log is asked where it starts
        try:
            await self.hub.add_subscription(subscription, after)
        finally:
            self._opening -= 1
        if self.ended is not None:  # ended while the log was asked where to start
            self.hub.remove_subscription(subscription)
            raise Unavailable(f"the connection ended: {self.ended}")
        self.subscriptions[key] = subscription
        return subscription

    def close(self, key: str) -> None:
        subscription = self.subscriptions.pop(key, None)
        if subscription is not None:
            self.hub.remove_subscription(subscription)

    def end(self, reason: str) -> None:
        """Close every subscription and tell the transport (once)."""
        if self.ended is not None:
            return
        self.ended = reason
        for key in list(self.subscriptions):
            self.close(key)
        self.cleared.set()  # held consumers wake and find their subscriptions closed
        self.hub.sessions.discard(self)
        self.on_end(reason)

    def hold(self) -> None:
        self._holds += 1
        self.cleared.clear()

    def named_by(self, suspects: set[str]) -> bool:
        """Whether an access notification (`tenant:<id>`, `user:<id>`) speaks of this session."""
        return f"tenant:{self.tenant_id}" in suspects or f"user:{self.routed.principal.user_id}" in suspects

    async def recheck(self) -> None:
        """Ask the access gate again; end the session if it refuses, or if a subscription lost the
        permission it needs; otherwise carry on with the rights as they are now."""
        holds = self._holds
        try:
            await self._recheck()
        finally:
            if self._holds == holds or self.ended is not None:  # else a newer change waits its own check
                self.cleared.set()

    async def _recheck(self) -> None:
        try:
            routed, self.expires_at = await self.hub.gate.recheck(authorization=self.authorization,
                                                                  tenant_header=self.tenant_header)
        except AppError as exc:
            self.end(exc.message)
            return
        if routed.tenant.id != self.routed.tenant.id or any(not s.allowed(routed) for s in self.subscriptions.values()):
            self.end("your access changed")
            return
        self.routed, self.rights = routed, _rights(routed)
        for subscription in self.subscriptions.values():
            subscription.permitted = True  # every one was allowed just above
        self.next_check = self.hub.next_periodic_check()


def _rights(routed: Routed) -> tuple[object, ...]:
    """What an event's rendering may depend on: subscribers with equal rights share it."""
    return routed.tenant.id, routed.role, routed.scope, routed.permissions, routed.has_data_access
