"""copyData: copying inventory and data between tenants, in ONE transaction that switches role.

Every statement runs under exactly one tenant's role: reads under the source's, writes under
the target's (`app.access.acting` switches between them), so no tenant role is ever
widened and the application role still reads nothing by itself. Data travels through this
process (COPY out under the source role, COPY in under the target role). The transaction is
REPEATABLE READ, so the source is read as one snapshot; the target sees all of a copy or
nothing (a crash leaves it untouched).

Idempotency: inventory is mapped in the target's `provenance` table; data rows carry their
origin (origin_tenant, origin_id) under a unique index, so a re-run with SKIP adds only what
is new and OVERWRITE also refreshes what changed (events and alarms; measurements never
change once written).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlalchemy import and_, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.access.acting import act_as_tenant, act_as_tenant_blocking
from app.access.principal import Actor
from app.access.scope import Scope
from app.db.naming import tenant_schema
from app.errors import InvalidInput, NotFound
from app.models.tenant import alarms, devices, events, group_devices, groups, measurements, provenance
from app.services.audit import data_audit
from app.services.inventory.devices import group_closure

KINDS = ("INVENTORY", "MEASUREMENTS", "EVENTS", "ALARMS")


@dataclass(frozen=True)
class CopySpec:
    source_tenant: str
    target_tenant: str
    device_ids: tuple[int, ...] = ()
    group_id: int | None = None
    include_subgroups: bool = False
    include: tuple[str, ...] = ("INVENTORY",)
    start: datetime | None = None
    end: datetime | None = None
    on_conflict: str = "SKIP"

    def check(self) -> CopySpec:
        if self.source_tenant == self.target_tenant:
            raise InvalidInput("source and target must be different tenants", field="targetTenantId")
        if bool(self.device_ids) == (self.group_id is not None):
            raise InvalidInput("give either deviceIds or groupId", field="deviceIds")
        if not self.include or any(k not in KINDS for k in self.include):
            raise InvalidInput(f"include must be a non-empty subset of {', '.join(KINDS)}", field="include")
        if self.on_conflict not in ("SKIP", "OVERWRITE"):
            raise InvalidInput("onConflict must be SKIP or OVERWRITE", field="onConflict")
        for value, name in ((self.start, "from"), (self.end, "to")):
            if value is not None and value.tzinfo is None:
                raise InvalidInput(f"{name} needs a time zone", field=name)
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise InvalidInput("'from' must be before 'to'", field="from")
        return self

    def as_json(self) -> dict[str, Any]:
        return {"deviceIds": [str(d) for d in self.device_ids], "groupId": self.group_id,
                "includeSubgroups": self.include_subgroups, "include": list(self.include),
                "from": self.start.isoformat() if self.start else None,
                "to": self.end.isoformat() if self.end else None, "onConflict": self.on_conflict}


@dataclass
class CopyCounts:
    devices: int = 0
    groups: int = 0
    measurements: int = 0
    events: int = 0
    alarms: int = 0
    skipped: int = 0

    def as_json(self) -> dict[str, int]:
        return {"devices": self.devices, "groups": self.groups, "measurements": self.measurements,
                "events": self.events, "alarms": self.alarms, "skipped": self.skipped}


class _Session:
    """One connection, one REPEATABLE READ transaction, and the role it currently acts as."""

    def __init__(self, conn: AsyncConnection, spec: CopySpec) -> None:
        self.conn = conn
        self.spec = spec

    async def driver(self) -> Any:
        raw = await self.conn.get_raw_connection()
        return raw.driver_connection

    async def act_as(self, tenant_id: str) -> None:
        await act_as_tenant(await self.driver(), tenant_id)

    async def execute(self, stmt: Any, params: Any = None) -> Any:
        return await self.conn.execute(stmt, params)


def _time_filter(table: Any, spec: CopySpec, column: Any = None) -> Any:
    column = column if column is not None else table.c.time
    conditions = []
    if spec.start is not None:
        conditions.append(column >= spec.start)
    if spec.end is not None:
        conditions.append(column < spec.end)
    return and_(*conditions) if conditions else True


async def estimate(engine: AsyncEngine, spec: CopySpec, scope: Scope) -> int:
    """Roughly how many rows the copy moves (measurements dominate), read under the source role."""
    async with engine.connect() as conn:
        return await estimate_on(conn, spec, scope)


async def estimate_on(conn: AsyncConnection, spec: CopySpec, scope: Scope) -> int:
    """`estimate` on a connection the caller holds outside any transaction."""
    session = _Session(conn, spec)
    await (await session.driver()).execute(b"BEGIN")
    try:
        await session.act_as(spec.source_tenant)
        ids = await _selection(session, scope)
        if "MEASUREMENTS" not in spec.include or not ids:
            return len(ids)
        stmt = select(func.count()).select_from(measurements).where(
            measurements.c.device_id.in_(ids), _time_filter(measurements, spec))
        return int((await session.execute(stmt)).scalar_one())
    finally:
        await (await session.driver()).execute(b"ROLLBACK")


async def _selection(session: _Session, scope: Scope) -> list[int]:
    spec = session.spec
    if spec.device_ids:
        found = set((await session.execute(select(devices.c.id).where(
            devices.c.id.in_(spec.device_ids), scope.devices(devices.c.id)))).scalars())
        missing = sorted(set(spec.device_ids) - found)
        if missing:
            raise NotFound(f"device(s) not found in the source: {', '.join(map(str, missing[:10]))}")
        return sorted(found)
    assert spec.group_id is not None
    group = (await session.execute(select(groups.c.id).where(groups.c.id == spec.group_id,
                                                             scope.groups(groups.c.id)))).first()
    if group is None:
        raise NotFound(f"group {spec.group_id} not found in the source")
    group_ids: Any = select(group_closure([spec.group_id]).c.id) if spec.include_subgroups else [spec.group_id]
    stmt = select(group_devices.c.device_id).where(group_devices.c.group_id.in_(group_ids)).distinct()
    return sorted((await session.execute(stmt)).scalars())


async def run_copy(
    engine: AsyncEngine, spec: CopySpec, *, source_scope: Scope, actor: Actor, request_id: str | None = None,
    on_step: Callable[[str, CopyCounts], Any] = lambda step, counts: None,
) -> CopyCounts:
    """The copy, on a connection of its own."""
    async with engine.connect() as conn:
        return await copy_on(conn, spec, source_scope=source_scope, actor=actor, request_id=request_id,
                             on_step=on_step)


async def copy_on(
    conn: AsyncConnection, spec: CopySpec, *, source_scope: Scope, actor: Actor, request_id: str | None = None,
    on_step: Callable[[str, CopyCounts], Any] = lambda step, counts: None,
) -> CopyCounts:
    """The copy in ONE REPEATABLE READ transaction on `conn` (held by the caller, outside any
    transaction), switching role between the source and the target."""
    engine = conn.engine
    spec.check()
    counts = CopyCounts()
    src = spec.source_tenant
    session = _Session(conn, spec)
    driver = await session.driver()
    await driver.execute(b"BEGIN ISOLATION LEVEL REPEATABLE READ")
    try:
        await session.act_as(src)
        device_ids = await _selection(session, source_scope)
        device_rows = (await session.execute(
            select(devices.c.id, devices.c.name, devices.c.type, devices.c.owner, devices.c.fragments,
                   devices.c.parent_id).where(devices.c.id.in_(device_ids)).order_by(devices.c.id))).all()
        group_rows: list[Any] = []
        memberships: list[Any] = []
        if spec.group_id is not None and "INVENTORY" in spec.include:
            ids: Any = select(group_closure([spec.group_id]).c.id) if spec.include_subgroups else [spec.group_id]
            group_rows = list((await session.execute(select(groups.c.id, groups.c.name, groups.c.parent_id)
                                                     .where(groups.c.id.in_(ids)).order_by(groups.c.id))).all())
            memberships = list((await session.execute(select(group_devices.c.group_id, group_devices.c.device_id)
                                                      .where(group_devices.c.group_id.in_(
                                                          [g.id for g in group_rows])))).all())

        # Inventory, under the target role.
        await session.act_as(spec.target_tenant)
        device_map = await _copy_inventory(session, device_rows, "device", counts)
        if group_rows:
            await _copy_groups(session, group_rows, memberships, device_map, counts)
        await _step(on_step, "inventory", counts)

        if "MEASUREMENTS" in spec.include and device_map:
            await _copy_measurements(session, device_map, counts, on_step, engine)
        for kind, table, time_column in (("EVENTS", events, events.c.time),
                                          ("ALARMS", alarms, alarms.c.updated_at)):
            if kind in spec.include and device_map:
                await _copy_rows(session, table, time_column, device_map, counts)
                await _step(on_step, kind.lower(), counts)

        changes = [{"attribute": k, "previous": None, "new": v} for k, v in counts.as_json().items() if v]
        await data_audit.record(session, actor=actor, action="data.copied_in", target=src, changes=changes,
                                request_id=request_id)
        await session.act_as(src)
        await data_audit.record(session, actor=actor, action="data.copied_out", target=spec.target_tenant,
                                changes=changes, request_id=request_id)
        await _step(on_step, "commit", counts)
        await driver.execute(b"COMMIT")
    except BaseException:
        await asyncio.shield(driver.execute(b"ROLLBACK"))
        raise
    return counts


async def _step(on_step: Callable[[str, CopyCounts], Any], name: str, counts: CopyCounts) -> None:
    """Progress (and, in tests, injected failures): the hook may be plain or async."""
    result = on_step(name, counts)
    if asyncio.iscoroutine(result):
        await result


async def _copy_inventory(session: _Session, rows: Sequence[Any], kind: str, counts: CopyCounts) -> dict[int, int]:
    """Source device id → target device id; new devices are created, mapped ones kept (SKIP) or
    refreshed (OVERWRITE). Parents follow when they are part of the copy."""
    spec = session.spec
    src = spec.source_tenant
    known = dict((await session.execute(select(provenance.c.source_id, provenance.c.target_id).where(
        provenance.c.source_tenant == src, provenance.c.kind == kind,
        provenance.c.source_id.in_([r.id for r in rows])))).all())
    # A mapping whose target was deleted since is stale: copy that device again.
    alive = set((await session.execute(select(devices.c.id).where(devices.c.id.in_(list(known.values())))))
                .scalars()) if known else set()
    mapping = {s: t for s, t in known.items() if t in alive}
    if any(r.id not in mapping for r in rows) and "INVENTORY" not in spec.include:
        raise InvalidInput("some devices were never copied to the target: include INVENTORY", field="include")
    for row in rows:
        values = {"name": row.name, "type": row.type, "owner": row.owner, "fragments": row.fragments}
        if row.id in mapping:
            if spec.on_conflict == "OVERWRITE" and "INVENTORY" in spec.include:
                await session.execute(update(devices).where(devices.c.id == mapping[row.id])
                                      .values(**values, updated_at=func.now()))
                counts.devices += 1
            else:
                counts.skipped += 1
            continue
        new_id = (await session.execute(insert(devices).values(**values).returning(devices.c.id))).scalar_one()
        await session.execute(_remember(pg_insert(provenance).values(source_tenant=src, kind=kind, source_id=row.id,
                                                                     target_id=new_id, copied_at=func.now())))
        mapping[row.id] = new_id
        counts.devices += 1
    for row in rows:  # parent links inside the copied set
        if row.parent_id is not None and row.parent_id in mapping:
            await session.execute(update(devices).where(devices.c.id == mapping[row.id])
                                  .values(parent_id=mapping[row.parent_id]))
    return mapping


async def _copy_groups(session: _Session, rows: Sequence[Any], members: Sequence[Any], device_map: dict[int, int],
                       counts: CopyCounts) -> None:
    src = session.spec.source_tenant
    known = dict((await session.execute(select(provenance.c.source_id, provenance.c.target_id).where(
        provenance.c.source_tenant == src, provenance.c.kind == "group",
        provenance.c.source_id.in_([r.id for r in rows])))).all())
    alive = set((await session.execute(select(groups.c.id).where(groups.c.id.in_(list(known.values())))))
                .scalars()) if known else set()
    mapping = {s: t for s, t in known.items() if t in alive}
    for row in rows:  # ordered by id: parents were created before their subgroups
        parent = mapping.get(row.parent_id) if row.parent_id is not None else None
        if row.id in mapping:
            if session.spec.on_conflict == "OVERWRITE":
                await session.execute(update(groups).where(groups.c.id == mapping[row.id]).values(name=row.name))
            continue
        new_id = (await session.execute(insert(groups).values(name=row.name, parent_id=parent)
                                        .returning(groups.c.id))).scalar_one()
        await session.execute(_remember(pg_insert(provenance).values(source_tenant=src, kind="group", source_id=row.id,
                                                                     target_id=new_id, copied_at=func.now())))
        mapping[row.id] = new_id
        counts.groups += 1
    pairs = [{"group_id": mapping[m.group_id], "device_id": device_map[m.device_id]}
             for m in members if m.group_id in mapping and m.device_id in device_map]
    if pairs:
        await session.execute(pg_insert(group_devices).values(pairs).on_conflict_do_nothing())


def _literal_time(value: datetime) -> str:
    # Inlined into COPY (which takes no parameters): produced from a datetime, never from input text.
    return "'" + value.astimezone(UTC).isoformat() + "'::timestamptz"


async def _copy_measurements(session: _Session, device_map: dict[int, int], counts: CopyCounts,
                             on_step: Callable[[str, CopyCounts], Any], engine: AsyncEngine) -> None:
    """Stream measurements from the source into the target, COPY out → COPY in, overlapped.

    A second connection reads under the source role (its own REPEATABLE READ snapshot) while
    this one writes under the target role, so the source's COPY out and the target's COPY in
    run side by side. The source query itself maps device ids and adds the origin columns:
    when nothing was copied before, rows pass through this process as binary COPY data,
    unparsed. When an earlier run copied some, rows come as text and those already present
    are dropped here. Copies from one source into one target are serialised by an advisory
    lock (held to the end of the target transaction), so two runs cannot both add a row."""
    spec = session.spec
    src = spec.source_tenant
    driver = await session.driver()
    await session.act_as(spec.target_tenant)
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext('copy/' || :s || '/' || current_schema()))"),
                          {"s": src})
    present = set((await session.execute(select(measurements.c.origin_id).where(
        measurements.c.origin_tenant == src, measurements.c.device_id.in_(list(device_map.values())),
        _time_filter(measurements, spec)))).scalars())
    # Only integers, datetimes and the validated tenant id reach this SQL text (COPY takes no parameters).
    origin = src if tenant_schema(src) else ""
    mapped = " ".join(f"WHEN {int(s)} THEN {int(t)}" for s, t in device_map.items())
    conditions = [f"device_id IN ({','.join(str(int(d)) for d in device_map)})"]
    if spec.start is not None:
        conditions.append(f"time >= {_literal_time(spec.start)}")
    if spec.end is not None:
        conditions.append(f"time < {_literal_time(spec.end)}")
    fmt = "(FORMAT binary)" if not present else ""
    out_sql = (f"COPY (SELECT (CASE device_id {mapped} END)::bigint, time, type, series, value, unit, "
               f"'{origin}'::text, id FROM measurements WHERE {' AND '.join(conditions)}) TO STDOUT {fmt}")
    in_sql = ("COPY measurements (device_id, time, type, series, value, unit, origin_tenant, origin_id) "
              f"FROM STDIN {fmt}")
    counts.measurements += await stream_copy(engine, driver, src, out_sql, in_sql, present)
    if present:
        counts.skipped += await _count_source(session, conditions, src) - counts.measurements
    await _step(on_step, "measurements", counts)


async def stream_copy(engine: AsyncEngine, driver: Any, source_tenant: str, out_sql: str, in_sql: str,
                      present: set[int]) -> int:
    """COPY out of the source (under its role, on a connection of its own, in a thread) into
    COPY in on `driver` (the target's transaction). Returns the rows written.

    The per-row loop of COPY out runs off the event loop, mostly inside psycopg's C code, and
    overlaps the target's COPY in. Rows whose last (text) column is an id in `present` are
    dropped (re-runs of a copy)."""
    src = source_tenant
    written = 0
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=8)
    stop = threading.Event()

    def read_source() -> None:
        """COPY out on a connection of its own, in a thread: the per-row loop runs off the event
        loop (and mostly inside psycopg's C code), overlapping the target's COPY in."""
        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                act_as_tenant_blocking(conn, src)
                buffer = bytearray()
                with conn.cursor() as cursor, cursor.copy(out_sql) as out:
                    for data in out:
                        if stop.is_set():
                            break
                        if present and int(bytes(data).rstrip(b"\n").rsplit(b"\t", 1)[1]) in present:
                            continue
                        buffer += data
                        if len(buffer) >= 1 << 20:
                            asyncio.run_coroutine_threadsafe(chunks.put(bytes(buffer)), loop).result()
                            buffer.clear()
                if buffer:
                    asyncio.run_coroutine_threadsafe(chunks.put(bytes(buffer)), loop).result()
                conn.execute(b"ROLLBACK")
            asyncio.run_coroutine_threadsafe(chunks.put(None), loop).result()
        except BaseException as exc:  # handed to the writer, which re-raises it
            if not stop.is_set():
                asyncio.run_coroutine_threadsafe(chunks.put(exc), loop).result()

    reader = loop.run_in_executor(None, read_source)
    try:
        async with driver.cursor() as in_cursor:
            async with in_cursor.copy(in_sql) as into:
                while (chunk := await chunks.get()) is not None:
                    if isinstance(chunk, BaseException):
                        raise chunk
                    await into.write(chunk)
            written = int(max(in_cursor.rowcount, 0))
    finally:
        stop.set()
        while not reader.done():  # unblock a reader waiting on a full queue
            with contextlib.suppress(asyncio.QueueEmpty):
                chunks.get_nowait()
            await asyncio.sleep(0.01)
    return written


async def _count_source(session: _Session, conditions: list[str], src: str) -> int:
    """How many source rows the selection has (to report how many a re-run skipped)."""
    await session.act_as(src)
    total = int((await session.execute(text(
        f"SELECT count(*) FROM measurements WHERE {' AND '.join(conditions)}"))).scalar_one())
    await session.act_as(session.spec.target_tenant)
    return total


async def _copy_rows(session: _Session, table: Any, time_column: Any, device_map: dict[int, int],
                     counts: CopyCounts) -> None:
    """Events or alarms: few enough to pass as rows; ON CONFLICT on their origin decides SKIP/OVERWRITE."""
    spec = session.spec
    src = spec.source_tenant
    skip = {"id", "device_id", "origin_tenant", "origin_id"}
    columns = [c for c in table.c if c.name not in skip]
    await session.act_as(src)
    rows = (await session.execute(select(table.c.id, table.c.device_id, *columns).where(
        table.c.device_id.in_(list(device_map)), _time_filter(table, spec, time_column)))).all()
    await session.act_as(spec.target_tenant)
    if not rows:
        return
    values = [{"device_id": device_map[r.device_id], "origin_tenant": src, "origin_id": r.id,
               **{c.name: r._mapping[c.name] for c in columns}} for r in rows]
    stmt = pg_insert(table).values(values)
    where = text("origin_id IS NOT NULL")
    if spec.on_conflict == "OVERWRITE":
        stmt = stmt.on_conflict_do_update(index_elements=[table.c.origin_tenant, table.c.origin_id],
                                          index_where=where, set_={c.name: stmt.excluded[c.name] for c in columns})
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=[table.c.origin_tenant, table.c.origin_id],
                                           index_where=where)
    written = len((await session.execute(stmt.returning(table.c.id))).all())
    counts.skipped += len(values) - written
    name = table.name
    setattr(counts, name, getattr(counts, name) + written)


def _remember(stmt: Any) -> Any:
    """Provenance upsert: the values come from VALUES (`excluded`), never from a function in
    DO UPDATE SET, which Citus refuses on distributed tables (the tenant schemas there)."""
    return stmt.on_conflict_do_update(
        index_elements=[provenance.c.source_tenant, provenance.c.kind, provenance.c.source_id],
        set_={"target_id": stmt.excluded.target_id, "copied_at": stmt.excluded.copied_at})
