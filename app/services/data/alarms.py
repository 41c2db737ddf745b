"""Alarms: one open alarm per device and type; raising it again counts instead of duplicating.

Status moves ACTIVE → ACKNOWLEDGED → CLEARED (or straight to CLEARED); nothing leaves
CLEARED. A cleared alarm frees its device+type, so the next raise opens a new alarm.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.access.scope import Scope
from app.db.transaction import Executor
from app.errors import Forbidden, InvalidInput, NotFound
from app.models.tenant import alarms
from app.services.data.timeseries import check_text
from app.services.inventory.devices import require_devices, require_id
from app.services.inventory.relations import Keys, keyed
from app.services.pagination import Page, build_page, decode_int_cursor, page_size
from app.services.rows import to_record

SEVERITIES = ("CRITICAL", "MAJOR", "MINOR", "WARNING")
STATUSES = ("ACTIVE", "ACKNOWLEDGED", "CLEARED")
TRANSITIONS = {"ACTIVE": {"ACKNOWLEDGED", "CLEARED"}, "ACKNOWLEDGED": {"CLEARED"}, "CLEARED": set[str]()}
COLUMNS = (alarms.c.id, alarms.c.device_id, alarms.c.type, alarms.c.severity, alarms.c.status, alarms.c.text,
           alarms.c.count, alarms.c.first_raised_at, alarms.c.last_raised_at, alarms.c.updated_at)


@dataclass(frozen=True)
class AlarmRecord:
    id: int
    device_id: int
    type: str
    severity: str
    status: str
    text: str
    count: int
    first_raised_at: datetime
    last_raised_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class AlarmFilter:
    device_id: str | None = None
    status: Sequence[str] | None = None
    severity: Sequence[str] | None = None
    type: str | None = None


async def raise_alarm(db: Executor, scope: Scope, *, device_id: str, type: str, severity: str,
                      text_: str) -> AlarmRecord:
    key = require_id(device_id, "device")
    if severity not in SEVERITIES:
        raise InvalidInput(f"severity must be one of {', '.join(SEVERITIES)}", field="severity")
    if scope.device_id is not None and key != scope.device_id:
        raise Forbidden("a device may only raise its own alarms")
    await require_devices(db, scope, [key])
    stmt = pg_insert(alarms).values(device_id=key, type=check_text(type, "type"), severity=severity,
                                    text=check_text(text_, "text", 2000), first_raised_at=func.now(),
                                    last_raised_at=func.now(), updated_at=func.now())
    # Race-free de-duplication: the partial unique index admits one open alarm per device+type. The
    # times come from VALUES (`excluded`): Citus refuses now() in DO UPDATE SET on distributed tables.
    stmt = stmt.on_conflict_do_update(
        index_elements=[alarms.c.device_id, alarms.c.type],
        index_where=text("status <> 'CLEARED'"),
        set_={"count": alarms.c.count + 1, "last_raised_at": stmt.excluded.last_raised_at,
              "updated_at": stmt.excluded.updated_at, "severity": stmt.excluded.severity,
              "text": stmt.excluded.text},
    )
    row = (await db.execute(stmt.returning(*COLUMNS))).one()
    return to_record(AlarmRecord, row)


async def update_alarm_status(db: Executor, scope: Scope, alarm_id: str, status: str) -> AlarmRecord:
    key = require_id(alarm_id, "alarm")
    if scope.device_id is not None:
        raise Forbidden("a device cannot change alarm status")
    row = (await db.execute(select(alarms.c.status).where(alarms.c.id == key, scope.devices(alarms.c.device_id))
                            .with_for_update())).first()
    if row is None:
        raise NotFound(f"alarm {alarm_id} not found")
    if status not in TRANSITIONS[row.status]:
        raise InvalidInput(f"an alarm cannot go from {row.status} to {status}", field="status",
                           allowed=sorted(TRANSITIONS[row.status]))
    updated = (await db.execute(update(alarms).where(alarms.c.id == key)
                                .values(status=status, updated_at=func.now()).returning(*COLUMNS))).one()
    return to_record(AlarmRecord, updated)


def _filtered(scope: Scope, f: AlarmFilter | None):  # type: ignore[no-untyped-def]
    stmt = select(*COLUMNS).where(scope.devices(alarms.c.device_id))
    if f is None:
        return stmt
    if f.device_id is not None:
        stmt = stmt.where(alarms.c.device_id == require_id(f.device_id, "device"))
    if f.status:
        stmt = stmt.where(alarms.c.status.in_(list(f.status)))
    if f.severity:
        stmt = stmt.where(alarms.c.severity.in_(list(f.severity)))
    if f.type is not None:
        stmt = stmt.where(alarms.c.type == f.type)
    return stmt


async def list_alarms(db: Executor, scope: Scope, *, filter: AlarmFilter | None, first: int | None,
                      after: str | None, cap: int) -> Page[AlarmRecord]:
    stmt, size = alarm_page(scope, filter=filter, first=first, after=after, cap=cap)
    rows = (await db.execute(stmt)).all()
    return build_page([to_record(AlarmRecord, r) for r in rows], size, lambda a: a.id)


def alarm_page(scope: Scope, *, filter: AlarmFilter | None, first: int | None, after: str | None,
               cap: int) -> tuple[Select[Any], int]:
    """The checked page statement (size + 1 rows by id) and the page size: listed here, or
    compiled into a read's JSON (app.graphql.engine.compiled)."""
    size = page_size(first, cap)
    stmt = _filtered(scope, filter)
    cursor = decode_int_cursor(after)
    if cursor is not None:
        stmt = stmt.where(alarms.c.id > cursor)
    return stmt.order_by(alarms.c.id).limit(size + 1), size


