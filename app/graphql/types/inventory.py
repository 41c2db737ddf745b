"""Inventory: devices, child devices, external ids, groups, device credentials."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import cast

import strawberry

from app.auth.roles import DEVICES_READ, DEVICES_WRITE
from app.errors import InvalidInput
from app.graphql.connections import Connection
from app.graphql.context import Context
from app.graphql.node import Node
from app.graphql.scalars import JSON
from app.ids import here
from app.services import data_plane as use_case
from app.services.data.alarms import AlarmRecord
from app.services.inventory import devices as service
from app.services.inventory.devices import DeviceRecord, ExternalId, GroupRecord, require_id

Info = strawberry.Info[Context, None]
ALARM_PAGE_CAP = 100
CHILDREN_CAP = 500  # Device.children: more are paged with devices(filter: {parentId})


@strawberry.enum
class AlarmSeverity(Enum):
    CRITICAL = "CRITICAL"
    MAJOR = "MAJOR"
    MINOR = "MINOR"
    WARNING = "WARNING"


@strawberry.enum
class AlarmStatus(Enum):
    ACTIVE = "ACTIVE"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    CLEARED = "CLEARED"


@strawberry.enum(description="Whether a device reports within its required interval.")
class DeviceAvailability(Enum):
    AVAILABLE = "AVAILABLE"
    UNAVAILABLE = "UNAVAILABLE"
    UNKNOWN = "UNKNOWN"


@strawberry.type
class Alarm(Node):
    id: strawberry.ID
    device_id: strawberry.ID
    type: str
    severity: AlarmSeverity
    status: AlarmStatus
    text: str
    count: int = strawberry.field(description="How often it was raised while open.")
    first_raised_at: datetime
    last_raised_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, r: AlarmRecord) -> Alarm:
        return cls(id=strawberry.ID(here("Alarm", r.id)), device_id=strawberry.ID(here("Device", r.device_id)),
                   type=r.type, severity=AlarmSeverity(r.severity), status=AlarmStatus(r.status), text=r.text,
                   count=r.count, first_raised_at=r.first_raised_at, last_raised_at=r.last_raised_at,
                   updated_at=r.updated_at)


@strawberry.type
class ExternalIdentity:
    type: str
    value: str

    @classmethod
    def of(cls, r: ExternalId) -> ExternalIdentity:
        return cls(type=r.type, value=r.value)


@strawberry.type
class Group(Node):
    id: strawberry.ID
    name: str
    parent_id: strawberry.ID | None
    created_at: datetime
    local: strawberry.Private[int]  # the row's number in its tenant

    @classmethod
    def of(cls, r: GroupRecord) -> Group:
        return cls(id=strawberry.ID(here("Group", r.id)), name=r.name,
                   parent_id=strawberry.ID(here("Group", r.parent_id)) if r.parent_id else None,
                   created_at=r.created_at, local=r.id)

    @strawberry.field(description="Devices in this group, optionally with those of all its subgroups.")
    async def devices(self, info: Info, first: int | None = None, after: str | None = None,
                      include_subgroups: bool = False) -> Connection[Device]:
        ctx = info.context
        db, scope = await ctx.tenant_db(), await ctx.scope()
        f = service.DeviceFilter(group_id=self.local, include_subgroups=include_subgroups)
        page = await service.list_devices(db, scope, first=first, after=after, cap=ctx.cap, filter=f)
        return Connection.of(page, Device.of, lambda: service.count_devices(db, scope, f))

    @strawberry.field
    async def subgroups(self, info: Info, first: int | None = None, after: str | None = None) -> Connection[Group]:
        ctx = info.context
        page = await service.list_groups(await ctx.tenant_db(), await ctx.scope(), first=first, after=after,
                                         cap=ctx.cap, parent_id=self.local)
        return Connection.of(page, Group.of)


@strawberry.type
class Device(Node):
    id: strawberry.ID
    name: str
    type: str | None
    owner: str | None
    fragments: JSON
    created_at: datetime
    updated_at: datetime
    parent_id: strawberry.ID | None
    required_interval: int | None = strawberry.field(description=(
        "Seconds the device may stay silent before it is UNAVAILABLE (null: not monitored)."))
    availability: DeviceAvailability = strawberry.field(description=(
        "AVAILABLE while the device reports within its requiredInterval, UNAVAILABLE (with a "
        "c8y_UnavailabilityAlarm) once it did not, UNKNOWN when not monitored or not heard from yet."))
    local: strawberry.Private[int]  # the row's number in its tenant
    parent_local: strawberry.Private[int | None]

    @classmethod
    def of(cls, r: DeviceRecord) -> Device:
        return cls(id=strawberry.ID(here("Device", r.id)), name=r.name, type=r.type, owner=r.owner,
                   fragments=JSON(r.fragments), created_at=r.created_at, updated_at=r.updated_at,
                   parent_id=strawberry.ID(here("Device", r.parent_id)) if r.parent_id else None,
                   required_interval=r.required_interval, availability=DeviceAvailability(r.availability),
                   local=r.id, parent_local=r.parent_id)

    @strawberry.field(description="Groups this device belongs to.")
    async def groups(self, info: Info) -> list[Group]:
        return [Group.of(g) for g in await info.context.loaders.groups_by_device.load(self.local)]

    @strawberry.field(description=f"Child devices (e.g. the devices behind a gateway), oldest first: at most `first` "
                                  f"(0-{CHILDREN_CAP}); devices(filter: {{parentId}}) pages through all of them.")
    async def children(self, info: Info, first: int = 100) -> list[Device]:
        if not 0 <= first <= CHILDREN_CAP:
            raise InvalidInput(f"first must be 0-{CHILDREN_CAP}", field="first", cap=CHILDREN_CAP)
        return [Device.of(d) for d in await info.context.loaders.children_by_device.load((self.local, first))]

    @strawberry.field
    async def parent(self, info: Info) -> Device | None:
        parent = self.parent_local
        if parent is None:
            return None
        record = await info.context.loaders.device_by_id.load(parent)
        return Device.of(record) if record else None

    @strawberry.field
    async def external_ids(self, info: Info) -> list[ExternalIdentity]:
        return [ExternalIdentity.of(e) for e in await info.context.loaders.external_ids_by_device.load(self.local)]

    @strawberry.field(description=f"This device's newest alarms (at most {ALARM_PAGE_CAP}).")
    async def alarms(self, info: Info, status: list[AlarmStatus] | None = None, first: int = 10) -> list[Alarm]:
        if not 0 <= first <= ALARM_PAGE_CAP:
            raise InvalidInput(f"first must be 0-{ALARM_PAGE_CAP}", field="first", cap=ALARM_PAGE_CAP)
        statuses = tuple(sorted(s.value for s in status)) if status else ()
        found = await info.context.loaders.alarms_by_device.load((self.local, statuses, first))
        return [Alarm.of(a) for a in found]


@strawberry.input
class CreateDeviceInput:
    name: str
    type: str | None = None
    external_id: str | None = strawberry.field(default=None, description="Unique in the tenant (type 'serial').")
    group_id: strawberry.ID | None = strawberry.field(default=None, description="Put the device in this group.")
    parent_id: strawberry.ID | None = strawberry.field(default=None, description="Make it a child of this device.")
    fragments: JSON | None = None
    template_id: strawberry.ID | None = strawberry.field(
        default=None, description="Start from a template (own or shared): its type and fragments, under yours.")
    required_interval: int | None = strawberry.field(default=None, description=(
        "Seconds the device may stay silent before it is UNAVAILABLE (10 s to a year); null: not monitored."))


@strawberry.input
class UpdateDeviceInput:
    name: str | None = None
    type: str | None = None
    fragments: JSON | None = strawberry.field(default=None, description="Replaces all fragments.")
    required_interval: int | None = strawberry.field(default=None, description=(
        "Seconds the device may stay silent before it is UNAVAILABLE (10 s to a year); 0 stops monitoring."))
    parent_id: strawberry.ID | None = None
    clear_parent: bool = False


@strawberry.input
class DeviceFilter:
    type: str | None = None
    name_contains: str | None = None
    group_id: strawberry.ID | None = None
    include_subgroups: bool = False
    parent_id: strawberry.ID | None = None
    fragments: JSON | None = strawberry.field(
        default=None, description='Devices whose fragments contain this object, e.g. {"fw": {"version": "2"}}.')
    has_fragment: str | None = None


@strawberry.type
class CreatedDeviceToken:
    token: str = strawberry.field(description="Shown only here; stored hashed.")
    device_id: strawberry.ID


def _filter(f: DeviceFilter | None) -> service.DeviceFilter | None:
    if f is None:
        return None
    if f.fragments is not None and not isinstance(f.fragments, dict):
        raise InvalidInput("fragments filter must be a JSON object", field="fragments")
    return service.DeviceFilter(
        type=f.type, name_contains=f.name_contains,
        group_id=require_id(f.group_id, "group") if f.group_id is not None else None,
        include_subgroups=f.include_subgroups,
        parent_id=require_id(f.parent_id, "device") if f.parent_id is not None else None,
        fragments=f.fragments if isinstance(f.fragments, dict) else None, has_fragment=f.has_fragment,
    )


@strawberry.type
class DeviceQueries:
    @strawberry.field
    async def devices(
        self, info: Info, first: int | None = None, after: str | None = None, filter: DeviceFilter | None = None
    ) -> Connection[Device]:
        ctx = info.context
        scope = (await ctx.root("devices")).scope
        db = await ctx.tenant_db()
        f = _filter(filter)
        page = await service.list_devices(db, scope, first=first, after=after, cap=ctx.cap, filter=f)
        return Connection.of(page, Device.of, lambda: service.count_devices(db, scope, f))

    @strawberry.field
    async def device(self, info: Info, id: strawberry.ID) -> Device | None:
        ctx = info.context
        scope = (await ctx.root("device")).scope
        record = await service.device_by_id(await ctx.tenant_db(), scope, id)
        return Device.of(record) if record else None

    @strawberry.field
    async def device_by_external_id(self, info: Info, value: str, type: str = "serial") -> Device | None:
        ctx = info.context
        scope = (await ctx.authorize(DEVICES_READ)).scope
        record = await service.device_by_external_id(await ctx.tenant_db(), scope, type=type, value=value)
        return Device.of(record) if record else None

    @strawberry.field(description="Groups; top-level ones unless parentId is given.")
    async def groups(self, info: Info, first: int | None = None, after: str | None = None,
                     parent_id: strawberry.ID | None = None) -> Connection[Group]:
        ctx = info.context
        scope = (await ctx.root("groups")).scope
        page = await service.list_groups(
            await ctx.tenant_db(), scope, first=first, after=after, cap=ctx.cap,
            parent_id=require_id(parent_id, "group") if parent_id is not None else None,
            roots_only=parent_id is None and scope.unrestricted)
        return Connection.of(page, Group.of)

    @strawberry.field
    async def group(self, info: Info, id: strawberry.ID) -> Group | None:
        ctx = info.context
        scope = (await ctx.root("group")).scope
        record = await service.group_by_id(await ctx.tenant_db(), scope, id)
        return Group.of(record) if record else None


@strawberry.type
class DeviceMutations:
    @strawberry.mutation
    async def create_device(self, info: Info, input: CreateDeviceInput) -> Device:
        plane = await info.context.data_plane(DEVICES_WRITE)
        return Device.of(await use_case.create_device(
            plane, name=input.name, type=input.type, external_id=input.external_id,
            fragments=cast(object, input.fragments), template_id=input.template_id,
            required_interval=input.required_interval,
            group_id=require_id(input.group_id, "group") if input.group_id is not None else None,
            parent_id=require_id(input.parent_id, "device") if input.parent_id is not None else None))

    @strawberry.mutation
    async def update_device(self, info: Info, id: strawberry.ID, input: UpdateDeviceInput) -> Device:
        plane = await info.context.data_plane(DEVICES_WRITE)
        return Device.of(await use_case.update_device(plane, id, service.DeviceChanges(
            name=input.name, type=input.type, fragments=input.fragments, clear_parent=input.clear_parent,
            required_interval=input.required_interval,
            parent_id=require_id(input.parent_id, "device") if input.parent_id is not None else None)))

    @strawberry.mutation(description="Delete a device, its child devices and all their data.")
    async def delete_device(self, info: Info, id: strawberry.ID) -> bool:
        await use_case.delete_device(await info.context.data_plane(DEVICES_WRITE), id)
        return True

    @strawberry.mutation
    async def add_external_id(self, info: Info, device_id: strawberry.ID, value: str,
                              type: str = "serial") -> ExternalIdentity:
        ctx = info.context
        scope = (await ctx.authorize(DEVICES_WRITE)).scope
        created = await service.add_external_id(await ctx.tenant_db(), scope, device_id=require_id(device_id, "device"),
                                                type=type, value=value)
        return ExternalIdentity.of(created)

    @strawberry.mutation
    async def create_group(self, info: Info, name: str, parent_id: strawberry.ID | None = None) -> Group:
        plane = await info.context.data_plane(DEVICES_WRITE)
        return Group.of(await use_case.create_group(
            plane, name=name, parent_id=require_id(parent_id, "group") if parent_id else None))

    @strawberry.mutation(description="Delete a group and its subgroups; the devices stay.")
    async def delete_group(self, info: Info, id: strawberry.ID) -> bool:
        ctx = info.context
        scope = (await ctx.authorize(DEVICES_WRITE)).scope
        await service.delete_group(await ctx.tenant_db(), scope, id)
        return True

    @strawberry.mutation(description="Add devices to a group; returns how many were not in it yet.")
    async def add_devices_to_group(self, info: Info, group_id: strawberry.ID, device_ids: list[strawberry.ID]) -> int:
        ctx = info.context
        scope = (await ctx.authorize(DEVICES_WRITE)).scope
        return await service.set_group_devices(await ctx.tenant_db(), scope, group_id=group_id,
                                               device_ids=device_ids, add=True)

    @strawberry.mutation
    async def remove_devices_from_group(self, info: Info, group_id: strawberry.ID,
                                        device_ids: list[strawberry.ID]) -> int:
        ctx = info.context
        scope = (await ctx.authorize(DEVICES_WRITE)).scope
        return await service.set_group_devices(await ctx.tenant_db(), scope, group_id=group_id,
                                               device_ids=device_ids, add=False)

    @strawberry.mutation(description="A credential for one device, shown once.")
    async def create_device_token(self, info: Info, device_id: strawberry.ID) -> CreatedDeviceToken:
        plane = await info.context.data_plane(DEVICES_WRITE)
        token = await use_case.issue_device_token(plane, require_id(device_id, "device"))
        return CreatedDeviceToken(token=token, device_id=device_id)

    @strawberry.mutation(description="Revoke every credential of a device; returns how many.")
    async def revoke_device_tokens(self, info: Info, device_id: strawberry.ID) -> int:
        plane = await info.context.data_plane(DEVICES_WRITE)
        return await use_case.revoke_device_tokens(plane, require_id(device_id, "device"))
