"""migrateDevices: move devices with their whole history to another tenant, atomically.

One transaction that switches role (like copyData): everything is read under the source's
role, written under the target's, and deleted under the source's; the commit makes the move
happen at once or not at all. Measurements stream through this process (COPY out → COPY in).

Before anything moves: child devices come along with their gateway; a device whose external
id is taken in the target stays (reported); group memberships cannot follow (groups belong
to a tenant) and are reported; the target's device limit must hold all of them. A device
keeps its id when the target can take it back safely (an id its own sequence once issued
and that is free now), so moving a device back restores it as it was, credentials included.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.access.acting import act_as_app
from app.access.principal import Actor
from app.auth.roles import ALARMS_WRITE, DEVICES_READ, DEVICES_WRITE, EVENTS_WRITE, MEASUREMENTS_WRITE, OPERATIONS_WRITE
from app.db.naming import tenant_schema
from app.errors import InvalidInput, LimitExceeded, NotFound
from app.models.management import device_token_moves
from app.models.tenant import (
    alarms,
    device_tokens,
    devices,
    events,
    external_ids,
    group_devices,
    groups,
    measurements,
    operations,
)
from app.services.audit import data_audit
from app.services.audit.records import record as management_audit
from app.services.sharing.copying import CopySpec, _Session, stream_copy
from app.tenancy.registry import TenantRecord

# What a caller needs in both tenants to move devices with their whole history: everything a
# data plane holds is read (and deleted) in the source and written in the target.
PERMISSIONS = frozenset({DEVICES_READ, DEVICES_WRITE, MEASUREMENTS_WRITE, EVENTS_WRITE, ALARMS_WRITE, OPERATIONS_WRITE})


@dataclass(frozen=True)
class Moved:
    source_id: int
    target_id: int
    name: str


@dataclass(frozen=True)
class NotMoved:
    device_id: int
    reason: str


@dataclass(frozen=True)
class LeftBehind:
    device_id: int
    group_id: int
    group_name: str


@dataclass
class MigrationResult:
    moved: list[Moved] = field(default_factory=list)
    not_moved: list[NotMoved] = field(default_factory=list)
    groups_left_behind: list[LeftBehind] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


async def migrate(conn: AsyncConnection, *, source: TenantRecord, target: TenantRecord,
                  device_ids: list[int], actor: Actor, request_id: str | None = None) -> MigrationResult:
    """The move in ONE REPEATABLE READ transaction on `conn` (held by the caller outside any
    transaction: the request's own, lent by the gate)."""
    if source.id == target.id:
        raise InvalidInput("the devices are already in that tenant", field="targetTenantId")
    if not device_ids:
        raise InvalidInput("give at least one device", field="deviceIds")
    result = MigrationResult()
    session = _Session(conn, CopySpec(source_tenant=source.id, target_tenant=target.id, device_ids=(1,)))
    driver = await session.driver()
    await driver.execute(b"BEGIN ISOLATION LEVEL REPEATABLE READ")
    try:
        await _migrate(conn.engine, session, driver, source, target, sorted(set(device_ids)), actor, request_id,
                       result)
        await driver.execute(b"COMMIT")
    except BaseException:
        await asyncio.shield(driver.execute(b"ROLLBACK"))
        raise
    return result


@dataclass
class _Picked:
    """What moves, read under the source role: the devices with their children, and what hangs on them."""

    rows: list[Any]
    external: list[Any]
    memberships: list[Any]
    tokens: list[Any]
    data: dict[str, list[Any]]

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.rows]


async def _migrate(engine: AsyncEngine, session: _Session, driver: Any, source: TenantRecord, target: TenantRecord,
                   wanted: list[int], actor: Actor, request_id: str | None, result: MigrationResult) -> None:
    """Read under the source role, check and write under the target's, remove under the source's,
    then record on the management plane: every step in the caller's one transaction."""
    picked = await _read_source(session, source, wanted)
    await session.act_as(target.id)
    moving = await _movable(session, picked, result)
    if not moving:
        return
    await _check_room(session, target, len(moving))
    mapping = await _write_devices(session, picked, moving)
    moved_tokens = await _write_history(session, picked, mapping, result)
    result.counts["measurements"] = await _copy_measurements(engine, driver, source, mapping)
    changes = [{"attribute": "devices", "previous": None, "new": [str(mapping[d]) for d in mapping]}]
    await data_audit.record(session, actor=actor, action="devices.migrated_in", target=source.id, changes=changes,
                            request_id=request_id)
    await _remove_from_source(session, source, target, list(mapping), actor, request_id)
    for row in moving:
        result.moved.append(Moved(row.id, mapping[row.id], row.name))
    result.groups_left_behind = [LeftBehind(m.device_id, m.id, m.name) for m in picked.memberships
                                 if m.device_id in mapping]
    result.counts["devices"] = len(mapping)
    await _record_management(session, driver, source, target, moved_tokens, len(mapping), actor, request_id)


