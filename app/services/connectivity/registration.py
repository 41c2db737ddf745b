"""Bulk registration of devices: a CSV or JSON upload of up to 100,000 devices as a job with progress
and an outcome per row (API.md, `registerDevices`; the pain of thingsboard#4242 and #11200).

The upload is read and its shape checked when it is submitted (INVALID_INPUT: nothing is queued);
its rows are then stored with the job and registered in the background, a thousand at a time:

- **Idempotent by external id** (type `serial`): a row whose external id is registered already —
  by an earlier job, an earlier row, or createDevice — answers EXISTING with that device, so a job
  cut short is simply submitted again.
- **PER_ROW**: each row stands alone; a bad row is FAILED with its reason and the others go on.
  **ALL_OR_NOTHING**: every row is checked first; one bad row, or too few devices left under
  maxDevices, fails the job and registers nothing.
- **maxDevices exactly**: the same lock as createDevice, so concurrent jobs and mutations never
  overshoot; in PER_ROW the rows past the limit are FAILED with LIMIT_EXCEEDED.
- The new devices are announced (one change each), counted in usage and audited once per job.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import func, insert, select, text, update

from app import ids
from app.db.transaction import Executor
from app.errors import AppError, InvalidInput
from app.inputs import InputRejected, check_string
from app.models.management import registration_jobs
from app.models.tenant import devices, external_ids, groups, registration_rows
from app.services.inventory.devices import (
    DEFAULT_EXTERNAL_ID_TYPE,
    DEVICE_COLUMNS,
    DeviceRecord,
    check_name,
    device_record,
)

MAX_ROWS = 100_000
CHUNK = 1000
COLUMNS = ("name", "type", "externalId", "groupId")
FORMATS = ("CSV", "JSON")
MODES = ("ALL_OR_NOTHING", "PER_ROW")


@dataclass(frozen=True)
class Row:
    line: int
    name: str
    type: str | None
    external_id: str | None
    group: str | None  # a Group id as given; checked when the row is registered


@dataclass(frozen=True)
class Job:
    id: UUID
    tenant_id: str
    mode: str
    status: str
    total: int
    processed: int
    created: int
    existing: int
    failed: int
    error: str | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class Outcome:
    line: int
    name: str
    external_id: str | None
    outcome: str
    device_id: int | None
    message: str | None


# --- reading an upload -------------------------------------------------------------------------------

def read(fmt: str, content: str) -> list[Row]:
    """The rows of an upload; INVALID_INPUT for anything that is not one."""
    if fmt not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}", field="format")
    try:
        check_string(content)
    except InputRejected as exc:
        raise InvalidInput(str(exc), field="content") from None
    items = _csv(content) if fmt == "CSV" else _json(content)
    if not items:
        raise InvalidInput("the upload has no devices", field="content")
    if len(items) > MAX_ROWS:
        raise InvalidInput(f"at most {MAX_ROWS:,} devices per job", field="content", max=MAX_ROWS)
    return [_row(line, item) for line, item in items]


def _csv(content: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(content), strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise InvalidInput("the CSV is empty: its first line names the columns", field="content") from None
    except csv.Error as exc:
        raise InvalidInput(f"not CSV: {exc}", field="content") from None
    _check_columns(header)
    out: list[tuple[int, dict[str, Any]]] = []
    try:
        for values in reader:
            if not any(v.strip() for v in values):
                continue  # blank lines say nothing
            if len(values) != len(header):
                raise InvalidInput(f"line {reader.line_num}: {len(values)} values for {len(header)} columns",
                                   field="content", line=reader.line_num)
            out.append((reader.line_num, {k: (v.strip() or None) for k, v in zip(header, values, strict=True)}))
            if len(out) > MAX_ROWS:
                break
    except csv.Error as exc:
        raise InvalidInput(f"line {reader.line_num}: not CSV: {exc}", field="content") from None
    return out


def _json(content: str) -> list[tuple[int, dict[str, Any]]]:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise InvalidInput("content is not JSON", field="content") from None
    if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
        raise InvalidInput("JSON content is a list of objects, one per device", field="content")
    for item in body[:MAX_ROWS + 1]:
        _check_columns(list(item))
    return list(enumerate(body, 1))


def _check_columns(names: Sequence[str]) -> None:
    unknown = sorted(set(names) - set(COLUMNS))
    if unknown:
        raise InvalidInput(f"unknown column {', '.join(unknown)} (columns: {', '.join(COLUMNS)})", field="content")
    if "name" not in names:
        raise InvalidInput("every device needs a name: add a name column", field="content")


def _row(line: int, item: dict[str, Any]) -> Row:
    def value(key: str) -> str | None:
        raw = item.get(key)
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise InvalidInput(f"line {line}: {key} must be a string", field="content", line=line)
        return raw
    return Row(line=line, name=value("name") or "", type=value("type"), external_id=value("externalId"),
               group=value("groupId"))


# --- the job -----------------------------------------------------------------------------------------

async def submit(management: Executor, tenant_db: Executor, *, tenant_id: str, mode: str, rows: list[Row],
                 requested_by: str) -> UUID:
    """The job (QUEUED) and its rows, stored in the caller's transaction."""
    if mode not in MODES:
        raise InvalidInput(f"mode must be one of {', '.join(MODES)}", field="mode")
    job_id = (await management.execute(insert(registration_jobs).values(
        tenant_id=tenant_id, mode=mode, total=len(rows), requested_by=requested_by)
        .returning(registration_jobs.c.id))).scalar_one()
    for start in range(0, len(rows), 5000):
        part = rows[start:start + 5000]
        await tenant_db.execute(text(
            "INSERT INTO registration_rows (job_id, line, name, type, external_id, group_ref) "
            "SELECT :job, * FROM unnest(CAST(:lines AS int[]), CAST(:names AS text[]), CAST(:types AS text[]), "
            "CAST(:externals AS text[]), CAST(:groups AS text[]))"),
            {"job": job_id, "lines": [r.line for r in part], "names": [r.name for r in part],
             "types": [r.type for r in part], "externals": [r.external_id for r in part],
             "groups": [r.group for r in part]})
    return UUID(str(job_id))


