"""Reading a tenant's change log (written by app.runtime.announcements; positions: migration t0007).

A position travels as `<tenant id>:<n>` (GraphQL's ChangePosition): opaque to clients, but a
position of another tenant's log is recognised and refused instead of silently meaning something
else here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import delete, func, select, text, update

from app.access.principal import Routed
from app.access.scope import Scope
from app.auth.roles import DEVICES_READ, TENANT_ADMIN
from app.db.transaction import Executor
from app.db.wakes import DURABLE_READS
from app.errors import Forbidden, InvalidInput
from app.ids import encode
from app.models.tenant import change_head, changes, devices

# GraphQL's ChangeType ↔ the log's kinds.
TYPES = {"DEVICE": "device", "ALARM": "alarm", "EVENT": "event", "OPERATION": "operation",
         "MEASUREMENT_BATCH": "measurement", "COPY_JOB": "copyjob", "TENANT": "tenant", "SHARE": "share"}
KINDS = {kind: name for name, kind in TYPES.items()}
DEVICE_KINDS = frozenset({"device", "alarm", "event", "operation", "measurement"})


@dataclass(frozen=True)
class Change:
    tenant_id: str
    position: int
    at: datetime
    kind: str
    op: str
    device_id: int | None
    body: dict[str, Any]

    @property
    def key(self) -> str:
        return format_position(self.tenant_id, self.position)


@dataclass(frozen=True)
class Head:
    last: int  # the newest position
    floor: int  # the last position retention removed: readable are floor+1 … last


class PositionExpired(InvalidInput):
    """A position older than the tenant's retention keeps (`extensions.oldestPosition` names the
    oldest one still readable)."""


_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() takes "¹" and "⑧"


def format_position(tenant_id: str, position: int) -> str:
    return f"{tenant_id}:{position}"


def parse_position(value: str, tenant_id: str, field: str = "after") -> int:
    """A ChangePosition of `tenant_id`'s log as its number; anything else is INVALID_INPUT."""
    owner, sep, number = value.rpartition(":")
    if not sep or not _DIGITS.fullmatch(number) or not owner:
        raise InvalidInput("not a change position (they look like `t123456789:42`)", field=field)
    if owner != tenant_id:
        raise InvalidInput("this position belongs to another tenant's change log", field=field)
    return int(number)


async def head(db: Executor) -> Head:
    row = (await db.execute(select(change_head.c.last, change_head.c.floor))).one()
    return Head(row.last, row.floor)


async def checked_after(db: Executor, tenant_id: str, after: str | None, field: str = "after") -> int | None:
    """Where a reader resumes: None (from now on) or a position that is readable here, the head
    itself included (nothing missed). A position in the future or past retention is refused."""
    if after is None:
        return None
    n = parse_position(after, tenant_id, field)
    now = await head(db)
    if n > now.last:
        raise InvalidInput(f"position {after} is ahead of this tenant's log (its newest is "
                           f"{format_position(tenant_id, now.last)})", field=field)
    if n < now.floor:
        oldest = format_position(tenant_id, now.floor + 1)
        raise PositionExpired(f"position {after} is older than this tenant's log keeps: the oldest is {oldest}",
                              field=field, oldestPosition=oldest)
    return n


async def read(db: Executor, tenant_id: str, *, after: int, limit: int, kinds: Sequence[str] | None = None,
               upto: int | None = None) -> list[Change]:
    """Entries after `after` (up to `upto`), in position order, at most `limit`, optionally of some kinds only."""
    statement = select(changes).where(changes.c.position > after).order_by(changes.c.position).limit(limit)
    if upto is not None:
        statement = statement.where(changes.c.position <= upto)
    if kinds is not None:
        statement = statement.where(changes.c.kind.in_(list(kinds)))
    rows = (await db.execute(statement)).all()
    if rows:
        await durable_reads(db)
    return [Change(tenant_id, r.position, r.logged_at, r.kind, r.op, r.device_id, r.body) for r in rows]


async def durable_reads(db: Executor) -> None:
    """Make what was just read from a log durable before the reader hands it on: a request's
    grouped commit is visible before its flush (app.db.wakes), and a change a crash took back
    would leave its position to the next writer, so a reader resuming after it would skip that."""
    await db.execute(text(DURABLE_READS))


# --- reading with the caller's rights --------------------------------------------------------------

def readable_kinds(routed: Routed, wanted: Sequence[str] | None = None) -> list[str]:
    """The kinds of change `routed` may read (of `wanted`, default all), decided as subscriptions
    decide: device data needs devices:read and data access (then its group scope applies); the
    tenant's management-plane news (subtree tenants, copy jobs into it, shares) needs tenant:admin."""
    kinds = list(wanted) if wanted is not None else list(KINDS)
    allowed: set[str] = set()
    if DEVICES_READ in routed.permissions and routed.has_data_access:
        allowed |= DEVICE_KINDS
    if TENANT_ADMIN in routed.permissions:
        allowed |= {"tenant", "copyjob", "share"}
    refused = [KINDS[k] for k in kinds if k not in allowed]
    if refused:
        raise Forbidden(f"you may not read changes of type {', '.join(refused)} in this tenant")
    return kinds


async def read_visible(db: Executor, routed: Routed, *, after: int, limit: int,
                       kinds: Sequence[str]) -> tuple[list[Change], int]:
    """Up to `limit` entries of `kinds` past `after` that `routed` may see (its group scope, a
    device token's own device), and the position the read covers (its last entry scanned, or the
    head as it was read): the next read starts there, so nothing is skipped or read twice."""
    last = (await head(db)).last
    out: list[Change] = []
    cursor = after
    while len(out) < limit and cursor < last:
        page = await read(db, routed.tenant.id, after=cursor, limit=limit, kinds=kinds, upto=last)
        if not page:
            cursor = last
            break
        visible = await _visible_devices(db, routed.scope, page)
        for change in page:
            if len(out) == limit:
                break
            cursor = change.position
            if change.kind not in DEVICE_KINDS or visible is None or change.device_id in visible:
                out.append(change)
        if len(page) < limit and len(out) < limit:
            cursor = last
    return out, cursor


