"""Access inside a tenant: custom roles, group-scoped members, retention rules (tenant admins)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import strawberry

from app.auth.roles import TENANT_ADMIN
from app.errors import NotFound
from app.graphql.context import Context
from app.ids import here
from app.services.custom_roles import roles as role_service
from app.services.data import retention
from app.services.inventory.devices import require_id

Info = strawberry.Info[Context, None]


@strawberry.type
class Role:
    name: str
    permissions: list[str]
    builtin: bool


@strawberry.type
class RetentionRule:
    id: strawberry.ID
    data_type: str = strawberry.field(description="MEASUREMENT, EVENT, ALARM, OPERATION or *")
    type: str | None
    max_age_days: int
    created_at: datetime

    @classmethod
    def of(cls, r: retention.RetentionRule) -> RetentionRule:
        return cls(id=strawberry.ID(here("RetentionRule", r.id)), data_type=r.data_type, type=r.type,
                   max_age_days=r.max_age_days, created_at=r.created_at)


@strawberry.type
class MemberGroups:
    user_id: strawberry.ID
    group_ids: list[strawberry.ID] | None = strawberry.field(description="null: the whole tenant")


def _user_id(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError as exc:
        raise NotFound(f"user {value} not found") from exc


@strawberry.type
class AccessQueries:
    @strawberry.field(description="Built-in and custom roles of the routed tenant.")
    async def roles(self, info: Info) -> list[Role]:
        ctx = info.context
        await ctx.authorize(TENANT_ADMIN)
        return [Role(name=r.name, permissions=list(r.permissions), builtin=r.builtin)
                for r in await role_service.list_roles(await ctx.tenant_db())]

    @strawberry.field
    async def retention_rules(self, info: Info) -> list[RetentionRule]:
        ctx = info.context
        await ctx.authorize(TENANT_ADMIN)
        return [RetentionRule.of(r) for r in await retention.list_rules(await ctx.tenant_db())]


@strawberry.type
class AccessMutations:
    @strawberry.mutation(description="A custom role: a named set of permissions (only ones you hold).")
    async def create_role(self, info: Info, name: str, permissions: list[str]) -> Role:
        ctx = info.context
        record = await role_service.create_role(await ctx.tenant_db(), await ctx.routed(), name=name,
                                                permissions=permissions)
        return Role(name=record.name, permissions=list(record.permissions), builtin=False)

    @strawberry.mutation
    async def delete_role(self, info: Info, name: str) -> bool:
        ctx = info.context
        await role_service.delete_role(await ctx.tenant_db(), ctx.management_db, await ctx.routed(), name=name)
        return True

    @strawberry.mutation(description="Limit a member to devices in these groups and their subgroups (null: all).")
    async def set_member_groups(self, info: Info, user_id: strawberry.ID,
                                group_ids: list[strawberry.ID] | None) -> MemberGroups:
        ctx = info.context
        routed = await ctx.routed()
        user = _user_id(user_id)
        ids = [require_id(g, "group") for g in group_ids] if group_ids is not None else None
        result = await role_service.set_member_groups(await ctx.tenant_db(), ctx.management_db, routed,
                                                      user_id=user, group_ids=ids)
        ctx.platform.registry.forget_membership(user, routed.tenant.id)
        return MemberGroups(user_id=user_id,
                            group_ids=[strawberry.ID(here("Group", g)) for g in result] if result is not None else None)

    @strawberry.mutation
    async def add_retention_rule(self, info: Info, data_type: str, max_age_days: int,
                                 type: str | None = None) -> RetentionRule:
        ctx = info.context
        await ctx.authorize(TENANT_ADMIN)
        return RetentionRule.of(await retention.add_rule(await ctx.tenant_db(), data_type=data_type, type=type,
                                                         max_age_days=max_age_days))

    @strawberry.mutation
    async def delete_retention_rule(self, info: Info, id: strawberry.ID) -> bool:
        ctx = info.context
        await ctx.authorize(TENANT_ADMIN)
        await retention.delete_rule(await ctx.tenant_db(), id)
        return True
