"""Devices: the minimal data plane inside the routed tenant."""

from __future__ import annotations

from datetime import datetime

import strawberry

from app.auth.roles import DEVICES_READ, DEVICES_WRITE
from app.graphql.connections import Connection
from app.graphql.context import Context
from app.graphql.scalars import JSON
from app.services import devices as service
from app.services.devices import DeviceRecord

Info = strawberry.Info[Context, None]


@strawberry.type
class Device:
    id: strawberry.ID
    name: str
    type: str | None
    owner: str | None
    fragments: JSON
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, r: DeviceRecord) -> Device:
        return cls(id=strawberry.ID(str(r.id)), name=r.name, type=r.type, owner=r.owner, fragments=JSON(r.fragments),
                   created_at=r.created_at, updated_at=r.updated_at)


@strawberry.input
class CreateDeviceInput:
    name: str
    type: str | None = None
    external_id: str | None = strawberry.field(default=None, description="Unique in the tenant (type 'serial').")
    fragments: JSON | None = None


@strawberry.input
class DeviceFilter:
    type: str | None = None
    name_contains: str | None = None


@strawberry.type
class DeviceQueries:
    @strawberry.field
    async def devices(
        self, info: Info, first: int | None = None, after: str | None = None, filter: DeviceFilter | None = None
    ) -> Connection[Device]:
        ctx = info.context
        await ctx.authorize(DEVICES_READ)
        db = await ctx.tenant_db()
        f = service.DeviceFilter(type=filter.type, name_contains=filter.name_contains) if filter else None
        page = await service.list_devices(db, first=first, after=after, cap=ctx.cap, filter=f)
        return Connection.of(page, Device.of, lambda: service.count_devices(db, f))

    @strawberry.field
    async def device(self, info: Info, id: strawberry.ID) -> Device | None:
        ctx = info.context
        await ctx.authorize(DEVICES_READ)
        record = await service.device_by_id(await ctx.tenant_db(), id)
        return Device.of(record) if record else None


@strawberry.type
class DeviceMutations:
    @strawberry.mutation
    async def create_device(self, info: Info, input: CreateDeviceInput) -> Device:
        ctx = info.context
        routed = await ctx.authorize(DEVICES_WRITE)
        record = await service.create_device(
            await ctx.tenant_db(), name=input.name, type=input.type, owner=str(routed.principal.user_id),
            external_id=input.external_id, fragments=input.fragments,
        )
        return Device.of(record)
