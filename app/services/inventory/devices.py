"""Inventory inside the routed tenant: devices, child devices, external ids and groups.

Every statement runs in the tenant's own transaction (search_path and role switched), so
nothing here names a schema; every statement on devices carries `scope.devices(...)`, so a
group-scoped user sees and changes only devices in their groups, everywhere.
Deleting a device deletes its data (measurements, events, alarms, operations, children).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import Select, bindparam, delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app import ids
from app.access.scope import Scope, scope_sql
from app.db.notify import literal
from app.db.prepared import shaped
from app.db.transaction import Executor, read_ids, returned_json
from app.errors import Conflict, Forbidden, InvalidInput, NotFound
from app.models.tenant import devices, external_ids, group_devices, groups, measurements
from app.services.inventory import availability
from app.services.pagination import Page, build_page, contains_pattern, decode_int_cursor, page_size

DEFAULT_EXTERNAL_ID_TYPE = "serial"
DEVICE_COLUMNS = (devices.c.id, devices.c.name, devices.c.type, devices.c.owner, devices.c.fragments,
                  devices.c.created_at, devices.c.updated_at, devices.c.parent_id, devices.c.required_interval,
                  devices.c.availability)
GROUP_COLUMNS = (groups.c.id, groups.c.name, groups.c.parent_id, groups.c.created_at)

# Built once: constructing a statement per request costs more than its round trip's overhead.
_BY_ID = select(*DEVICE_COLUMNS).where(devices.c.id == bindparam("id"))


@dataclass(frozen=True)
class DeviceRecord:
    id: int
    name: str
    type: str | None
    owner: str | None
    fragments: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    parent_id: int | None
    # Availability (app.services.inventory.availability); defaults for log entries written before it.
    required_interval: int | None = None
    availability: str = "UNKNOWN"


@dataclass(frozen=True)
class GroupRecord:
    id: int
    name: str
    parent_id: int | None
    created_at: datetime


@dataclass(frozen=True)
class ExternalId:
    type: str
    value: str
    device_id: int


@dataclass(frozen=True)
class DeviceFilter:
    type: str | None = None
    name_contains: str | None = None
    group_id: int | None = None
    include_subgroups: bool = False
    parent_id: int | None = None
    # Devices whose fragments contain this JSON object (e.g. {"firmware": {"version": "1.2"}}).
    fragments: dict[str, Any] | None = None
    has_fragment: str | None = None


@dataclass(frozen=True)
class DeviceChanges:
    name: str | None = None
    type: str | None = None
    fragments: object = None
    parent_id: int | None = None
    required_interval: int | None = None  # seconds; 0 stops monitoring
    clear_parent: bool = False


def parse_id(value: str | int | None, what: str) -> int | None:
    """The row a `what` id ("device", "group", …) names in the request's tenant: a global id from
    the API (app.ids; INVALID_INPUT when malformed, None when of another tenant or type), or an int
    the services hold."""
    if value is None:
        return None
    return ids.local_id(value, what)


def require_id(value: str | int, what: str, *, tenant: str | None = None) -> int:
    """As parse_id, NOT_FOUND when it names nothing here (`tenant`: another than the request's)."""
    parsed = ids.local_id(value, what, tenant)
    if parsed is None:
        raise NotFound(f"{what} {value} not found")
    return parsed


def device_record(row: Any) -> DeviceRecord:
    return DeviceRecord(*row)


def group_record(row: Any) -> GroupRecord:
    return GroupRecord(*row)


def check_name(name: str, field: str = "name") -> str:
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidInput(f"{field} must be 1-200 characters", field=field)
    return name


def _check_fragments(fragments: object) -> dict[str, Any]:
    if fragments is None:
        return {}
    if not isinstance(fragments, dict):
        raise InvalidInput("fragments must be a JSON object", field="fragments")
    if len(str(fragments)) > 65_536:
        raise InvalidInput("fragments must be at most 64 KiB", field="fragments")
    return fragments


# --- devices -------------------------------------------------------------------------------------


def devices_in_scope(scope: Scope, ids: Sequence[int], *, lock: bool = False) -> str:
    """The ids among `ids` naming devices in scope, as SQL: the scope's predicate rendered once per scope,
    the ids (integers) inlined. Every write's device check (`require_devices`) and a compiled read's guard."""
    head, tail = _in_scope_sql(scope, lock)
    return f"{head}{','.join(str(int(i)) for i in ids)}{tail}"


@lru_cache(maxsize=1024)
def _in_scope_sql(scope: Scope, lock: bool) -> tuple[str, str]:
    return (f"SELECT devices.id FROM devices WHERE ({scope_sql(scope, 'devices', 'devices.id')}) "
            "AND devices.id = ANY('{",
            "}'::bigint[])" + (" FOR KEY SHARE" if lock else ""))


async def require_devices(db: Executor, scope: Scope, ids: Sequence[int], *, lock: bool = False) -> None:
    """NOT_FOUND unless every id names a device in scope, one query for a batch (BEGIN in its round trip).
    `lock` takes FOR KEY SHARE on them until the transaction ends, as a foreign key check would: a
    concurrent delete of one of these devices waits, then sees the new rows."""
    wanted = set(ids)
    missing = sorted(wanted - set(await read_ids(db, devices_in_scope(scope, sorted(wanted), lock=lock))))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
        raise NotFound(f"device(s) not found: {shown}", deviceIds=[str(m) for m in missing[:100]])


# SQL text with its values in one JSON literal: a request transaction sends it on libpq with BEGIN in the
# same round trip (app.db.transaction.returned_json), prepared once the connection has met it (app.db.prepared:
# `shaped`, so its text is not cut every time); through SQLAlchemy it was a round trip of its own.
_INSERT = ("INSERT INTO devices (name, type, owner, fragments, parent_id, required_interval) SELECT v->>'name', "
           "v->>'type', v->>'owner', v->'fragments', (v->>'parent_id')::bigint, (v->>'required_interval')::integer "
           "FROM (SELECT {}::jsonb AS v) AS given RETURNING json_build_array("
           + ", ".join(c.name for c in DEVICE_COLUMNS) + ")::text")


async def create_device(
    db: Executor, scope: Scope, *, name: str, type: str | None, owner: str | None,
    external_id: str | None, fragments: object, group_id: int | None = None, parent_id: int | None = None,
    required_interval: int | None = None,
) -> DeviceRecord:
    name = check_name(name)
    if type is not None and len(type) > 100:
        raise InvalidInput("type must be at most 100 characters", field="type")
    values = _check_fragments(fragments)
    if scope.device_id is not None:
        raise Forbidden("a device cannot create devices")
    if not scope.unrestricted and group_id is None:
        raise Forbidden("your access is limited to groups: create the device in one of them (groupId)")
    if group_id is not None:
        await require_group(db, scope, group_id)
    if parent_id is not None:
        await require_devices(db, scope, [parent_id])
    given = {"name": name, "type": type, "owner": owner, "fragments": values, "parent_id": parent_id,
             "required_interval": availability.check_interval(required_interval)}
    (row,) = await returned_json(db, shaped(_INSERT, [(literal(orjson.dumps(given).decode()), "unknown")]))
    row[5:7] = map(datetime.fromisoformat, row[5:7])  # created_at, updated_at: JSON has them as text
    device = device_record(row)
    if group_id is not None:
        await db.execute(insert(group_devices).values(group_id=group_id, device_id=device.id))
    if external_id is not None:
        await add_external_id(db, scope, device_id=device.id, type=DEFAULT_EXTERNAL_ID_TYPE, value=external_id,
                              checked=True)
    return device


async def device_by_id(db: Executor, scope: Scope, device_id: str | int) -> DeviceRecord | None:
    key = parse_id(device_id, "device")
    if key is None:
        return None
    stmt = _BY_ID if scope.unrestricted else _BY_ID.where(scope.devices(devices.c.id))
    row = (await db.execute(stmt, {"id": key})).first()
    return device_record(row) if row is not None else None


async def device_by_external_id(db: Executor, scope: Scope, *, type: str, value: str) -> DeviceRecord | None:
    stmt = (select(*DEVICE_COLUMNS).join(external_ids, external_ids.c.device_id == devices.c.id)
            .where(external_ids.c.type == type, external_ids.c.value == value, scope.devices(devices.c.id)))
    row = (await db.execute(stmt)).first()
    return device_record(row) if row is not None else None


def filtered(stmt: Select[Any], scope: Scope, f: DeviceFilter | None) -> Select[Any]:
    if not scope.unrestricted:
        stmt = stmt.where(scope.devices(devices.c.id))
    if f is None:
        return stmt
    if f.type is not None:
        stmt = stmt.where(devices.c.type == f.type)
    if f.name_contains:
        stmt = stmt.where(devices.c.name.ilike(contains_pattern(f.name_contains)))
    if f.parent_id is not None:
        stmt = stmt.where(devices.c.parent_id == f.parent_id)
    if f.fragments is not None:
        stmt = stmt.where(devices.c.fragments.contains(f.fragments))
    if f.has_fragment is not None:
        stmt = stmt.where(devices.c.fragments.has_key(f.has_fragment))
    if f.group_id is not None:
        group_ids: Any = [f.group_id]
        if f.include_subgroups:
            group_ids = select(group_closure([f.group_id]).c.id)
        stmt = stmt.where(devices.c.id.in_(
            select(group_devices.c.device_id).where(group_devices.c.group_id.in_(group_ids))))
    return stmt


async def list_devices(
    db: Executor, scope: Scope, *, first: int | None, after: str | None, cap: int, filter: DeviceFilter | None = None,
) -> Page[DeviceRecord]:
    stmt, size = device_page(scope, filter=filter, first=first, after=after, cap=cap)
    rows = (await db.execute(stmt)).all()
    return build_page([device_record(r) for r in rows], size, lambda d: d.id)


def device_page(scope: Scope, *, filter: DeviceFilter | None, first: int | None, after: str | None,
                cap: int) -> tuple[Select[Any], int]:
    """The checked page statement (size + 1 rows by id) and the page size: listed here, or
    compiled into a read's JSON (app.graphql.engine.compiled)."""
    size = page_size(first, cap)
    stmt = filtered(select(*DEVICE_COLUMNS), scope, filter)
    cursor = decode_int_cursor(after)
    if cursor is not None:
        stmt = stmt.where(devices.c.id > cursor)
    return stmt.order_by(devices.c.id).limit(size + 1), size


def count_statement(scope: Scope, filter: DeviceFilter | None = None) -> Select[Any]:
    return filtered(select(func.count()).select_from(devices), scope, filter)


async def count_devices(db: Executor, scope: Scope, filter: DeviceFilter | None = None) -> int:
    return int((await db.execute(count_statement(scope, filter))).scalar_one())


async def update_device(db: Executor, scope: Scope, device_id: str, changes: DeviceChanges) -> DeviceRecord:
    key = require_id(device_id, "device")
    if scope.device_id is not None:
        raise Forbidden("a device cannot change the inventory")
    values: dict[str, Any] = {}
    if changes.name is not None:
        values["name"] = check_name(changes.name)
    if changes.type is not None:
        values["type"] = changes.type
    if changes.fragments is not None:
        values["fragments"] = _check_fragments(changes.fragments)
    if changes.required_interval is not None:
        values["required_interval"] = availability.check_interval(changes.required_interval)
        if values["required_interval"] is None:  # no longer monitored: nothing is known
            values["availability"] = "UNKNOWN"
    if changes.clear_parent:
        values["parent_id"] = None
    elif changes.parent_id is not None:
        await require_devices(db, scope, [changes.parent_id])
        # One re-parenting at a time per tenant, checked after the lock: two concurrent moves
        # (a under b, b under a) each passing a check the other had not committed made a cycle.
        await db.execute(text("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '/device-tree'))"))
        if changes.parent_id in await _descendants_and_self(db, key):
            raise InvalidInput("a device cannot become a child of itself or of its own children", field="parentId")
        values["parent_id"] = changes.parent_id
    row = (await db.execute(
        update(devices).where(devices.c.id == key, scope.devices(devices.c.id))
        .values(**values, updated_at=func.now()).returning(*DEVICE_COLUMNS)
    )).first()
    if row is None:
        raise NotFound(f"device {device_id} not found")
    return device_record(row)


async def _descendants_and_self(db: Executor, device_id: int) -> set[int]:
    tree = select(devices.c.id).where(devices.c.id == device_id).cte("subtree", recursive=True)
    tree = tree.union(select(devices.c.id).where(devices.c.parent_id == tree.c.id))  # UNION: ends even on a cycle
    return set((await db.execute(select(tree.c.id))).scalars())


async def delete_device(db: Executor, scope: Scope, device_id: str) -> None:
    """Delete a device with its children and all their data (foreign keys cascade)."""
    key = require_id(device_id, "device")
    if scope.device_id is not None:
        raise Forbidden("a device cannot change the inventory")
    # Lock first: ingest holding the device (FOR KEY SHARE) finishes before, and a child being
    # created under it (its foreign key check) waits until after, so the subtree is complete.
    locked = await db.execute(select(devices.c.id).where(devices.c.id == key, scope.devices(devices.c.id))
                              .with_for_update())
    if locked.first() is None:
        raise NotFound(f"device {device_id} not found")
    subtree = await _descendants_and_self(db, key)
    await db.execute(delete(devices).where(devices.c.id == key))  # children and other data cascade
    await db.execute(delete(measurements).where(measurements.c.device_id.in_(subtree)))


async def add_external_id(db: Executor, scope: Scope, *, device_id: int, type: str, value: str,
                          checked: bool = False) -> ExternalId:
    if not type.strip() or len(type) > 100:
        raise InvalidInput("external id type must be 1-100 characters", field="type")
    if not value.strip() or len(value) > 200:
        raise InvalidInput("externalId must be 1-200 characters", field="externalId")
    if not checked:
        await require_devices(db, scope, [device_id])
    stmt = (pg_insert(external_ids).values(type=type, value=value, device_id=device_id).on_conflict_do_nothing()
            .returning(external_ids.c.value))
    if (await db.execute(stmt)).first() is None:  # INSERT reports no rowcount here: RETURNING tells
        raise Conflict(f"external id {type}:{value} is already in use", field="externalId")
    return ExternalId(type, value, device_id)


# --- groups --------------------------------------------------------------------------------------


def group_closure(group_ids: Sequence[int]) -> Any:
    """A recursive CTE of these groups and all their subgroups."""
    closure = select(groups.c.id).where(groups.c.id.in_(group_ids)).cte("closure", recursive=True)
    return closure.union(select(groups.c.id).where(groups.c.parent_id == closure.c.id))  # UNION: ends even on a cycle


async def require_group(db: Executor, scope: Scope, group_id: int) -> GroupRecord:
    row = (await db.execute(select(*GROUP_COLUMNS).where(groups.c.id == group_id, scope.groups(groups.c.id)))).first()
    if row is None:
        raise NotFound(f"group {group_id} not found")
    return group_record(row)


async def group_by_id(db: Executor, scope: Scope, group_id: str) -> GroupRecord | None:
    key = parse_id(group_id, "group")
    if key is None:
        return None
    row = (await db.execute(select(*GROUP_COLUMNS).where(groups.c.id == key, scope.groups(groups.c.id)))).first()
    return group_record(row) if row else None


async def create_group(db: Executor, scope: Scope, *, name: str, parent_id: int | None) -> GroupRecord:
    name = check_name(name)
    if scope.device_id is not None:
        raise Forbidden("a device cannot change the inventory")
    if parent_id is not None:
        await require_group(db, scope, parent_id)
    elif not scope.unrestricted:
        raise Forbidden("your access is limited to groups: create subgroups of them (parentId)")
    row = (await db.execute(insert(groups).values(name=name, parent_id=parent_id).returning(*GROUP_COLUMNS))).one()
    return group_record(row)


async def list_groups(
    db: Executor, scope: Scope, *, first: int | None, after: str | None, cap: int, parent_id: int | None = None,
    roots_only: bool = False,
) -> Page[GroupRecord]:
    stmt, size = group_page(scope, first=first, after=after, cap=cap, parent_id=parent_id, roots_only=roots_only)
    rows = (await db.execute(stmt)).all()
    return build_page([group_record(r) for r in rows], size, lambda g: g.id)


def group_page(scope: Scope, *, first: int | None, after: str | None, cap: int, parent_id: int | None = None,
               roots_only: bool = False) -> tuple[Select[Any], int]:
    """The checked page statement (size + 1 rows by id) and the page size: listed here, or
    compiled into a read's JSON (app.graphql.engine.compiled)."""
    size = page_size(first, cap)
    stmt = select(*GROUP_COLUMNS).where(scope.groups(groups.c.id))
    if parent_id is not None:
        stmt = stmt.where(groups.c.parent_id == parent_id)
    elif roots_only:
        stmt = stmt.where(groups.c.parent_id.is_(None))
    cursor = decode_int_cursor(after)
    if cursor is not None:
        stmt = stmt.where(groups.c.id > cursor)
    return stmt.order_by(groups.c.id).limit(size + 1), size


async def set_group_devices(db: Executor, scope: Scope, *, group_id: str, device_ids: Sequence[str],
                            add: bool) -> int:
    gid = require_id(group_id, "group")
    if scope.device_id is not None:
        raise Forbidden("a device cannot change the inventory")
    await require_group(db, scope, gid)
    ids = [require_id(d, "device") for d in device_ids]
    if not ids:
        return 0
    await require_devices(db, scope, ids)
    if add:
        stmt = pg_insert(group_devices).values([{"group_id": gid, "device_id": d} for d in ids])
        added = (await db.execute(stmt.on_conflict_do_nothing().returning(group_devices.c.device_id))).all()
        return len(added)
    result = await db.execute(delete(group_devices).where(
        group_devices.c.group_id == gid, group_devices.c.device_id.in_(ids)))
    return int(result.rowcount)  # type: ignore[attr-defined]


async def delete_group(db: Executor, scope: Scope, group_id: str) -> None:
    """Delete a group and its subgroups; their devices stay (only the memberships go)."""
    gid = require_id(group_id, "group")
    if scope.device_id is not None:
        raise Forbidden("a device cannot change the inventory")
    if scope.group_ids is not None and gid in scope.group_ids:
        raise Forbidden("you cannot delete a group your access is granted through")
    result = await db.execute(delete(groups).where(groups.c.id == gid, scope.groups(groups.c.id)))
    if not result.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"group {group_id} not found")
