"""Measurements: bulk ingest by COPY, keyset-paged reads, and aggregation in SQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Select, func, literal_column, select

from app.access.scope import Scope
from app.db.transaction import BulkExecutor
from app.errors import Forbidden, InvalidInput
from app.inputs import MAX_MAGNITUDE
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
_NO_OFFSET = timedelta(0)
COLUMNS = (measurements.c.id, measurements.c.device_id, measurements.c.time, measurements.c.type,
           measurements.c.series, measurements.c.value, measurements.c.unit)


class NewMeasurement(NamedTuple):
    """One measurement to store (a tuple: a batch builds a thousand of them per request)."""

    device_id: str
    time: datetime
    type: str
    series: str
    value: float
    unit: str | None = None
    # `time` as text for COPY when the client's own text already is that (`copy_time`): a
    # thousand isoformat() calls are a tenth of a batch's cost.
    time_text: str | None = None


def copy_time(text: str) -> str | None:
    """`text` itself if PostgreSQL reads it as the instant `datetime.fromisoformat(text)` gives
    (for a text that parsed): RFC 3339 in UTC, YYYY-MM-DDTHH:MM:SS[.ffffff] then Z or +00:00.
    Python reads more forms (week dates, any separator, a comma, zones up to ±23:59 where
    PostgreSQL stops at ±15:59) and truncates a seventh fraction digit where PostgreSQL rounds;
    those times are formatted again, in UTC (`_copy_time`)."""
    n = len(text)
    zone = 1 if text[-1:] == "Z" else 6 if text[-6:] == "+00:00" else 0
    body = n - zone
    if zone and (body == 19 or (21 <= body <= 26 and text[19] == ".")) and text[10] == "T" \
            and text[4] == text[7] == "-" and text[13] == text[16] == ":":
        return text
    return None


def _copy_time(time: datetime) -> str:
    return (time if time.utcoffset() == _NO_OFFSET else time.astimezone(UTC)).isoformat()


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


def _copy_tail(kind: str, series: str, unit: str | None) -> str:
    """The end of a COPY line (type, series, unit), each value checked and escaped."""
    unit_text = "\\N" if unit is None else _copy_text(check_text(unit, "unit", 20))
    return f"{_copy_text(check_text(kind, 'type'))}\t{_copy_text(check_text(series, 'series'))}\t{unit_text}\n"


@dataclass
class Span:
    """What a batch stored for one device: its earliest and latest time and how many rows."""

    first: datetime
    last: datetime
    count: int


async def create_measurements(db: BulkExecutor, scope: Scope, batch: Sequence[NewMeasurement]) -> dict[int, Span]:
    """Validate the whole batch, then write it with one COPY in the request's transaction.

    Returns what was stored per device. Batches repeat the same few devices, types, series and
    units, so each distinct device id and each (type, series, unit) is checked and escaped once;
    a row costs a time check, a value check and one f-string (one write, no per-row await).
    """
    if len(batch) > MAX_BATCH:
        raise InvalidInput(f"at most {MAX_BATCH} measurements per call", field="input", cap=MAX_BATCH)
    devices: dict[str, int] = {}
    tails: dict[tuple[str, str, str | None], str] = {}
    spans: dict[int, Span] = {}
    lines: list[str] = []
    append = lines.append
    for device_text, time, kind, series, value, unit, time_text in batch:
        device = devices.get(device_text)
        if device is None:
            device = devices[device_text] = require_id(device_text, "device")
        tail = tails.get((kind, series, unit))
        if tail is None:
            tail = tails[kind, series, unit] = _copy_tail(kind, series, unit)
        if type(value) is not float or not -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE:
            value = check_value(value)
        if time.tzinfo is None:
            check_time(time, "time")
        span = spans.get(device)
        if span is None:
            spans[device] = Span(time, time, 1)
        else:
            span.count += 1
            if time < span.first:
                span.first = time
            elif time > span.last:
                span.last = time
        append(f"{device}\t{time_text or _copy_time(time)}\t{value!r}\t{tail}")
    if not lines:
        return spans
    if scope.device_id is not None and spans.keys() != {scope.device_id}:
        raise Forbidden("a device may only send its own measurements")
    await require_devices(db, scope, sorted(spans), lock=True)
    await db.copy_text("COPY measurements (device_id, time, value, type, series, unit) FROM STDIN",
                       "".join(lines).encode())
    return spans


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
