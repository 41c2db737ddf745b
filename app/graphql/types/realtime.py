"""GraphQL subscriptions (served by app.http.subscriptions over WebSockets and SSE).

Each resolver is a coroutine, so the access gate and the arguments are checked when the client
subscribes (errors answer the subscribe message), and it returns the stream of what the hub
(app.realtime.hub) offers it: already filtered by the subscriber's rights at delivery time, and
by these arguments here. Objects are made once per change and shared by every subscriber.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from enum import Enum
from typing import Annotated
from uuid import UUID

import strawberry

from app.auth.roles import DEVICES_READ, OPERATIONS_DEVICE, TENANT_ADMIN
from app.errors import InvalidInput, NotFound
from app.graphql.context import Context
from app.graphql.scalars import ChangePosition
from app.graphql.types.data import AlarmFilter, Event, Measurement, Operation, OperationStatus, alarm_filter
from app.graphql.types.inventory import Alarm, Device
from app.graphql.types.sharing import CopyJob
from app.graphql.types.tenants import Tenant
from app.ids import here
from app.realtime.deliveries import Delivery
from app.realtime.sessions import Subscription
from app.services.changes.log import format_position
from app.services.inventory.devices import require_id
from app.services.sharing import jobs

Info = strawberry.Info[Context, None]
FINISHED = {"SUCCEEDED", "FAILED"}


@strawberry.enum
class AlarmEventKind(Enum):
    RAISED = "RAISED"
    COUNT_INCREASED = "COUNT_INCREASED"
    STATUS_CHANGED = "STATUS_CHANGED"


@strawberry.type(description="An alarm was raised, raised again (count increased) or changed status.")
class AlarmEvent:
    kind: AlarmEventKind
    alarm: Alarm
    position: ChangePosition


@strawberry.enum
class ChangeKind(Enum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    DELETED = "DELETED"


@strawberry.type(description="A device was created, updated or deleted (then `device` is null).")
class DeviceEvent:
    kind: ChangeKind
    id: strawberry.ID
    device: Device | None
    position: ChangePosition


@strawberry.type(description="A tenant of your subtree was created, changed (status, place, details) or deleted.")
class TenantEvent:
    kind: ChangeKind
    tenant: Tenant
    position: ChangePosition


@strawberry.input
class EventFilter:
    device_id: strawberry.ID | None = None
    type: str | None = None


def _device(value: str | None) -> int | None:
    return require_id(value, "device") if value is not None else None


AFTER = strawberry.argument(description="Resume just after this position (the last one you received): every "
                                        "change since, in order, then live. Null: from now on.")


async def _open(info: Info, kind: str, needs: tuple[str, ...], select: Callable[[Delivery], Delivery | None],
                after: str | None, *, data: bool = True) -> Subscription:
    return await info.context.subscribe(kind, needs, select, data=data, after=after)


def _position(d: Delivery) -> ChangePosition:
    return ChangePosition(format_position(d.tenant_id, d.position))


@strawberry.type(name="Subscription")
class Subscriptions:
    @strawberry.subscription(description="Alarms of the routed tenant as they are raised, counted again or change "
                                         "status, filtered like the `alarms` query.")
    async def alarms(self, info: Info, filter: AlarmFilter | None = None,
                     after: Annotated[ChangePosition | None, AFTER] = None) -> AsyncIterator[AlarmEvent]:
        f = alarm_filter(filter)
        device = _device(f.device_id) if f else None

        def select(d: Delivery) -> Delivery | None:
            a = d.value
            if f is not None and ((device is not None and a.device_id != device)
                                  or (f.status and a.status not in f.status)
                                  or (f.severity and a.severity not in f.severity)
                                  or (f.type is not None and a.type != f.type)):
                return None
            return d

        subscription = await _open(info, "alarm", (DEVICES_READ,), select, after)

        async def stream() -> AsyncIterator[AlarmEvent]:
            async for d in subscription:
                yield d.shared(_alarm_event)
        return stream()

    @strawberry.subscription(description="New measurements of one device, in the batches they were written in.")
    async def measurements(self, info: Info, device_id: strawberry.ID, type: str | None = None,
                           series: str | None = None,
                           after: Annotated[ChangePosition | None, AFTER] = None) -> AsyncIterator[list[Measurement]]:
        device = require_id(device_id, "device")

        def select(d: Delivery) -> Delivery | None:
            if d.device_id != device:
                return None
            if type is None and series is None:
                return d
            return _filtered(d, type, series)

        subscription = await _open(info, "measurement", (DEVICES_READ,), select, after)

        async def stream() -> AsyncIterator[list[Measurement]]:
            async for d in subscription:
                if d.value:
                    yield d.shared(_measurements)
        return stream()

    @strawberry.subscription(description="Events as they are created or updated.")
    async def events(self, info: Info, filter: EventFilter | None = None,
                     after: Annotated[ChangePosition | None, AFTER] = None) -> AsyncIterator[Event]:
        device = _device(filter.device_id) if filter else None
        wanted = filter.type if filter else None

        def select(d: Delivery) -> Delivery | None:
            e = d.value
            return None if (device is not None and e.device_id != device) or (
                wanted is not None and e.type != wanted) else d

        subscription = await _open(info, "event", (DEVICES_READ,), select, after)

        async def stream() -> AsyncIterator[Event]:
            async for d in subscription:
                yield d.shared(_event)
        return stream()

    @strawberry.subscription(description="Operations as they are created or change status: a device agent "
                                         "(device token) waits here for its PENDING operations instead of polling.")
    async def operations(self, info: Info, device_id: strawberry.ID | None = None,
                         status: OperationStatus | None = None,
                         after: Annotated[ChangePosition | None, AFTER] = None) -> AsyncIterator[Operation]:
        device = _device(device_id)
        wanted = status.value if status is not None else None

        def select(d: Delivery) -> Delivery | None:
            o = d.value
            return None if (device is not None and o.device_id != device) or (
                wanted is not None and o.status != wanted) else d

        subscription = await _open(info, "operation", (DEVICES_READ, OPERATIONS_DEVICE), select, after)

        async def stream() -> AsyncIterator[Operation]:
            async for d in subscription:
                yield d.shared(_operation)
        return stream()

    @strawberry.subscription(description="Devices as they are created, updated or deleted.")
    async def devices(self, info: Info,
                      after: Annotated[ChangePosition | None, AFTER] = None) -> AsyncIterator[DeviceEvent]:
        subscription = await _open(info, "device", (DEVICES_READ,), lambda d: d, after)

        async def stream() -> AsyncIterator[DeviceEvent]:
            async for d in subscription:
                yield d.shared(_device_event)
        return stream()

    @strawberry.subscription(description="A copy job you asked for: its state now, then each change until it "
                                         "finishes (the stream then completes).")
    async def copy_job(self, info: Info, id: strawberry.ID,
                       after: Annotated[ChangePosition | None, AFTER] = None) -> AsyncIterator[CopyJob]:
        ctx = info.context
        principal = await ctx.user()
        try:
            key = UUID(id)
        except ValueError:
            raise InvalidInput("not a copy job id", field="id") from None
        current = await jobs.job_by_id(ctx.management_db, key, requested_by=principal.user_id)
        if current is None:
            raise NotFound(f"copy job {id} not found")
        # Its changes are in the target's log (where the copied data lands).
        subscription = await ctx.subscribe("copyjob", (), lambda d: d if d.value[0].id == key else None, data=False,
                                           log_of=current.target_tenant, after=after)

        async def stream() -> AsyncIterator[CopyJob]:
            if after is None:
                yield CopyJob.of(current)
                if current.status in FINISHED:
                    return
            async for d in subscription:
                yield d.shared(_copy_job)
                if d.value[0].status in FINISHED:
                    return
        return stream()

    @strawberry.subscription(description="Your subtree's tenants as they are created, change or are deleted "
                                         "(management plane: no tenant data).")
    async def tenants(self, info: Info,
                      after: Annotated[ChangePosition | None, AFTER] = None) -> AsyncIterator[TenantEvent]:
        subscription = await _open(info, "tenant", (TENANT_ADMIN,), lambda d: d, after, data=False)

        async def stream() -> AsyncIterator[TenantEvent]:
            async for d in subscription:
                yield d.shared(_tenant_event)
        return stream()


def _filtered(d: Delivery, type: str | None, series: str | None) -> Delivery | None:
    """The measurements of a batch this subscriber asked for: one shared delivery per filter."""
    filtered: dict[tuple[str | None, str | None], Delivery | None] = d.cache.setdefault("filtered", {})
    if (type, series) not in filtered:
        kept = [m for m in d.value if (type is None or m.type == type) and (series is None or m.series == series)]
        filtered[(type, series)] = Delivery(d.kind, d.op, kept, device_id=d.device_id, position=d.position,
                                            tenant_id=d.tenant_id) if kept else None
    return filtered[(type, series)]


# What subscribers receive, made once per delivery (Delivery.shared).

def _alarm_event(d: Delivery) -> AlarmEvent:
    return AlarmEvent(kind=AlarmEventKind(d.op), alarm=Alarm.of(d.value), position=_position(d))


class _Batch(list[Measurement]):
    """A list that can carry its rendered JSON (app.http.subscriptions renders an event once)."""


def _measurements(d: Delivery) -> list[Measurement]:
    position = _position(d)
    batch = _Batch(Measurement.of(m) for m in d.value)
    for m in batch:
        m.position = position
    return batch


def _event(d: Delivery) -> Event:
    event = Event.of(d.value)
    event.position = _position(d)
    return event


def _operation(d: Delivery) -> Operation:
    operation = Operation.of(d.value)
    operation.position = _position(d)
    return operation


def _copy_job(d: Delivery) -> CopyJob:
    job = CopyJob.of(d.value[0])
    job.position = _position(d)
    return job


def _device_event(d: Delivery) -> DeviceEvent:
    if isinstance(d.value, int):  # deleted: its id alone
        return DeviceEvent(kind=ChangeKind(d.op), id=strawberry.ID(here("Device", d.value)), device=None,
                           position=_position(d))
    return DeviceEvent(kind=ChangeKind(d.op), id=strawberry.ID(here("Device", d.value.id)), device=Device.of(d.value),
                       position=_position(d))


def _tenant_event(d: Delivery) -> TenantEvent:
    return TenantEvent(kind=ChangeKind(d.op), tenant=Tenant.of(d.value), position=_position(d))
