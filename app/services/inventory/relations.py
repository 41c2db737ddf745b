"""Relations of a device, for both read paths: its groups, child devices, external ids and parent.

Each relation is ONE statement builder taking its parents' keys: a list of ids (the loaders batch a
page's devices) or a column of the enclosing row (the compiled read path nests the statement as a
correlated subquery). Both read paths take their rules from here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select

from app.access.scope import Scope
from app.db.transaction import Executor
from app.models.tenant import devices, external_ids, group_devices, groups
from app.services.inventory.devices import (
    DEVICE_COLUMNS,
    GROUP_COLUMNS,
    DeviceRecord,
    ExternalId,
    GroupRecord,
    device_record,
    group_record,
)

Keys = Sequence[int] | ColumnElement[Any]


def keyed(column: ColumnElement[Any], keys: Keys) -> ColumnElement[bool]:
    """`column` matches the parents' keys: IN the list, or equal to the enclosing row's column."""
    return column == keys if isinstance(keys, ColumnElement) else column.in_(keys)


def groups_statement(scope: Scope, device_keys: Keys) -> Select[Any]:
    """The groups (in scope) each device belongs to, by group id, with the device's id first."""
    return (select(group_devices.c.device_id, *GROUP_COLUMNS)
            .join(groups, groups.c.id == group_devices.c.group_id)
            .where(keyed(group_devices.c.device_id, device_keys), scope.groups(groups.c.id))
            .order_by(groups.c.id))


def children_statement(scope: Scope, parent_keys: Keys, limit: int) -> Select[Any]:
    """Up to `limit` child devices (in scope) of each parent, oldest first: ranked for a list of parents
    (the loaders), a LIMIT for the enclosing row's device (compiled reads)."""
    where = (keyed(devices.c.parent_id, parent_keys), scope.devices(devices.c.id))
    if isinstance(parent_keys, ColumnElement):
        return select(*DEVICE_COLUMNS).where(*where).order_by(devices.c.id).limit(limit)
    ranked = (select(*DEVICE_COLUMNS, func.row_number().over(partition_by=devices.c.parent_id, order_by=devices.c.id)
                     .label("rank")).where(*where).subquery())
    return select(*(ranked.c[c.name] for c in DEVICE_COLUMNS)).where(ranked.c.rank <= limit).order_by(ranked.c.id)


def external_ids_statement(device_keys: Keys) -> Select[Any]:
    """The devices' external ids, by type and value (the device is in scope already)."""
    return (select(external_ids.c.type, external_ids.c.value, external_ids.c.device_id)
            .where(keyed(external_ids.c.device_id, device_keys)).order_by(external_ids.c.type, external_ids.c.value))


def devices_statement(scope: Scope, device_keys: Keys) -> Select[Any]:
    """Devices by id, in scope (a device's parent, a node by global id)."""
    return select(*DEVICE_COLUMNS).where(keyed(devices.c.id, device_keys), scope.devices(devices.c.id))


async def groups_of_devices(db: Executor, scope: Scope, device_ids: Sequence[int]) -> dict[int, list[GroupRecord]]:
    out: dict[int, list[GroupRecord]] = defaultdict(list)
    for row in (await db.execute(groups_statement(scope, device_ids))).all():
        out[row[0]].append(group_record(row[1:]))
    return out


async def children_of_devices(db: Executor, scope: Scope, device_ids: Sequence[int],
                              limit: int) -> dict[int, list[DeviceRecord]]:
    out: dict[int, list[DeviceRecord]] = defaultdict(list)
    for row in (await db.execute(children_statement(scope, device_ids, limit))).all():
        device = device_record(row)
        assert device.parent_id is not None
        out[device.parent_id].append(device)
    return out


async def external_ids_of_devices(db: Executor, device_ids: Sequence[int]) -> dict[int, list[ExternalId]]:
    out: dict[int, list[ExternalId]] = defaultdict(list)
    for row in (await db.execute(external_ids_statement(device_ids))).all():
        out[row.device_id].append(ExternalId(type=row.type, value=row.value, device_id=row.device_id))
    return out


async def devices_by_ids(db: Executor, scope: Scope, device_ids: Sequence[int]) -> dict[int, DeviceRecord]:
    return {row.id: device_record(row) for row in (await db.execute(devices_statement(scope, device_ids))).all()}