def alarms_statement(scope: Scope, device_keys: Keys, *, status: tuple[str, ...], limit: int) -> Select[Any]:
    """Up to `limit` alarms per device (in scope, of these statuses; newest first): for a list of
    devices ranked in one query (the loaders), for the enclosing row's device a LIMIT (the
    compiled read path)."""
    where = [keyed(alarms.c.device_id, device_keys), scope.devices(alarms.c.device_id)]
    if status:
        where.append(alarms.c.status.in_(status))
    if isinstance(device_keys, ColumnElement):
        return select(*COLUMNS).where(*where).order_by(alarms.c.id.desc()).limit(limit)
    ranked = (select(*COLUMNS, func.row_number().over(partition_by=alarms.c.device_id, order_by=alarms.c.id.desc())
                     .label("rank")).where(*where).subquery())
    return (select(*(ranked.c[c.name] for c in COLUMNS)).where(ranked.c.rank <= limit)
            .order_by(ranked.c.device_id, ranked.c.id.desc()))


async def alarms_of_devices(db: Executor, scope: Scope, device_ids: Sequence[int], *, status: tuple[str, ...],
                            limit: int) -> dict[int, list[AlarmRecord]]:
    """Up to `limit` alarms per device (newest first), for many devices in one query."""
    out: dict[int, list[AlarmRecord]] = defaultdict(list)
    for row in (await db.execute(alarms_statement(scope, device_ids, status=status, limit=limit))).all():
        out[row.device_id].append(to_record(AlarmRecord, row))
    return out


async def clear_of_type(db: Executor, device_id: int, type_: str) -> AlarmRecord | None:
    """The device's open alarm of this type, cleared (by the system: a condition that ended)."""
    row = (await db.execute(update(alarms).where(alarms.c.device_id == device_id, alarms.c.type == type_,
                                                 alarms.c.status != "CLEARED")
                            .values(status="CLEARED", updated_at=func.now()).returning(*COLUMNS))).first()
    return to_record(AlarmRecord, row) if row is not None else None
