"""Use cases of the data plane: each checks limits, writes, counts usage and audits, in that order.

The data functions (`app.services.inventory.devices`, `…events`, `…alarms`, …) only read and write
one tenant's tables within a caller's scope. What a request does around them — the storage
and device limits, the usage counters metered once the request commits, the tenant's audit
trail and limit warnings — is decided here, so resolvers stay as thin as `createSubtenant`'s
and any other entry point (a subscription, a CLI command) gets the same behaviour.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.access.principal import Actor, Routed
from app.access.scope import Scope
from app.db.transaction import BulkExecutor, Executor
from app.runtime import announcements
from app.services.audit import data_audit
from app.services.data import alarms, events, operations
from app.services.data.measurements import NewMeasurement, create_measurements
from app.services.inventory import availability, device_templates, device_tokens, devices
from app.services.tenants import limits
from app.services.usage.statistics import check_limit_warnings
from app.tenancy.registry import TenantRecord


@dataclass
class Plane:
    """One request's work inside its routed tenant, as the access gate opened it."""

    db: BulkExecutor  # the routed tenant's plane of the request transaction
    management: Executor  # the management plane of the same transaction (limits, warnings)
    routed: Routed
    request_id: str | None = None
    # Resources created/updated; metered only once the request's transaction commits.
    usage: Counter[str] = field(default_factory=Counter)
    warning_ratio: float = 0.8  # share of a limit at which the tenant's admins are warned

    @property
    def scope(self) -> Scope:
        return self.routed.scope

    @property
    def actor(self) -> Actor:
        return self.routed.actor

    @property
    def tenant(self) -> TenantRecord:
        return self.routed.tenant

    def count(self, name: str, n: int = 1) -> None:
        self.usage[name] += n

    async def heard_from_device(self) -> None:
        """The caller is a device that just sent something: it is available (app.services.inventory.
        availability); if it was not, its unavailability alarm clears and subscribers hear both."""
        device_id = self.routed.principal.device_id
        if device_id is None or not await availability.seen(self.db, device_id):
            return
        record = await devices.device_by_id(self.db, self.scope, device_id)
        if record is not None:
            await self.announce("device", "UPDATED", rows=[record])
        cleared = await alarms.clear_of_type(self.db, device_id, availability.ALARM_TYPE)
        if cleared is not None:
            await self.announce("alarm", "STATUS_CHANGED", rows=[cleared])
        await self.audit("device.availability", str(device_id), [{"attribute": "availability",
                                                                  "previous": "UNAVAILABLE", "new": "AVAILABLE"}])

    async def announce(self, kind: str, op: str, ids: Sequence[int] = (), rows: Sequence[object] = (),
                       **extra: Any) -> None:
        """Append the change to the tenant's log, committed with the request (app.runtime.announcements)."""
        await announcements.announce(self.db, self.tenant.id, kind, op, ids, rows, **extra)
        self.count("change_count", max(len(rows) or len(ids), 1))

    async def audit(self, action: str, target: str | None, changes: list[dict[str, Any]] | None = None) -> None:
        await data_audit.record(self.db, actor=self.actor, action=action, target=target, changes=changes,
                                request_id=self.request_id)


# --- measurements, events ---------------------------------------------------------------------------

async def ingest_measurements(plane: Plane, batch: Sequence[NewMeasurement]) -> int:
    await limits.enforce_storage_limit(plane.management, plane.tenant)
    spans = await create_measurements(plane.db, plane.scope, batch)
    stored = sum(span.count for span in spans.values())
    plane.count("measurements_created_count", stored)
    await plane.heard_from_device()
    if stored:
        # One log entry per device of the batch (its time range and count), never one per row.
        # On Citus the rows' xmin is the worker's transaction id, not the coordinator's.
        worker: dict[str, Any] = {"w": xid} if (xid := await plane.db.worker_xid()) is not None else {}
        for device, span in sorted(spans.items()):
            await plane.announce("measurement", "created", device_id=device, lo=span.first.isoformat(),
                                 hi=span.last.isoformat(), n=span.count, **worker)
    return stored


async def record_event(plane: Plane, *, device_id: str, time: datetime, type: str, text: str,
                       attributes: object) -> events.EventRecord:
    await limits.enforce_storage_limit(plane.management, plane.tenant)
    record = await events.create_event(plane.db, plane.scope, device_id=device_id, time=time, type=type, text=text,
                                       attributes=attributes)
    plane.count("events_created_count")
    await plane.announce("event", "created", rows=[record])
    await plane.heard_from_device()
    return record


async def change_event(plane: Plane, event_id: str, *, text: str | None, attributes: object) -> events.EventRecord:
    record = await events.update_event(plane.db, plane.scope, event_id, text=text, attributes=attributes)
    plane.count("events_updated_count")
    await plane.announce("event", "updated", rows=[record])
    return record


# --- alarms, operations -----------------------------------------------------------------------------

