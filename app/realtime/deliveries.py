"""What subscribers receive: a change's rows, fetched once per (tenant, kind) under the tenant's
role from the notification's keys (or taken from the payload when the rows travelled in it), as
`Delivery` objects shared by every subscriber they reach."""

from __future__ import annotations

import functools
import typing
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import ARRAY, BigInteger, any_, bindparam, select, text

from app.access.scope import Scope
from app.db.transaction import Executor
from app.models.tenant import alarms, events, measurements, operations
from app.services.data import alarms as alarm_service
from app.services.data import events as event_service
from app.services.data import measurements as measurement_service
from app.services.data import operations as operation_service
from app.services.inventory import devices as device_service
from app.services.rows import to_record


@dataclass(eq=False)
class Delivery:
    """One change as subscribers receive it: the fetched record(s), shared by every subscriber it
    reaches, so what is derived from it (its GraphQL object, its rendered JSON) is made once."""

    kind: str
    op: str
    value: Any
    device_id: int | None = None  # for rights: the device the change belongs to
    cache: dict[object, Any] = field(default_factory=dict)

    def shared(self, make: Callable[[Delivery], T]) -> T:
        """`make(self)`, made once for every subscriber of this delivery (keyed by `make`)."""
        found = self.cache.get(make, _MISSING)
        if found is _MISSING:
            found = self.cache[make] = make(self)
        return cast(T, found)


_MISSING = object()
T = TypeVar("T")
R = TypeVar("R")
def _ids(notes: Iterable[dict[str, Any]]) -> tuple[list[int], dict[int, str]]:
    ops: dict[int, str] = {}
    for note in notes:
        for key in note.get("ids", ()):
            ops[int(key)] = note["o"]  # the latest operation wins (a raise then a status change)
    return sorted(ops), ops


@functools.cache
def _datetime_fields(record: Any) -> frozenset[str]:
    hints = typing.get_type_hints(record)
    return frozenset(name for name, hint in hints.items() if hint is datetime or hint == (datetime | None))


def _from_json(record: type[R], row: dict[str, Any]) -> R:
    """A record as the writer announced it (app.runtime.announcements sends dataclasses as JSON)."""
    for name in _datetime_fields(cast(Any, record)):
        value = row.get(name)
        if isinstance(value, str):
            row[name] = datetime.fromisoformat(value)
    return record(**row)


def _by_id(table: Any, columns: Any) -> Any:
    """Rows by id, built once (SQLAlchemy then compiles it once)."""
    return select(*columns).where(table.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger)))).order_by(table.c.id)


async def _fetch_rows(db: Executor, notes: list[dict[str, Any]], kind: str, statement: Any,
                      record: type[Any]) -> list[Delivery]:
    """What changed, in announcement order: the rows the payloads carry, else read back by id."""
    out = [Delivery(kind, note["o"], r, device_id=getattr(r, "device_id", None))
           for note in notes for r in (_from_json(record, row) for row in note.get("rows", ()))]
    ids, ops = _ids(notes)
    if ids:
        rows = (await db.execute(statement, {"ids": ids})).all()
        out += [Delivery(kind, ops[r.id], to_record(record, r), device_id=r.device_id) for r in rows]
    return out


_ALARMS = _by_id(alarms, alarm_service.COLUMNS)
_EVENTS = _by_id(events, event_service.COLUMNS)
_OPERATIONS = _by_id(operations, operation_service.COLUMNS)


async def _fetch_alarms(db: Executor, notes: list[dict[str, Any]]) -> list[Delivery]:
    return await _fetch_rows(db, notes, "alarm", _ALARMS, alarm_service.AlarmRecord)


async def _fetch_events(db: Executor, notes: list[dict[str, Any]]) -> list[Delivery]:
    return await _fetch_rows(db, notes, "event", _EVENTS, event_service.EventRecord)


async def _fetch_operations(db: Executor, notes: list[dict[str, Any]]) -> list[Delivery]:
    return await _fetch_rows(db, notes, "operation", _OPERATIONS, operation_service.OperationRecord)


async def _fetch_devices(db: Executor, notes: list[dict[str, Any]]) -> list[Delivery]:
    out = []
    for note in notes:
        for row in note.get("rows", ()):
            record = _from_json(device_service.DeviceRecord, row)
            out.append(Delivery("device", note["o"], record, device_id=record.id))
    ids, ops = _ids(notes)
    found = await device_service.devices_by_ids(db, Scope(), ids) if ids else {}
    # A deleted device's delivery carries its id alone; no scope can place it any more.
    out += [Delivery("device", ops[i], found[i], device_id=i) if i in found else Delivery("device", ops[i], i)
            for i in ids if i in found or ops[i] == "DELETED"]
    return out


async def _fetch_measurements(db: Executor, notes: list[dict[str, Any]]) -> list[Delivery]:
    """The rows each announcing transaction wrote (by xmin), per device, in one delivery per device
    and transaction: the subscription's list."""
    out: list[Delivery] = []
    for note in notes:
        rows = (await db.execute(
            select(*measurement_service.COLUMNS).where(
                measurements.c.device_id.in_(note["d"]),
                measurements.c.time.between(datetime.fromisoformat(note["lo"]), datetime.fromisoformat(note["hi"])),
                text("measurements.xmin = CAST(CAST(:xid AS text) AS xid)"))
            .order_by(measurements.c.device_id, measurements.c.time, measurements.c.id),
            {"xid": note.get("w", note["x"])})).all()  # w: the worker's xid on Citus
        per_device: dict[int, list[Any]] = defaultdict(list)
        for row in rows:
            per_device[row.device_id].append(to_record(measurement_service.MeasurementRecord, row))
        out.extend(Delivery("measurement", "created", records, device_id=device) for device, records in
                   per_device.items())
    return out


FETCH = {"alarm": _fetch_alarms, "event": _fetch_events, "operation": _fetch_operations,
          "device": _fetch_devices, "measurement": _fetch_measurements}
