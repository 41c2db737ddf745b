"""Named durable consumers of a tenant's change log (Notifications 2.0 style): a backend reads the
changes of its types past its acknowledged position, acknowledges up to the last one it handled,
and reads on from there after any crash or restart; lag is what it has not acknowledged yet."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select, update

from app.access.principal import Routed
from app.auth.roles import TENANT_ADMIN
from app.db.transaction import Executor
from app.errors import Conflict, InvalidInput, LimitExceeded, NotFound
from app.models.tenant import changes, event_consumers
from app.services.changes import log

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Consumer:
    tenant_id: str
    name: str
    kinds: tuple[str, ...]
    position: int
    created_at: datetime
    acknowledged_at: datetime | None


def _consumer(tenant_id: str, row: object) -> Consumer:
    r = row
    return Consumer(tenant_id, r.name, tuple(r.kinds), r.position, r.created_at,  # type: ignore[attr-defined]
                    r.acknowledged_at)  # type: ignore[attr-defined]


async def create(db: Executor, routed: Routed, *, name: str, kinds: Sequence[str] | None, cap: int) -> Consumer:
    """A consumer that starts at the log's head: it hears every change committed from now on."""
    routed.require(TENANT_ADMIN)
    if not _NAME.match(name):
        raise InvalidInput("a consumer name is 1-64 letters, digits, '_', '.', '-', starting with a letter or digit",
                           field="name")
    wanted = log.readable_kinds(routed, kinds)
    count = (await db.execute(select(func.count()).select_from(event_consumers))).scalar_one()
    if count >= cap:
        raise LimitExceeded(f"at most {cap} event consumers per tenant", limit="consumersPerTenant", max=cap)
    if (await db.execute(select(event_consumers.c.name).where(event_consumers.c.name == name))).first():
        raise Conflict(f"an event consumer named {name!r} exists already")
    start = (await log.head(db)).last
    row = (await db.execute(insert(event_consumers).values(
        name=name, kinds=wanted, position=start, created_by=f"{routed.actor.type}:{routed.actor.id}")
        .returning(*event_consumers.c))).one()
    return _consumer(routed.tenant.id, row)


async def find(db: Executor, routed: Routed, name: str) -> Consumer:
    row = (await db.execute(select(event_consumers).where(event_consumers.c.name == name))).first()
    if row is None:
        raise NotFound(f"no event consumer named {name!r}")
    consumer = _consumer(routed.tenant.id, row)
    log.readable_kinds(routed, consumer.kinds)  # reading it needs the rights its types need
    return consumer


async def listed(db: Executor, routed: Routed) -> list[Consumer]:
    routed.require(TENANT_ADMIN)
    rows = (await db.execute(select(event_consumers).order_by(event_consumers.c.name))).all()
    return [_consumer(routed.tenant.id, r) for r in rows]


async def pending(db: Executor, routed: Routed, consumer: Consumer, first: int) -> list[log.Change]:
    """The next changes it has not acknowledged (rights as they are now)."""
    found, _ = await log.read_visible(db, routed, after=consumer.position, limit=first, kinds=consumer.kinds)
    return found


async def lag(db: Executor, consumer: Consumer) -> int:
    """Changes of its types committed past its acknowledged position."""
    return int((await db.execute(select(func.count()).select_from(changes).where(
        changes.c.position > consumer.position, changes.c.kind.in_(list(consumer.kinds))))).scalar_one())


async def acknowledge(db: Executor, routed: Routed, name: str, up_to: str) -> Consumer:
    """Everything up to `up_to` is handled. Acknowledging backwards, or past the head, is refused."""
    consumer = await find(db, routed, name)
    position = log.parse_position(up_to, routed.tenant.id, "upTo")
    if position < consumer.position:
        raise InvalidInput(f"{name!r} has acknowledged up to {log.format_position(routed.tenant.id, consumer.position)}"
                           " already: acknowledgements only move forward", field="upTo")
    if position > (await log.head(db)).last:
        raise InvalidInput("this position is ahead of the tenant's log", field="upTo")
    row = (await db.execute(update(event_consumers).where(event_consumers.c.name == name)
                            .values(position=position, acknowledged_at=func.now())
                            .returning(*event_consumers.c))).one()
    return _consumer(routed.tenant.id, row)


async def remove(db: Executor, routed: Routed, name: str) -> bool:
    routed.require(TENANT_ADMIN)
    return bool((await db.execute(delete(event_consumers).where(event_consumers.c.name == name)
                                  .returning(event_consumers.c.name))).first())