async def job(management: Executor, tenant_id: str, job_id: UUID) -> Job | None:
    row = (await management.execute(select(registration_jobs).where(
        registration_jobs.c.id == job_id, registration_jobs.c.tenant_id == tenant_id))).first()
    if row is None:
        return None
    return Job(row.id, row.tenant_id, row.mode, row.status, row.total, row.processed, row.created, row.existing,
               row.failed, row.error, row.created_at, row.finished_at)


async def outcomes(tenant_db: Executor, job_id: UUID, *, after: int, first: int) -> list[Outcome]:
    rows = await tenant_db.execute(select(
        registration_rows.c.line, registration_rows.c.name, registration_rows.c.external_id,
        registration_rows.c.outcome, registration_rows.c.device_id, registration_rows.c.message)
        .where(registration_rows.c.job_id == job_id, registration_rows.c.line > after)
        .order_by(registration_rows.c.line).limit(first + 1))
    return [Outcome(r.line, r.name, r.external_id, r.outcome or "PENDING", r.device_id, r.message) for r in rows]


# --- registering one chunk ---------------------------------------------------------------------------

@dataclass
class Checked:
    """A chunk's rows once checked: what to create, what exists, what failed (line → reason)."""

    create: list[tuple[Row, int | None]]  # with its group's id
    existing: dict[int, int]  # line → device
    failed: dict[int, AppError]


async def pending(tenant_db: Executor, job_id: UUID, after: int) -> list[Row]:
    found = await tenant_db.execute(text(
        "SELECT line, name, type, external_id, group_ref FROM registration_rows "
        "WHERE job_id = :job AND line > :after ORDER BY line LIMIT :n"), {"job": job_id, "after": after, "n": CHUNK})
    return [Row(r.line, r.name, r.type, r.external_id, r.group_ref) for r in found]


