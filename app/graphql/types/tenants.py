"""Tenants: the management plane (tree, lifecycle, limits)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry
from strawberry import UNSET

from app.graphql.connections import Connection
from app.graphql.context import Context
from app.graphql.scalars import JSON, Long
from app.services.tenants import lifecycle
from app.services.tenants import queries as service
from app.tenancy.registry import TenantRecord

Info = strawberry.Info[Context, None]


@strawberry.enum
class TenantKind(Enum):
    MANAGEMENT = "MANAGEMENT"
    ENTERPRISE = "ENTERPRISE"
    STANDARD = "STANDARD"


@strawberry.enum
class TenantStatus(Enum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    DELETED = "DELETED"


def _long(value: int | None) -> Long | None:
    return Long(value) if value is not None else None


@strawberry.enum(description="Whether parent-level users may reach a tenant's data (set by its own admins).")
class ParentAccess(Enum):
    MANAGEMENT_ONLY = "MANAGEMENT_ONLY"
    FULL = "FULL"


@strawberry.type(description="Limits of a tenant (null: unlimited) with current usage beside each. Device count "
                             "and storage are as of the last usage snapshot; users and subtenants are live.")
class TenantLimits:
    max_devices: Long | None
    device_count: Long
    max_users: Long | None
    user_count: Long
    max_subtenants: Long | None
    subtenant_count: Long
    storage_bytes: Long | None
    storage_used: Long
    requests_per_second: int | None
    request_burst: int | None


@strawberry.type(description="Where a tenant's data lives and how much it stores.")
class TenantPlacement:
    node: str | None = strawberry.field(description="host:port of the Citus node holding the tenant's schema; "
                                                    "null on a single PostgreSQL server.")
    size_bytes: Long = strawberry.field(description="Tables, indexes and TOAST of the tenant's schema, as stored "
                                                    "on that node (bytes, now; usage snapshots keep the history).")


@strawberry.type
class Tenant:
    id: strawberry.ID
    domain: str
    company: str
    kind: TenantKind
    status: TenantStatus
    parent_id: strawberry.ID | None
    depth: int
    allow_create_tenants: bool
    contact_name: str | None
    contact_email: str | None
    custom_properties: JSON | None
    template: str
    created_at: datetime
    updated_at: datetime
    schema_version: str | None
    parent_access: ParentAccess
    _record: strawberry.Private[TenantRecord]

    @classmethod
    def of(cls, r: TenantRecord) -> Tenant:
        return cls(
            id=strawberry.ID(r.id), domain=r.domain, company=r.company, kind=TenantKind(r.kind),
            status=TenantStatus(r.status), parent_id=strawberry.ID(r.parent_id) if r.parent_id else None,
            depth=r.depth, allow_create_tenants=r.allow_create_tenants, contact_name=r.contact_name,
            contact_email=r.contact_email, custom_properties=JSON(r.custom_properties), template=r.template,
            created_at=r.created_at, updated_at=r.updated_at, schema_version=r.schema_version,
            parent_access=ParentAccess(r.parent_access), _record=r,
        )

    @strawberry.field
    async def limits(self, info: Info) -> TenantLimits:
        r = self._record
        used = await info.context.limit_usage.load(r.id)
        return TenantLimits(
            max_devices=_long(r.max_devices), device_count=Long(used.devices),
            max_users=_long(r.max_users), user_count=Long(used.users),
            max_subtenants=_long(r.max_subtenants), subtenant_count=Long(used.subtenants),
            storage_bytes=_long(r.storage_bytes), storage_used=Long(used.storage),
            requests_per_second=r.requests_per_second, request_burst=r.request_burst,
        )

    @strawberry.field(description="Where the tenant's schema lives (its Citus node) and its size now. The "
                                  "operator's alone (the management tenant's admins); null for a deleted tenant.")
    async def placement(self, info: Info) -> TenantPlacement | None:
        found = await info.context.placements.load(self.id)
        return TenantPlacement(node=found.node, size_bytes=Long(found.size_bytes)) if found else None

    @strawberry.field(description="The parent, when the caller may see it (its own tenant or below).")
    async def parent(self, info: Info) -> Tenant | None:
        if self.parent_id is None:
            return None
        ctx = info.context
        record = await service.visible_tenant(ctx.platform, ctx.management_db, await ctx.routed(), self.parent_id)
        return Tenant.of(record) if record else None

    @strawberry.field(description="Direct subtenants (ADMIN of this tenant or an ancestor).")
    async def children(self, info: Info, first: int | None = None, after: str | None = None) -> Connection[Tenant]:
        ctx = info.context
        routed = await ctx.routed()
        page = await service.list_subtree(ctx.management_db, routed, first=first, after=after, cap=ctx.cap,
                                          parent_id=self.id)
        return Connection.of(page, Tenant.of,
                             lambda: service.count_subtree(ctx.management_db, routed, parent_id=self.id))


@strawberry.input(description="Limits; omitted fields stay as they are, null means unlimited.")
class TenantLimitsInput:
    max_devices: Long | None = UNSET
    max_users: Long | None = UNSET
    max_subtenants: Long | None = UNSET
    storage_bytes: Long | None = UNSET
    requests_per_second: int | None = UNSET
    request_burst: int | None = UNSET

    def to_dict(self) -> dict[str, int | None]:
        return {k: v for k, v in vars(self).items() if v is not UNSET}


@strawberry.input
class CreateSubtenantInput:
    domain: str
    company: str
    admin_email: str
    kind: TenantKind = TenantKind.STANDARD
    admin_password: str | None = strawberry.field(
        default=None, description="For a new user; without it the admin is invited.")
    template: str | None = strawberry.field(default=None, description="Default: the kind, lower-cased.")
    allow_create_tenants: bool | None = strawberry.field(
        default=None, description="Default: true for ENTERPRISE, false for STANDARD.")
    custom_properties: JSON | None = None
    contact_name: str | None = None
    contact_email: str | None = None
    limits: TenantLimitsInput | None = None


@strawberry.input
class UpdateTenantInput:
    domain: str | None = None
    company: str | None = None
    allow_create_tenants: bool | None = None
    custom_properties: JSON | None = None
    contact_name: str | None = None
    contact_email: str | None = None
    limits: TenantLimitsInput | None = None


@strawberry.input
class TenantFilter:
    status: TenantStatus | None = None
    kind: TenantKind | None = None
    parent_id: strawberry.ID | None = None
    search: str | None = strawberry.field(default=None, description="Substring of domain or company.")


def tenant_filter(filter: TenantFilter | None) -> service.TenantFilter:
    """The service's filter (also what the compiled read path builds: app.graphql.engine.compiled)."""
    return service.TenantFilter(
        status=filter.status.value if filter and filter.status else None,
        kind=filter.kind.value if filter and filter.kind else None,
        parent_id=filter.parent_id if filter else None,
        search=filter.search if filter else None,
    )


