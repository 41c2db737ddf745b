"""Device data: measurements, events, alarms and operations."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Any, cast

import strawberry
from graphql import GraphQLInputObjectType, GraphQLResolveInfo, GraphQLSchema

from app.auth.roles import (
    ALARMS_WRITE,
    EVENTS_WRITE,
    MEASUREMENTS_WRITE,
    OPERATIONS_DEVICE,
    OPERATIONS_WRITE,
)
from app.graphql.connections import Connection
from app.graphql.context import Context
from app.graphql.engine import execution
from app.graphql.node import Node
from app.graphql.scalars import JSON, ChangePosition
from app.graphql.types.inventory import Alarm, AlarmSeverity, AlarmStatus
from app.ids import here
from app.inputs import MAX_MAGNITUDE, InputRejected, check_datetime
from app.services import data_plane as use_case
from app.services.data import alarms as alarm_service
from app.services.data import events as event_service
from app.services.data import measurements as measurement_service
from app.services.data import operations as operation_service
from app.services.data.events import EventRecord
from app.services.data.measurements import MeasurementRecord, NewMeasurement, SeriesBucket
from app.services.data.operations import OperationRecord

Info = strawberry.Info[Context, None]
FROM = strawberry.argument(name="from")  # `from` is a Python keyword


@strawberry.type
class Measurement(Node):
    id: strawberry.ID
    device_id: strawberry.ID
    time: datetime
    type: str
    series: str
    value: float
    unit: str | None

    position: ChangePosition | None = strawberry.field(
        default=None, description="Where a subscription delivered this in the tenant's change log (null in queries).")

    @classmethod
    def of(cls, r: MeasurementRecord) -> Measurement:
        return cls(id=strawberry.ID(here("Measurement", r.id)), device_id=strawberry.ID(here("Device", r.device_id)),
                   time=r.time, type=r.type, series=r.series, value=r.value, unit=r.unit)


@strawberry.input
class MeasurementInput:
    device_id: strawberry.ID
    time: datetime
    type: str
    series: str
    value: float
    unit: str | None = None


def _new_measurement(value: dict[str, Any]) -> NewMeasurement:
    """graphql-core's `out_type` for MeasurementInput: the service's record, built once per item."""
    return NewMeasurement(device_id=value["deviceId"], time=value["time"], type=value["type"],
                          series=value["series"], value=value["value"], unit=value.get("unit"))


_tuple_new = tuple.__new__
_MEASUREMENT_KEYS = frozenset(("deviceId", "time", "type", "series", "value", "unit"))


def _measurement_shortcut(value: Any) -> Any:
    """The coercion of a MeasurementInput as devices send it, in one pass (execution.shortcut).

    Strings without NUL, a float within bounds, a time that `datetime.fromisoformat` reads and
    the boundary accepts: graphql-core's result (the `_parse_datetime` of the DateTime
    scalar, the checks of app.graphql.engine.boundary, `_new_measurement`). Anything else (an
    integer value, an unknown key, a time only dateutil reads, any bad value) is declined and
    coerced field by field, so its errors are graphql-core's. The one addition is the time's
    text, where COPY can take it as it came (`copy_time`); graphql-core's path leaves it None.
    """
    if type(value) is not dict or not value.keys() <= _MEASUREMENT_KEYS:
        return execution.DECLINE
    device, stamp, kind, series = value.get("deviceId"), value.get("time"), value.get("type"), value.get("series")
    number, unit = value.get("value"), value.get("unit")
    if type(device) is not str or type(stamp) is not str or type(kind) is not str or type(series) is not str \
            or type(number) is not float or not -MAX_MAGNITUDE <= number <= MAX_MAGNITUDE \
            or "\x00" in device or "\x00" in kind or "\x00" in series:
        return execution.DECLINE
    if unit is not None and (type(unit) is not str or "\x00" in unit):
        return execution.DECLINE
    try:
        time = check_datetime(datetime.fromisoformat(stamp))
    except (ValueError, InputRejected):
        return execution.DECLINE
    # tuple.__new__ itself: NamedTuple's generated __new__ is one more Python call per item
    return _tuple_new(NewMeasurement, (device, time, kind, series, number, unit, measurement_service.copy_time(stamp)))


def _already_built(cls: type, value: NewMeasurement, context: object) -> NewMeasurement:
    # graphql-core has coerced and checked every field and built the record (_new_measurement);
    # Strawberry's generic conversion (~40 µs an item) would only rebuild it.
    return value


MeasurementInput.__strawberry_definition__.from_input = _already_built  # type: ignore[attr-defined]


@strawberry.enum
class AggregationInterval(Enum):
    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"


@strawberry.type(description="Aggregates of one series over one interval bucket.")
class SeriesPoint:
    series: str
    bucket: datetime
    min: float
    max: float
    avg: float
    count: int
    sum: float

    @classmethod
    def of(cls, r: SeriesBucket) -> SeriesPoint:
        return cls(series=r.series, bucket=r.bucket, min=r.min, max=r.max, avg=r.avg, count=r.count, sum=r.sum)


@strawberry.type
class Event(Node):
    id: strawberry.ID
    device_id: strawberry.ID
    time: datetime
    type: str
    text: str
    attributes: JSON
    created_at: datetime
    updated_at: datetime

    position: ChangePosition | None = strawberry.field(
        default=None, description="Where a subscription delivered this in the tenant's change log (null in queries).")

    @classmethod
    def of(cls, r: EventRecord) -> Event:
        return cls(id=strawberry.ID(here("Event", r.id)), device_id=strawberry.ID(here("Device", r.device_id)),
                   time=r.time, type=r.type, text=r.text, attributes=JSON(r.attributes), created_at=r.created_at,
                   updated_at=r.updated_at)


@strawberry.input
class CreateEventInput:
    device_id: strawberry.ID
    time: datetime
    type: str
    text: str
    attributes: JSON | None = None


@strawberry.input
class UpdateEventInput:
    text: str | None = None
    attributes: JSON | None = None


@strawberry.input
class RaiseAlarmInput:
    device_id: strawberry.ID
    type: str
    severity: AlarmSeverity
    text: str


@strawberry.input
class AlarmFilter:
    device_id: strawberry.ID | None = None
    status: list[AlarmStatus] | None = None
    severity: list[AlarmSeverity] | None = None
    type: str | None = None


def alarm_filter(filter: AlarmFilter | None) -> alarm_service.AlarmFilter | None:
    """The service's filter (also what the compiled read path builds: app.graphql.engine.compiled)."""
    return alarm_service.AlarmFilter(
        device_id=filter.device_id, type=filter.type,
        status=[s.value for s in filter.status] if filter.status else None,
        severity=[s.value for s in filter.severity] if filter.severity else None,
    ) if filter else None