async def _visible_devices(db: Executor, scope: Scope, page: Sequence[Change]) -> set[int | None] | None:
    if scope.unrestricted:
        return None
    ids = sorted({c.device_id for c in page if c.device_id is not None})
    if scope.device_id is not None:
        return {scope.device_id}
    if not ids:
        return set()
    rows = await db.execute(select(devices.c.id).where(devices.c.id.in_(ids), scope.devices(devices.c.id)))
    return {r.id for r in rows}


# How a change is shown outside (the `changes` query, consumers, webhooks): ids as the API's global ids.
_NODES = {"device": "Device", "alarm": "Alarm", "event": "Event", "operation": "Operation"}


def public(change: Change) -> dict[str, Any]:
    """The change's data as clients see it: its row with global ids (`id`, `deviceId`, …), a
    measurement batch's device, time range and count, a tenant's or copy job's id."""
    body = change.body

    def here(node: str, local: int) -> str:  # the change's own tenant: webhooks render outside any request
        return encode(node, change.tenant_id, local)

    if change.kind == "measurement":
        return {"deviceId": here("Device", change.device_id or 0), "from": body.get("lo"), "to": body.get("hi"),
                "count": body.get("n")}
    out: dict[str, Any] = {}
    node = _NODES.get(change.kind)
    for key, value in body.items():
        if key == "id" and node is not None:
            out["id"] = here(node, value)
        elif key == "device_id" and value is not None:
            out["deviceId"] = here("Device", value)
        elif key == "parent_id" and change.kind == "device" and value is not None:
            out["parentId"] = here("Device", value)
        else:
            out[_camel(key)] = value
    return out


def _camel(name: str) -> str:
    head_, *rest = name.split("_")
    return head_ + "".join(part.title() for part in rest)


DEFAULT_RETENTION_DAYS = 7


async def prune(db: Executor, cutoff: datetime, *, batch_size: int) -> int:
    """Remove the oldest entries committed before `cutoff`, as a prefix of positions (a long
    transaction's entry can be older than the one before it: it stays until that one goes), and
    move the floor with them, so a reader resuming below it is told instead of silently skipping."""
    first_kept = (await db.execute(select(func.min(changes.c.position)).where(changes.c.logged_at >= cutoff))).scalar()
    now = await head(db)
    upto = min(now.last, (first_kept - 1) if first_kept is not None else now.last, now.floor + batch_size)
    if upto <= now.floor:
        return 0
    result = await db.execute(delete(changes).where(changes.c.position <= upto))
    await db.execute(update(change_head).where(change_head.c.id == 1).values(floor=upto))
    return int(result.rowcount)  # type: ignore[attr-defined]


# The head and the next entries in one statement (`page`, bound; `page_sql`, literal values).
_PAGE_SQL = ("SELECT h.last, c.position, c.logged_at, c.kind, c.op, c.device_id, c.body FROM change_head h "
             "LEFT JOIN LATERAL (SELECT * FROM changes WHERE position > {after} AND position <= h.last "
             "AND kind IN ({kinds}) ORDER BY position LIMIT {limit}) c ON true WHERE h.id = 1 ORDER BY c.position")
_PAGE = text(_PAGE_SQL.format(after=":after", kinds="SELECT unnest(CAST(:kinds AS text[]))", limit=":limit"))


async def page(db: Executor, tenant_id: str, *, after: int, limit: int,
               kinds: Sequence[str]) -> tuple[list[Change], int]:
    """Entries of `kinds` past `after` and the position this read covers — the head as the same
    statement read it (every entry up to it is committed and visible: positions are gap-free in
    commit order), or the last entry when the page is full — in ONE round trip: the hub reads a
    tenant's log on every wake-up, a thousand times a second under load."""
    rows = (await db.execute(_PAGE, {"after": after, "limit": limit, "kinds": list(kinds)})).all()
    last = rows[0].last if rows else after
    found = [Change(tenant_id, r.position, r.logged_at, r.kind, r.op, r.device_id, r.body)
             for r in rows if r.position is not None]
    if found:
        await durable_reads(db)
    if len(found) == limit:
        return found, found[-1].position
    return found, max(after, last)


def page_sql(after: int, limit: int, kinds: Sequence[str]) -> str:
    """`page` as complete SQL text (values inlined: integers, and kinds from KINDS only), for the hub's
    one-round-trip read of many tenants (app.access.acting.read_as_tenants)."""
    names = ",".join(f"'{k}'" for k in kinds if k in KINDS)
    return _PAGE_SQL.format(after=int(after), kinds=names, limit=int(limit))


def page_of(tenant_id: str, rows: Sequence[tuple[bytes | None, ...]], after: int,
            limit: int) -> tuple[list[Change], int]:
    """`page`'s answer from `page_sql`'s rows (each value's text)."""
    last = int(rows[0][0] or 0) if rows else after
    found = [Change(tenant_id, int(r[1]), datetime.fromisoformat(r[2].decode()),  # type: ignore[union-attr]
                    r[3].decode(), r[4].decode(), int(r[5]) if r[5] is not None else None,  # type: ignore[union-attr]
                    orjson.loads(r[6]))  # type: ignore[arg-type]
             for r in rows if r[1] is not None]
    if len(found) == limit:
        return found, found[-1].position
    return found, max(after, last)