@strawberry.type
class TenantQueries:
    @strawberry.field(description="The tenant this request is routed to.")
    async def tenant(self, info: Info) -> Tenant:
        return Tenant.of((await info.context.root("tenant")).tenant)

    @strawberry.field(description="The caller's visible subtree (ADMIN), not including its own tenant.")
    async def tenants(
        self, info: Info, first: int | None = None, after: str | None = None, filter: TenantFilter | None = None
    ) -> Connection[Tenant]:
        ctx = info.context
        routed = await ctx.root("tenants")
        f = tenant_filter(filter)
        page = await service.list_subtree(ctx.management_db, routed, first=first, after=after, cap=ctx.cap, filter=f)
        return Connection.of(page, Tenant.of, lambda: service.count_subtree(ctx.management_db, routed))

    @strawberry.field(description="The caller's own tenant or one below it; null for any other id.")
    async def tenant_by_id(self, info: Info, id: strawberry.ID) -> Tenant | None:
        ctx = info.context
        record = await service.visible_tenant(ctx.platform, ctx.management_db, await ctx.root("tenantById"), id)
        return Tenant.of(record) if record else None


@strawberry.type
class TenantMutations:
    @strawberry.mutation(description="Provision a subtenant below the routed tenant (ADMIN).")
    async def create_subtenant(self, info: Info, input: CreateSubtenantInput) -> Tenant:
        ctx = info.context
        record = await service.create_subtenant(
            ctx.platform, ctx.management_db, await ctx.routed(),
            service.NewTenant(
                domain=input.domain, company=input.company, admin_email=input.admin_email, kind=input.kind.value,
                admin_password=input.admin_password, template=input.template,
                allow_create_tenants=input.allow_create_tenants,
                custom_properties=input.custom_properties,
                contact_name=input.contact_name, contact_email=input.contact_email,
                limits=input.limits.to_dict() if input.limits else {},
            ),
            request_id=ctx.request_id,
        )
        return Tenant.of(record)

    @strawberry.mutation
    async def update_tenant(self, info: Info, id: strawberry.ID, input: UpdateTenantInput) -> Tenant:
        ctx = info.context
        record = await service.update_tenant(
            ctx.platform, ctx.management_db, await ctx.routed(), id,
            service.TenantChanges(
                domain=input.domain, company=input.company, allow_create_tenants=input.allow_create_tenants,
                custom_properties=input.custom_properties, contact_name=input.contact_name,
                contact_email=input.contact_email, limits=input.limits.to_dict() if input.limits else {},
            ),
            request_id=ctx.request_id,
        )
        return Tenant.of(record)

    @strawberry.mutation(description="Move a subtenant (and its subtree) under another parent; for an ADMIN of a "
                                     "common ancestor of both parents. Refuses cycles, depth beyond the tree's limit, "
                                     "a parent that may not have subtenants and limits it cannot allocate.")
    async def move_tenant(self, info: Info, id: strawberry.ID, new_parent_id: strawberry.ID) -> Tenant:
        ctx = info.context
        moved = await lifecycle.move_tenant(
            ctx.management_db, await ctx.routed(), id, new_parent_id, tenant_plane=ctx.access.tx.plane,
            max_depth=ctx.platform.settings.max_tenant_depth, request_id=ctx.request_id)
        ctx.platform.registry.forget_tenants(moved.subtree)  # the gate sees the new tree at once
        return Tenant.of(moved.tenant)

    @strawberry.mutation(description="Promote a STANDARD tenant to ENTERPRISE, or demote an ENTERPRISE tenant without "
                                     "live subtenants to STANDARD; by an ADMIN of an ancestor.")
    async def set_tenant_kind(self, info: Info, id: strawberry.ID, kind: TenantKind) -> Tenant:
        ctx = info.context
        return Tenant.of(await lifecycle.set_tenant_kind(ctx.management_db, await ctx.routed(), ctx.platform.registry,
                                                         id, kind.value, request_id=ctx.request_id))

    @strawberry.mutation(description="Suspend a tenant and its whole subtree.")
    async def suspend_tenant(self, info: Info, id: strawberry.ID) -> Tenant:
        ctx = info.context
        return Tenant.of(await service.suspend_tenant(
            ctx.platform, ctx.management_db, await ctx.routed(), id, request_id=ctx.request_id))

    @strawberry.mutation(description="Activate a tenant and the subtenants its suspension suspended.")
    async def activate_tenant(self, info: Info, id: strawberry.ID) -> Tenant:
        ctx = info.context
        return Tenant.of(await service.activate_tenant(
            ctx.platform, ctx.management_db, await ctx.routed(), id, request_id=ctx.request_id))

    @strawberry.mutation(description="The routed tenant's own ADMINs: may parent-level users reach its data?")
    async def set_parent_access(self, info: Info, policy: ParentAccess) -> Tenant:
        ctx = info.context
        return Tenant.of(await service.set_parent_access(ctx.platform, ctx.management_db, await ctx.routed(),
                                                         policy=policy.value, request_id=ctx.request_id))

    @strawberry.mutation(description="Management only: drop a leaf tenant's schema and role; the row stays DELETED.")
    async def delete_tenant(self, info: Info, id: strawberry.ID) -> bool:
        ctx = info.context
        await service.delete_tenant(ctx.platform, ctx.management_db, await ctx.routed(), id,
                                    request_id=ctx.request_id)
        return True