@strawberry.enum
class OperationStatus(Enum):
    PENDING = "PENDING"
    EXECUTING = "EXECUTING"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"


@strawberry.type
class Operation(Node):
    id: strawberry.ID
    device_id: strawberry.ID
    status: OperationStatus
    description: str
    payload: JSON
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime

    position: ChangePosition | None = strawberry.field(
        default=None, description="Where a subscription delivered this in the tenant's change log (null in queries).")

    @classmethod
    def of(cls, r: OperationRecord) -> Operation:
        return cls(id=strawberry.ID(here("Operation", r.id)), device_id=strawberry.ID(here("Device", r.device_id)),
                   status=OperationStatus(r.status), description=r.description, payload=JSON(r.payload),
                   failure_reason=r.failure_reason, created_at=r.created_at, updated_at=r.updated_at)


@strawberry.input
class CreateOperationInput:
    device_id: strawberry.ID
    description: str
    payload: JSON | None = None


@strawberry.type
class DataQueries:
    @strawberry.field(description="One device's measurements in time order (from inclusive, to exclusive).")
    async def measurements(
        self, info: Info, device_id: strawberry.ID, from_: Annotated[datetime | None, FROM] = None,
        to: datetime | None = None, type: str | None = None, series: str | None = None, first: int | None = None,
        after: str | None = None,
    ) -> Connection[Measurement]:
        ctx = info.context
        scope = (await ctx.root("measurements")).scope
        page = await measurement_service.list_measurements(
            await ctx.tenant_db(), scope, device_id=device_id, start=from_, end=to, type=type, series=series,
            first=first, after=after, cap=ctx.cap)
        return Connection.of(page, Measurement.of)

    @strawberry.field(description="min/max/avg/count/sum per series and interval, computed in the database.")
    async def measurement_series(
        self, info: Info, device_id: strawberry.ID, from_: Annotated[datetime, FROM],
        to: datetime, interval: AggregationInterval = AggregationInterval.HOUR,
        type: str | None = None, series: str | None = None,
    ) -> list[SeriesPoint]:
        ctx = info.context
        scope = (await ctx.root("measurementSeries")).scope
        buckets = await measurement_service.measurement_series(
            await ctx.tenant_db(), scope, device_id=device_id, start=from_, end=to, interval=interval.value,
            type=type, series=series)
        return [SeriesPoint.of(b) for b in buckets]

    @strawberry.field
    async def events(
        self, info: Info, device_id: strawberry.ID | None = None, type: str | None = None,
        from_: Annotated[datetime | None, FROM] = None, to: datetime | None = None,
        first: int | None = None, after: str | None = None,
    ) -> Connection[Event]:
        ctx = info.context
        scope = (await ctx.root("events")).scope
        page = await event_service.list_events(await ctx.tenant_db(), scope, device_id=device_id, type=type,
                                               start=from_, end=to, first=first, after=after, cap=ctx.cap)
        return Connection.of(page, Event.of)

    @strawberry.field
    async def alarms(self, info: Info, filter: AlarmFilter | None = None, first: int | None = None,
                     after: str | None = None) -> Connection[Alarm]:
        ctx = info.context
        scope = (await ctx.root("alarms")).scope
        f = alarm_filter(filter)
        page = await alarm_service.list_alarms(await ctx.tenant_db(), scope, filter=f, first=first, after=after,
                                               cap=ctx.cap)
        return Connection.of(page, Alarm.of)

    @strawberry.field(description="Operations; a device token sees only its own.")
    async def operations(self, info: Info, device_id: strawberry.ID | None = None,
                         status: OperationStatus | None = None, first: int | None = None,
                         after: str | None = None) -> Connection[Operation]:
        ctx = info.context
        scope = (await ctx.root("operations")).scope
        page = await operation_service.list_operations(
            await ctx.tenant_db(), scope, device_id=device_id, status=status.value if status else None,
            first=first, after=after, cap=ctx.cap)
        return Connection.of(page, Operation.of)


