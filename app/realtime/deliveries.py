"""What subscribers receive: the changes of a tenant's log (app.services.changes.log) as
`Delivery` objects, made once per entry and shared by every subscriber they reach. Most entries
carry their row; a measurement batch's rows are read back under the tenant's role (by the writing
transaction's `xmin`), a copy job's and a tenant's from the registry."""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, cast
from uuid import UUID

from sqlalchemy import select, text

from app.db.transaction import Executor
from app.models.management import copy_jobs
from app.models.tenant import measurements
from app.services.changes.log import Change
from app.services.data import alarms as alarm_service
from app.services.data import events as event_service
from app.services.data import measurements as measurement_service
from app.services.data import operations as operation_service
from app.services.inventory import devices as device_service
from app.services.rows import to_record
from app.services.sharing import jobs
from app.tenancy.registry import TenantRecord, select_tenants


@dataclass(eq=False)
class Delivery:
    """One change as subscribers receive it: the fetched record(s), shared by every subscriber it
    reaches, so what is derived from it (its GraphQL object, its rendered JSON) is made once."""

    kind: str
    op: str
    value: Any
    device_id: int | None = None  # for rights: the device the change belongs to
    position: int = 0  # in its tenant's change log
    tenant_id: str = ""  # whose log
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
@functools.cache
def _datetime_fields(record: Any) -> frozenset[str]:
    hints = typing.get_type_hints(record)
    return frozenset(name for name, hint in hints.items() if hint is datetime or hint == (datetime | None))


def _from_json(record: type[R], row: dict[str, Any]) -> R:
    """A record as the writer logged it (app.runtime.announcements logs dataclasses as JSON)."""
    row = dict(row)
    for name in _datetime_fields(cast(Any, record)):
        value = row.get(name)
        if isinstance(value, str):
            row[name] = datetime.fromisoformat(value)
    return record(**row)


ROWS = {"alarm": alarm_service.AlarmRecord, "event": event_service.EventRecord,
        "operation": operation_service.OperationRecord, "device": device_service.DeviceRecord}


class Readers:
    """The transactions one batch of deliveries reads through, opened on first use: the log's
    tenant under its role, the registry (copy jobs, tenants) as the management plane."""

    def __init__(self, tenant: Executor, management: Callable[[], Executor]) -> None:
        self.tenant = tenant
        self._management = management
        self._opened: Executor | None = None

    @property
    def management(self) -> Executor:
        if self._opened is None:
            self._opened = self._management()
        return self._opened


async def deliveries(readers: Readers, entries: Iterable[Change]) -> list[Delivery]:
    """One delivery per entry, in position order (an entry whose subject is gone delivers nothing:
    a copy job or tenant no longer in the registry)."""
    out: list[Delivery] = []
    batches: list[Change] = []
    jobs_wanted: list[Change] = []
    tenants_wanted: list[Change] = []
    for c in entries:
        record = ROWS.get(c.kind)
        if record is not None and "id" in c.body and len(c.body) == 1:  # an id alone: a deleted device
            out.append(Delivery(c.kind, c.op, int(c.body["id"]), c.device_id, c.position, c.tenant_id))
        elif record is not None:
            out.append(Delivery(c.kind, c.op, _from_json(record, c.body), c.device_id, c.position, c.tenant_id))
        elif c.kind == "measurement":
            batches.append(c)
        elif c.kind == "copyjob":
            jobs_wanted.append(c)
        elif c.kind == "tenant":
            tenants_wanted.append(c)
    out += await _measurements(readers.tenant, batches)
    out += await _copy_jobs(readers.management, jobs_wanted) if jobs_wanted else []
    out += await _tenants(readers.management, tenants_wanted) if tenants_wanted else []
    out.sort(key=lambda d: d.position)
    return out


async def _measurements(db: Executor, batches: list[Change]) -> list[Delivery]:
    """The rows each logged batch wrote (its device, time range and transaction): the subscription's list."""
    out = []
    for c in batches:
        b = c.body
        rows = (await db.execute(
            select(*measurement_service.COLUMNS).where(
                measurements.c.device_id == c.device_id,
                measurements.c.time.between(datetime.fromisoformat(b["lo"]), datetime.fromisoformat(b["hi"])),
                text("measurements.xmin = CAST(CAST(:xid AS text) AS xid)"))
            .order_by(measurements.c.time, measurements.c.id),
            {"xid": b.get("w", b.get("x"))})).all()  # w: the worker's xid on Citus
        records = [to_record(measurement_service.MeasurementRecord, r) for r in rows]
        out.append(Delivery("measurement", c.op, records, c.device_id, c.position, c.tenant_id))
    return out


async def _copy_jobs(db: Executor, wanted: list[Change]) -> list[Delivery]:
    ids = list({UUID(c.body["job"]) for c in wanted})
    rows = (await db.execute(select(*jobs.JOB_COLUMNS, copy_jobs.c.requested_by).where(copy_jobs.c.id.in_(ids)))).all()
    found = {row.id: row for row in rows}
    out = []
    for c in wanted:
        row = found.get(UUID(c.body["job"]))
        if row is not None:  # the job as it is now, with who asked for it (only they hear of it)
            job = jobs.CopyJob(*tuple(row)[:-1])
            out.append(Delivery("copyjob", c.op, (job, row.requested_by), None, c.position, c.tenant_id))
    return out


async def _tenants(db: Executor, wanted: list[Change]) -> list[Delivery]:
    ids = list({c.body["id"] for c in wanted})
    rows = (await db.execute(select_tenants().where(text("id = ANY(:ids)")), {"ids": ids})).all()
    found = {r.id: TenantRecord.from_row(r) for r in rows}
    out = []
    for c in wanted:
        record = found.get(c.body["id"])
        if record is not None:
            op = "DELETED" if record.status == "DELETED" or c.op == "DELETE" else (
                "CREATED" if c.op == "INSERT" else "UPDATED")
            out.append(Delivery("tenant", op, record, None, c.position, c.tenant_id))
    return out