async def _read_source(session: _Session, source: TenantRecord, wanted: list[int]) -> _Picked:
    await session.act_as(source.id)
    found = set((await session.execute(select(devices.c.id).where(devices.c.id.in_(wanted)))).scalars())
    missing = sorted(set(wanted) - found)
    if missing:
        raise NotFound(f"device(s) not found: {', '.join(map(str, missing[:10]))}")
    tree = select(devices.c.id).where(devices.c.id.in_(wanted)).cte("moving", recursive=True)
    tree = tree.union(select(devices.c.id).where(devices.c.parent_id == tree.c.id))  # UNION: ends even on a cycle
    rows = list((await session.execute(select(devices).where(devices.c.id.in_(select(tree.c.id)))
                                       .order_by(devices.c.id))).all())
    ids = [r.id for r in rows]
    ext = list((await session.execute(select(external_ids).where(external_ids.c.device_id.in_(ids)))).all())
    memberships = list((await session.execute(select(group_devices.c.device_id, groups.c.id, groups.c.name)
                                              .join(groups, groups.c.id == group_devices.c.group_id)
                                              .where(group_devices.c.device_id.in_(ids)))).all())
    tokens = list((await session.execute(select(device_tokens).where(device_tokens.c.device_id.in_(ids)))).all())
    data = {table.name: list((await session.execute(select(table).where(table.c.device_id.in_(ids)))).all())
            for table in (events, alarms, operations)}
    return _Picked(rows, ext, memberships, tokens, data)


async def _movable(session: _Session, picked: _Picked, result: MigrationResult) -> list[Any]:
    """The devices that can move (under the target role): none whose external id is taken there,
    and a gateway and its children move together, so one blocked device keeps its whole family."""
    ext = picked.external
    clashes = {(r.type, r.value) for r in (await session.execute(
        select(external_ids.c.type, external_ids.c.value).where(external_ids.c.value.in_([e.value for e in ext]))
    )).all()}
    blocked: set[int] = {e.device_id for e in ext if (e.type, e.value) in clashes}
    parents = {r.id: r.parent_id for r in picked.rows}

    def root(device_id: int) -> int:
        while parents.get(device_id) in parents:
            device_id = parents[device_id]
        return device_id

    blocked_roots = {root(d) for d in blocked}
    staying = {d for d in picked.ids if root(d) in blocked_roots}
    for e in ext:
        if e.device_id in blocked:
            result.not_moved.append(NotMoved(e.device_id, f"external id {e.type}:{e.value} is taken in the target"))
    for d in sorted(staying - blocked):
        result.not_moved.append(NotMoved(d, "its gateway or a child device cannot move"))
    return [r for r in picked.rows if r.id not in staying]


async def _check_room(session: _Session, target: TenantRecord, count: int) -> None:
    if target.max_devices is None:
        return
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '/devices'))"))
    have = int((await session.execute(select(func.count()).select_from(devices))).scalar_one())
    if have + count > target.max_devices:
        raise LimitExceeded(f"the target's maxDevices ({target.max_devices}) cannot take {count} more",
                            limit="maxDevices", available=max(target.max_devices - have, 0))