async def raise_alarm(plane: Plane, *, device_id: str, type: str, severity: str, text: str) -> alarms.AlarmRecord:
    record = await alarms.raise_alarm(plane.db, plane.scope, device_id=device_id, type=type, severity=severity,
                                      text_=text)
    plane.count("alarms_created_count" if record.count == 1 else "alarms_updated_count")
    await plane.announce("alarm", "RAISED" if record.count == 1 else "COUNT_INCREASED", rows=[record])
    await plane.audit("alarm.raised", str(record.id),
                      [{"attribute": "count", "previous": record.count - 1, "new": record.count}])
    await plane.heard_from_device()
    return record


async def change_alarm_status(plane: Plane, alarm_id: str, status: str) -> alarms.AlarmRecord:
    record = await alarms.update_alarm_status(plane.db, plane.scope, alarm_id, status)
    plane.count("alarms_updated_count")
    await plane.announce("alarm", "STATUS_CHANGED", rows=[record])
    await plane.audit("alarm.status", str(record.id), [{"attribute": "status", "previous": None,
                                                         "new": record.status}])
    return record


async def create_operation(plane: Plane, *, device_id: str, description: str,
                           payload: object) -> operations.OperationRecord:
    record = await operations.create_operation(plane.db, plane.scope, device_id=device_id, description=description,
                                               payload=payload)
    plane.count("operations_created_count")
    await plane.announce("operation", "CREATED", rows=[record])
    await plane.audit("operation.created", str(record.id))
    return record


async def change_operation_status(plane: Plane, operation_id: str, status: str,
                                  failure_reason: str | None) -> operations.OperationRecord:
    record = await operations.update_operation_status(plane.db, plane.scope, operation_id, status, failure_reason)
    plane.count("operations_updated_count")
    await plane.announce("operation", "STATUS_CHANGED", rows=[record])
    await plane.audit("operation.status", str(record.id), [{"attribute": "status", "previous": None,
                                                             "new": record.status}])
    await plane.heard_from_device()
    return record


# --- inventory --------------------------------------------------------------------------------------

async def create_device(plane: Plane, *, name: str, type: str | None, external_id: str | None, fragments: object,
                        group_id: int | None, parent_id: int | None, template_id: str | None,
                        required_interval: int | None = None) -> devices.DeviceRecord:
    count = await limits.enforce_device_limit(plane.db, plane.tenant)
    if template_id is not None:
        template = await device_templates.for_device(plane.management, plane.db, plane.tenant.id, template_id)
        type = type or template.type
        fragments = {**template.fragments, **(fragments if isinstance(fragments, dict) else {})}
    record = await devices.create_device(plane.db, plane.scope, name=name, type=type,
                                         owner=str(plane.routed.principal.user_id), external_id=external_id,
                                         fragments=fragments, group_id=group_id, parent_id=parent_id,
                                         required_interval=required_interval)
    if record.required_interval is not None:
        await availability.monitor(plane.management, plane.tenant.id)
    plane.count("inventories_created_count")
    await plane.announce("device", "CREATED", rows=[record])
    await plane.audit("device.created", str(record.id), [{"attribute": "name", "previous": None,
                                                          "new": record.name}])
    if count is not None:  # a limited tenant: warn its admins when this crosses the threshold
        await check_limit_warnings(plane.management, [{"tenant_id": plane.tenant.id,
                                                       "device_with_children_count": count + 1}],
                                   ratio=plane.warning_ratio)
    return record


async def update_device(plane: Plane, device_id: str, changes: devices.DeviceChanges) -> devices.DeviceRecord:
    record = await devices.update_device(plane.db, plane.scope, device_id, changes)
    if record.required_interval is not None:
        await availability.monitor(plane.management, plane.tenant.id)
    plane.count("inventories_updated_count")
    await plane.announce("device", "UPDATED", rows=[record])
    await plane.audit("device.updated", str(record.id))
    return record


async def delete_device(plane: Plane, device_id: str) -> None:
    await devices.delete_device(plane.db, plane.scope, device_id)
    await plane.announce("device", "DELETED", [devices.require_id(device_id, "device")])
    await announcements.access_changed(plane.db, tenant_id=plane.tenant.id)  # its device tokens went with it
    await plane.audit("device.deleted", device_id)


async def create_group(plane: Plane, *, name: str, parent_id: int | None) -> devices.GroupRecord:
    record = await devices.create_group(plane.db, plane.scope, name=name, parent_id=parent_id)
    plane.count("inventories_created_count")
    return record


async def issue_device_token(plane: Plane, device_id: int) -> str:
    """A credential for one device the caller may change, shown once."""
    await devices.require_devices(plane.db, plane.scope, [device_id])
    token = await device_tokens.create(plane.db, tenant_id=plane.tenant.id, device_id=device_id)
    await plane.audit("device_token.created", str(device_id))
    return token


async def revoke_device_tokens(plane: Plane, device_id: int) -> int:
    await devices.require_devices(plane.db, plane.scope, [device_id])
    revoked = await device_tokens.revoke_all(plane.db, device_id=device_id)
    await announcements.access_changed(plane.db, tenant_id=plane.tenant.id)  # its live subscriptions end
    await plane.audit("device_token.revoked", str(device_id))
    return revoked