async def _create_measurements(ctx: Context, batch: list[NewMeasurement]) -> int:
    return await use_case.ingest_measurements(await ctx.data_plane(MEASUREMENTS_WRITE), batch)


def install_ingest_path(schema: GraphQLSchema) -> None:
    """Serve createMeasurements without Strawberry's per-item argument walk.

    graphql-core builds each item as a NewMeasurement (`out_type`); Strawberry would then
    still visit all of them (type checks per item, ~5 ms per 1,000) only to hand back the
    same objects. The resolver installed here is the Strawberry one minus that walk: the
    same function, given graphql-core's coerced list. Items as devices send them are coerced
    by `_measurement_shortcut` in one pass. bench/ingest.py measures it.
    """
    measurement_input = schema.type_map["MeasurementInput"]
    assert isinstance(measurement_input, GraphQLInputObjectType)
    measurement_input.out_type = _new_measurement  # type: ignore[method-assign]
    execution.shortcut(measurement_input, _measurement_shortcut)
    assert schema.mutation_type is not None
    field = schema.mutation_type.fields["createMeasurements"]

    async def resolve(_source: object, info: GraphQLResolveInfo[Context], input: list[NewMeasurement]) -> int:
        return await _create_measurements(info.context, input)

    field.resolve = resolve


@strawberry.type
class DataMutations:
    @strawberry.mutation(description=f"Store up to {measurement_service.MAX_BATCH} measurements in one transaction; "
                                     "returns how many.")
    async def create_measurements(self, info: Info, input: list[MeasurementInput]) -> int:
        return await _create_measurements(info.context, cast(list[NewMeasurement], input))  # see _already_built

    @strawberry.mutation
    async def create_event(self, info: Info, input: CreateEventInput) -> Event:
        plane = await info.context.data_plane(EVENTS_WRITE)
        return Event.of(await use_case.record_event(plane, device_id=input.device_id, time=input.time,
                                                    type=input.type, text=input.text, attributes=input.attributes))

    @strawberry.mutation
    async def update_event(self, info: Info, id: strawberry.ID, input: UpdateEventInput) -> Event:
        plane = await info.context.data_plane(EVENTS_WRITE)
        return Event.of(await use_case.change_event(plane, id, text=input.text, attributes=input.attributes))

    @strawberry.mutation(description="Raise an alarm; an open one of the same device and type counts up instead.")
    async def raise_alarm(self, info: Info, input: RaiseAlarmInput) -> Alarm:
        plane = await info.context.data_plane(ALARMS_WRITE)
        return Alarm.of(await use_case.raise_alarm(plane, device_id=input.device_id, type=input.type,
                                                   severity=input.severity.value, text=input.text))

    @strawberry.mutation(description="ACTIVE → ACKNOWLEDGED → CLEARED (or ACTIVE → CLEARED).")
    async def update_alarm_status(self, info: Info, id: strawberry.ID, status: AlarmStatus) -> Alarm:
        plane = await info.context.data_plane(ALARMS_WRITE)
        return Alarm.of(await use_case.change_alarm_status(plane, id, status.value))

    @strawberry.mutation
    async def create_operation(self, info: Info, input: CreateOperationInput) -> Operation:
        plane = await info.context.data_plane(OPERATIONS_WRITE)
        return Operation.of(await use_case.create_operation(plane, device_id=input.device_id,
                                                            description=input.description, payload=input.payload))

    @strawberry.mutation(description="PENDING → EXECUTING → SUCCESSFUL | FAILED (with failureReason).")
    async def update_operation_status(self, info: Info, id: strawberry.ID, status: OperationStatus,
                                      failure_reason: str | None = None) -> Operation:
        plane = await info.context.data_plane(OPERATIONS_WRITE, OPERATIONS_DEVICE)
        return Operation.of(await use_case.change_operation_status(plane, id, status.value, failure_reason))
