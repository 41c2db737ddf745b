"""Device templates: defined by a tenant, shared read-only with chosen descendants."""

from __future__ import annotations

from datetime import datetime

import strawberry

from app.auth.roles import DEVICES_READ
from app.graphql.context import Context
from app.graphql.scalars import JSON
from app.services.inventory import device_templates as service

Info = strawberry.Info[Context, None]


@strawberry.type
class DeviceTemplate:
    id: strawberry.ID
    name: str
    type: str
    fragments: JSON = strawberry.field(description="Default fragments of devices created from it.")
    series: JSON = strawberry.field(description="Expected measurement series.")
    version: int
    owner_tenant_id: strawberry.ID
    read_only: bool = strawberry.field(description="A copy shared by an ancestor: it follows its owner's changes.")
    shared_with: list[strawberry.ID] = strawberry.field(description="For the owner: the tenants holding copies.")
    updated_at: datetime

    @classmethod
    def of(cls, r: service.TemplateRecord) -> DeviceTemplate:
        return cls(id=strawberry.ID(str(r.id)), name=r.name, type=r.type, fragments=JSON(r.fragments),
                   series=JSON(r.series), version=r.version, owner_tenant_id=strawberry.ID(r.owner_tenant),
                   read_only=r.read_only, shared_with=[strawberry.ID(t) for t in r.shared_with],
                   updated_at=r.updated_at)


@strawberry.input
class DeviceTemplateInput:
    name: str | None = None
    type: str | None = None
    fragments: JSON | None = None
    series: JSON | None = None

    def values(self) -> service.TemplateInput:
        return service.TemplateInput(name=self.name, type=self.type, fragments=self.fragments, series=self.series)


@strawberry.type
class TemplateQueries:
    @strawberry.field(description="This tenant's own templates and the read-only copies shared with it.")
    async def device_templates(self, info: Info) -> list[DeviceTemplate]:
        ctx = info.context
        routed = await ctx.authorize(DEVICES_READ)
        found = await service.visible(ctx.management_db, await ctx.tenant_db(), routed.tenant.id)
        return [DeviceTemplate.of(t) for t in found]


@strawberry.type
class TemplateMutations:
    @strawberry.mutation
    async def create_device_template(self, info: Info, input: DeviceTemplateInput) -> DeviceTemplate:
        ctx = info.context
        return DeviceTemplate.of(await service.create(ctx.platform.db.app, await ctx.routed(), input.values(),
                                                      request_id=ctx.request_id))

    @strawberry.mutation(description="Change a template you own; every shared copy follows. Copies: FORBIDDEN.")
    async def update_device_template(self, info: Info, id: strawberry.ID, input: DeviceTemplateInput) -> DeviceTemplate:
        ctx = info.context
        return DeviceTemplate.of(await service.change(ctx.platform.db.app, await ctx.routed(), id, input.values(),
                                                      request_id=ctx.request_id))

    @strawberry.mutation(description="Share a template (read-only) with some of your descendants.")
    async def publish_device_template(self, info: Info, id: strawberry.ID,
                                      tenant_ids: list[strawberry.ID]) -> DeviceTemplate:
        ctx = info.context
        return DeviceTemplate.of(await service.publish(ctx.platform.db.app, await ctx.routed(), id, tenant_ids,
                                                       request_id=ctx.request_id))

    @strawberry.mutation(description="Withdraw a template from these tenants, or (no tenantIds) everywhere and "
                                     "delete it.")
    async def withdraw_device_template(self, info: Info, id: strawberry.ID,
                                       tenant_ids: list[strawberry.ID] | None = None) -> bool:
        ctx = info.context
        return await service.withdraw(ctx.platform.db.app, await ctx.routed(), id, tenant_ids,
                                      request_id=ctx.request_id)
