"""Objects by global id (`node`, `nodes`): rows of the routed tenant, in the caller's scope."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from app.access.scope import Scope
from app.db.transaction import Executor
from app.models.tenant import alarms, events, groups, measurements, operations
from app.services.data import alarms as alarm_service
from app.services.data import events as event_service
from app.services.data import measurements as measurement_service
from app.services.data import operations as operation_service
from app.services.inventory import devices as device_service
from app.services.inventory import relations
from app.services.rows import to_record

# Rows that belong to a device: (table, columns, record), visible when their device is in scope.
_DEVICE_DATA: dict[str, tuple[Any, Any, type[Any]]] = {
    "Alarm": (alarms, alarm_service.COLUMNS, alarm_service.AlarmRecord),
    "Event": (events, event_service.COLUMNS, event_service.EventRecord),
    "Operation": (operations, operation_service.COLUMNS, operation_service.OperationRecord),
    "Measurement": (measurements, measurement_service.COLUMNS, measurement_service.MeasurementRecord),
}
TYPES = frozenset({"Device", "Group", *_DEVICE_DATA})


async def by_ids(db: Executor, scope: Scope, type_name: str, ids: Sequence[int]) -> dict[int, Any]:
    """The records of `type_name` with these row ids that the scope lets the caller see."""
    if type_name == "Device":
        return await relations.devices_by_ids(db, scope, ids)
    if type_name == "Group":
        rows = await db.execute(select(*device_service.GROUP_COLUMNS).where(groups.c.id.in_(ids),
                                                                            scope.groups(groups.c.id)))
        return {r.id: to_record(device_service.GroupRecord, r) for r in rows}
    table, columns, record = _DEVICE_DATA[type_name]
    rows = await db.execute(select(*columns).where(table.c.id.in_(ids), scope.devices(table.c.device_id)))
    return {r.id: to_record(record, r) for r in rows}