async def _write_devices(session: _Session, picked: _Picked, moving: list[Any]) -> dict[int, int]:
    """Source device id → target device id (an id the target issued once and freed is taken back)."""
    issued = int((await session.execute(text(
        "SELECT last_value FROM pg_sequences WHERE schemaname = current_schema() AND sequencename = 'devices_id_seq'"
    ))).scalar_one() or 0)
    taken = set((await session.execute(select(devices.c.id).where(devices.c.id.in_([r.id for r in moving]))))
                .scalars())
    mapping: dict[int, int] = {}
    columns = [c.name for c in devices.c if c.name not in ("id", "parent_id")]
    for row in moving:
        values = {c: row._mapping[c] for c in columns}
        if row.id <= issued and row.id not in taken:
            values["id"] = row.id
        mapping[row.id] = (await session.execute(insert(devices).values(**values).returning(devices.c.id))
                           ).scalar_one()
    for row in moving:
        if row.parent_id is not None and row.parent_id in mapping:
            await session.execute(devices.update().where(devices.c.id == mapping[row.id])
                                  .values(parent_id=mapping[row.parent_id]))
    return mapping


async def _write_history(session: _Session, picked: _Picked, mapping: dict[int, int],
                         result: MigrationResult) -> list[dict[str, Any]]:
    """External ids, credentials, events, alarms and operations of the moved devices; returns the
    credentials moved (they follow their device on the management plane too)."""
    moved_ext = [{"type": e.type, "value": e.value, "device_id": mapping[e.device_id]} for e in picked.external
                 if e.device_id in mapping]
    if moved_ext:
        await session.execute(insert(external_ids), moved_ext)
    moved_tokens = [{"device_id": mapping[t.device_id], "token_hash": t.token_hash, "created_at": t.created_at,
                     "revoked_at": t.revoked_at} for t in picked.tokens if t.device_id in mapping]
    if moved_tokens:
        await session.execute(insert(device_tokens), moved_tokens)
    for table in (events, alarms, operations):
        keep = [c.name for c in table.c if c.name not in ("id", "device_id")]
        batch = [{"device_id": mapping[r.device_id], **{c: r._mapping[c] for c in keep}}
                 for r in picked.data[table.name] if r.device_id in mapping]
        if batch:
            await session.execute(insert(table), batch)
        result.counts[table.name] = len(batch)
    return moved_tokens


async def _copy_measurements(engine: AsyncEngine, driver: Any, source: TenantRecord, mapping: dict[int, int]) -> int:
    """COPY out of the source (ids mapped in SQL) into the target's transaction."""
    origin_ids = ",".join(str(int(d)) for d in mapping)
    cases = " ".join(f"WHEN {int(s)} THEN {int(t)}" for s, t in mapping.items())
    tenant_schema(source.id)  # validates the id
    out_sql = (f"COPY (SELECT (CASE device_id {cases} END)::bigint, time, type, series, value, unit "
               f"FROM measurements WHERE device_id IN ({origin_ids})) TO STDOUT (FORMAT binary)")
    in_sql = "COPY measurements (device_id, time, type, series, value, unit) FROM STDIN (FORMAT binary)"
    return await stream_copy(engine, driver, source.id, out_sql, in_sql, set())


async def _remove_from_source(session: _Session, source: TenantRecord, target: TenantRecord, moved_ids: list[int],
                              actor: Actor, request_id: str | None) -> None:
    await session.act_as(source.id)
    await session.execute(delete(measurements).where(measurements.c.device_id.in_(moved_ids)))
    await session.execute(delete(devices).where(devices.c.id.in_(moved_ids)))  # cascades the rest
    await data_audit.record(session, actor=actor, action="devices.migrated_out", target=target.id,
                            changes=[{"attribute": "devices", "previous": [str(d) for d in moved_ids], "new": None}],
                            request_id=request_id)


async def _record_management(session: _Session, driver: Any, source: TenantRecord, target: TenantRecord,
                             moved_tokens: list[dict[str, Any]], moved: int, actor: Actor,
                             request_id: str | None) -> None:
    """The management plane, as the application role, still in the same transaction."""
    await act_as_app(driver)
    for token in moved_tokens:  # credentials follow their device
        stmt = pg_insert(device_token_moves).values(token_hash=token["token_hash"], tenant_id=target.id)
        await session.execute(stmt.on_conflict_do_update(index_elements=[device_token_moves.c.token_hash],
                                                         set_={"tenant_id": target.id, "moved_at": func.now()}))
    for tenant_id, other in ((source.id, target.id), (target.id, source.id)):
        await management_audit(session, tenant_id=tenant_id, actor=actor, action="devices.migrated", target=other,
                               changes=[{"attribute": "devices", "previous": None, "new": moved}],
                               request_id=request_id)
