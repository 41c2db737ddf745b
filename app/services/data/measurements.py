"""Measurements: bulk ingest by COPY, keyset-paged reads, and aggregation in SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, literal_column, select

from app.access.scope import Scope
from app.db.transaction import BulkExecutor
from app.errors import Forbidden, InvalidInput
from app.models.tenant import measurements
from app.services.data.timeseries import (
    check_range,
    check_text,
    check_time,
    check_value,
    time_page_statement,
    time_rows_page,
)
from app.services.inventory.devices import require_devices, require_id
from app.services.pagination import Page, page_size

MAX_BATCH = 5000
MAX_BUCKETS = 10_000
INTERVALS = {"MINUTE": timedelta(minutes=1), "HOUR": timedelta(hours=1), "DAY": timedelta(days=1)}
COLUMNS = (measurements.c.id, measurements.c.device_id, measurements.c.time, measurements.c.type,
           measurements.c.series, measurements.c.value, measurements.c.unit)


@dataclass(frozen=True)
class NewMeasurement:
    device_id: str
    time: datetime
    type: str
    series: str
    value: float
    unit: str | None = None


@dataclass(frozen=True)
class MeasurementRecord:
    id: int
    device_id: int
    time: datetime
    type: str
    series: str
    value: float
    unit: str | None


@dataclass(frozen=True)
class SeriesBucket:
    series: str
    bucket: datetime
    min: float
    max: float
    avg: float
    count: int
    sum: float


def _copy_text(value: str) -> str:
    """A text-format COPY field: backslash, tab, newline and carriage return escaped."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


async def create_measurements(db: BulkExecutor, scope: Scope, batch: Sequence[NewMeasurement]) -> int:
    """Validate the whole batch, then write it with one COPY in the request's transaction.

    Batches repeat the same few devices, types, series and units, so each distinct value is
    checked (and escaped) once; rows become COPY text directly (one write, no per-row await).
    """
    if not batch:
        return 0
    if len(batch) > MAX_BATCH:
        raise InvalidInput(f"at most {MAX_BATCH} measurements per call", field="input", cap=MAX_BATCH)
    devices: dict[str, int] = {}
    texts: dict[tuple[str, str], str] = {}

    def text_field(value: str, field: str, max_len: int = 100) -> str:
        key = (field, value)
        if key not in texts:
            texts[key] = _copy_text(check_text(value, field, max_len))
        return texts[key]

    lines = []
    for m in batch:
        device_id = devices.get(m.device_id)
        if device_id is None:
            device_id = devices[m.device_id] = require_id(m.device_id, "device")
        unit = "\\N" if m.unit is None else text_field(m.unit, "unit", 20)
        lines.append(f"{device_id}\t{check_time(m.time, 'time').isoformat()}\t{text_field(m.type, 'type')}\t"
                     f"{text_field(m.series, 'series')}\t{check_value(m.value)!r}\t{unit}\n")
    device_ids = set(devices.values())
    if scope.device_id is not None and device_ids != {scope.device_id}:
        raise Forbidden("a device may only send its own measurements")
    await require_devices(db, scope, sorted(device_ids), lock=True)
    await db.copy_text("COPY measurements (device_id, time, type, series, value, unit) FROM STDIN",
                       "".join(lines).encode())
    return len(lines)


async def list_measurements(
    db: BulkExecutor, scope: Scope, *, device_id: str, start: datetime | None, end: datetime | None,
    type: str | None, series: str | None, first: int | None, after: str | None, cap: int,
) -> Page[MeasurementRecord]:
    size, key = measurement_checks(device_id=device_id, start=start, end=end, first=first, cap=cap)
    await require_devices(db, scope, [key])
    stmt = measurement_page(key, start=start, end=end, type=type, series=series, after=after, size=size)
    return time_rows_page((await db.execute(stmt)).all(), MeasurementRecord, size)


def measurement_checks(*, device_id: str, start: datetime | None, end: datetime | None, first: int | None,
                       cap: int) -> tuple[int, int]:
    """The page size and the device (which must then be in scope: `require_devices`, or
    `devices_in_scope` inside a compiled read, app.graphql.engine.compiled)."""
    check_range(start, end)
    return page_size(first, cap), require_id(device_id, "device")


def measurement_page(device_id: int, *, start: datetime | None, end: datetime | None, type: str | None,
                     series: str | None, after: str | None, size: int) -> Select[Any]:
    stmt = select(*COLUMNS).where(measurements.c.device_id == device_id)
    if type is not None:
        stmt = stmt.where(measurements.c.type == type)
    if series is not None:
        stmt = stmt.where(measurements.c.series == series)
    return time_page_statement(stmt, measurements, start=start, end=end, after=after, size=size)


async def measurement_series(
    db: BulkExecutor, scope: Scope, *, device_id: str, start: datetime, end: datetime, interval: str,
    type: str | None, series: str | None,
) -> list[SeriesBucket]:
    """min/max/avg/count/sum per series and MINUTE/HOUR/DAY bucket, computed by PostgreSQL."""
    key = series_checks(device_id=device_id, start=start, end=end, interval=interval)
    await require_devices(db, scope, [key])
    rows: list[Any] = list((await db.execute(series_statement(key, start=start, end=end, interval=interval,
                                                               type=type, series=series))).all())
    return [SeriesBucket(series=r[0], bucket=r[1], min=r[2], max=r[3], avg=float(r[4]), count=int(r[5]), sum=r[6])
            for r in rows]


def series_checks(*, device_id: str, start: datetime, end: datetime, interval: str) -> int:
    """The device of a measurementSeries (which must then be in scope), after the range checks."""
    check_range(start, end)
    if interval not in INTERVALS:
        raise InvalidInput("interval must be MINUTE, HOUR or DAY", field="interval")
    if (end - start) / INTERVALS[interval] > MAX_BUCKETS:
        raise InvalidInput(f"at most {MAX_BUCKETS} buckets per query: use a coarser interval or shorter range",
                           field="interval", cap=MAX_BUCKETS)
    return require_id(device_id, "device")


def series_statement(key: int, *, start: datetime, end: datetime, interval: str, type: str | None,
                     series: str | None) -> Select[Any]:
    """One row per series and bucket (also compiled into a read's JSON: app.graphql.engine.compiled)."""
    bucket = func.date_trunc(literal_column(f"'{interval.lower()}'"), measurements.c.time).label("bucket")
    stmt: Select[Any] = (
        select(measurements.c.series, bucket, func.min(measurements.c.value).label("min"),
               func.max(measurements.c.value).label("max"), func.avg(measurements.c.value).label("avg"),
               func.count().label("count"), func.sum(measurements.c.value).label("sum"))
        .where(measurements.c.device_id == key, measurements.c.time >= start, measurements.c.time < end)
        .group_by(measurements.c.series, bucket).order_by(measurements.c.series, bucket)
    )
    if type is not None:
        stmt = stmt.where(measurements.c.type == type)
    if series is not None:
        stmt = stmt.where(measurements.c.series == series)
    return stmt
