"""Tenant options: category + key → value; keys under `credentials.` are write-only secrets."""

from __future__ import annotations

import strawberry

from app.graphql.context import Context
from app.services.tenants import options as service

Info = strawberry.Info[Context, None]


@strawberry.type(description="A tenant option. Secrets (keys under 'credentials.') read value null and isSet true.")
class TenantOption:
    category: str
    key: str
    value: str | None
    is_set: bool
    inheritable: bool
    defined_in: strawberry.ID = strawberry.field(description="The tenant that set it (an ancestor's, if inherited).")

    @classmethod
    def of(cls, record: service.OptionRecord) -> TenantOption:
        return cls(category=record.category, key=record.key, value=record.value, is_set=record.is_set,
                   inheritable=record.inheritable, defined_in=strawberry.ID(record.defined_in))


@strawberry.input
class SetTenantOptionInput:
    category: str
    key: str
    value: str
    inheritable: bool = strawberry.field(default=False, description="Also readable by descendants.")


@strawberry.type
class OptionQueries:
    @strawberry.field(description="The routed tenant's options and its ancestors' inheritable ones (nearest wins).")
    async def tenant_options(self, info: Info, category: str | None = None) -> list[TenantOption]:
        ctx = info.context
        return [TenantOption.of(r) for r in await service.list_options(ctx.management_db, await ctx.routed(),
                                                                       category=category)]


@strawberry.type
class OptionMutations:
    @strawberry.mutation(description="Set an option of the routed tenant (its own admins). Keys under 'credentials.' "
                                     "are stored sealed and can never be read back.")
    async def set_tenant_option(self, info: Info, input: SetTenantOptionInput) -> TenantOption:
        ctx = info.context
        record = await service.set_option(
            ctx.management_db, await ctx.routed(), service.option_box(ctx.platform.settings.resolved_secret_key()),
            category=input.category, key=input.key, value=input.value, inheritable=input.inheritable,
            request_id=ctx.request_id)
        return TenantOption.of(record)

    @strawberry.mutation(description="Delete an option of the routed tenant; false if it had none.")
    async def delete_tenant_option(self, info: Info, category: str, key: str) -> bool:
        ctx = info.context
        return await service.delete_option(ctx.management_db, await ctx.routed(), category=category, key=key,
                                           request_id=ctx.request_id)