async def check(tenant_db: Executor, tenant_id: str, rows: Sequence[Row], claimed: dict[str, int]) -> Checked:
    """Each row against the rules createDevice applies, the tenant's registered external ids and
    groups, and the rows of this job before it (`claimed`: external id → its first line)."""
    externals = [r.external_id for r in rows if r.external_id]
    known: dict[str, int] = {}
    if externals:
        found = await tenant_db.execute(select(external_ids.c.value, external_ids.c.device_id).where(
            external_ids.c.type == DEFAULT_EXTERNAL_ID_TYPE, external_ids.c.value.in_(externals)))
        known = {r.value: r.device_id for r in found}
    wanted = {ids.local_id(r.group, "group", tenant_id) for r in rows if r.group and ids.decode(r.group)}
    present = set((await tenant_db.execute(select(groups.c.id).where(groups.c.id.in_(
        [g for g in wanted if g is not None])))).scalars()) if wanted else set()
    result = Checked([], {}, {})
    for row in rows:
        try:
            check_name(row.name)
            if row.type is not None and len(row.type) > 100:
                raise InvalidInput("type must be at most 100 characters", field="type")
            if row.external_id is not None and not 1 <= len(row.external_id) <= 200:
                raise InvalidInput("externalId must be 1-200 characters", field="externalId")
            group = None
            if row.group is not None:
                decoded = ids.decode(row.group)
                group = ids.local_id(row.group, "group", tenant_id) if decoded else None
                if group is None or group not in present:
                    raise InvalidInput(f"no group {row.group[:80]} in this tenant", field="groupId")
        except AppError as exc:
            result.failed[row.line] = exc
            continue
        if row.external_id and row.external_id in claimed:
            result.failed[row.line] = InvalidInput(f"externalId {row.external_id!r} is on line "
                                                   f"{claimed[row.external_id]} already", field="externalId")
        elif row.external_id and row.external_id in known:
            result.existing[row.line] = known[row.external_id]
        else:
            result.create.append((row, group))
        if row.external_id:
            claimed.setdefault(row.external_id, row.line)
    return result


async def create(tenant_db: Executor, rows: Sequence[tuple[Row, int | None]], owner: str) -> list[DeviceRecord]:
    """The devices of these rows, with their external ids and groups, in line order."""
    if not rows:
        return []
    created = await tenant_db.execute(text(
        "WITH given AS (SELECT * FROM unnest(CAST(:lines AS int[]), CAST(:names AS text[]), CAST(:types AS text[])) "
        "AS g(line, name, type)) "
        "INSERT INTO devices (name, type, owner) SELECT name, type, :owner FROM given ORDER BY line RETURNING id"),
        {"lines": [r.line for r, _ in rows], "names": [r.name for r, _ in rows], "types": [r.type for r, _ in rows],
         "owner": owner})
    device_ids = sorted(created.scalars())  # identity values are drawn in the order rows are inserted
    pairs = list(zip(rows, device_ids, strict=True))
    serials = [(r.external_id, d) for (r, _), d in pairs if r.external_id]
    if serials:
        await tenant_db.execute(text(
            "INSERT INTO external_ids (type, value, device_id) SELECT :type, * FROM unnest(CAST(:values AS text[]), "
            "CAST(:devices AS bigint[]))"),
            {"type": DEFAULT_EXTERNAL_ID_TYPE, "values": [v for v, _ in serials], "devices": [d for _, d in serials]})
    grouped = [(g, d) for (_, g), d in pairs if g is not None]
    if grouped:
        await tenant_db.execute(text(
            "INSERT INTO group_devices (group_id, device_id) SELECT * FROM unnest(CAST(:groups AS bigint[]), "
            "CAST(:devices AS bigint[]))"), {"groups": [g for g, _ in grouped], "devices": [d for _, d in grouped]})
    records = await tenant_db.execute(select(*DEVICE_COLUMNS).where(devices.c.id.in_(device_ids))
                                      .order_by(devices.c.id))
    return [device_record(r) for r in records]


Settled = tuple[int, str, int | None, str | None]  # line, outcome, device, message


async def record_outcomes(tenant_db: Executor, job_id: UUID, outcomes_: Sequence[Settled]) -> None:
    if not outcomes_:
        return
    await tenant_db.execute(text(
        "UPDATE registration_rows r SET outcome = o.outcome, device_id = o.device, message = o.message "
        "FROM unnest(CAST(:lines AS int[]), CAST(:outcomes AS text[]), CAST(:devices AS bigint[]), "
        "CAST(:messages AS text[])) AS o(line, outcome, device, message) WHERE r.job_id = :job AND r.line = o.line"),
        {"job": job_id, "lines": [o[0] for o in outcomes_], "outcomes": [o[1] for o in outcomes_],
         "devices": [o[2] for o in outcomes_], "messages": [o[3] for o in outcomes_]})


async def progress(management: Executor, job_id: UUID, **values: Any) -> None:
    await management.execute(update(registration_jobs).where(registration_jobs.c.id == job_id)
                             .values(**values, heartbeat_at=func.now()))
