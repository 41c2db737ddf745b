"""Usage (Cumulocity's daily statistics) for a tenant's own admins and its ancestors' admins."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

import strawberry

from app.graphql.context import Context
from app.graphql.scalars import JSON, Long
from app.services.usage import statistics as service

Info = strawberry.Info[Context, None]


def _values(values: dict[str, int]) -> dict[str, Any]:
    return {k: Long(v) for k, v in values.items()}


@strawberry.type(description="Cumulocity's usage statistics: request and resource counters, and snapshots.")
class UsageStatistics:
    request_count: Long
    device_request_count: Long
    measurements_created_count: Long
    events_created_count: Long
    events_updated_count: Long
    alarms_created_count: Long
    alarms_updated_count: Long
    inventories_created_count: Long
    inventories_updated_count: Long
    operations_created_count: Long
    operations_updated_count: Long
    subscription_event_count: Long = strawberry.field(description="Events delivered to GraphQL subscriptions.")
    change_count: Long = strawberry.field(description="Changes appended to the tenant's change log by its requests.")
    webhook_delivery_count: Long = strawberry.field(description="Changes delivered to the tenant's webhooks.")
    query_cost: Long = strawberry.field(description="The estimated cost of the tenant's GraphQL operations over HTTP: "
                                                    "the objects their answers could hold, summed.")
    total_resource_create_and_update_count: Long
    device_count: Long = strawberry.field(description="Root devices (not counting child devices).")
    device_with_children_count: Long
    storage_size: Long = strawberry.field(description="Bytes of the tenant's schema.")
    user_count: Long
    subtenant_count: Long


@strawberry.type(description="One tenant's usage on one day (counters: that day; snapshots: as taken that day).")
class UsageDay(UsageStatistics):
    day: date
    tenant_id: strawberry.ID

    @classmethod
    def of(cls, r: service.UsageRow) -> UsageDay:
        return cls(day=r.period, tenant_id=strawberry.ID(r.tenant_id), **_values(r.values),
                   total_resource_create_and_update_count=Long(r.total_resource_create_and_update_count))


@strawberry.type(description="A subtenant's usage over a range: counters summed, snapshots as of the last day, "
                             "peaks the maxima. Deleted tenants keep their history.")
class TenantUsageSummary(UsageStatistics):
    tenant_id: strawberry.ID
    tenant_domain: str
    tenant_company: str
    parent_tenant_id: strawberry.ID | None
    status: str
    creation_time: datetime
    deletion_time: datetime | None
    custom_properties: JSON
    peak_device_count: Long
    peak_storage_size: Long

    @classmethod
    def of(cls, r: service.UsageSummary) -> TenantUsageSummary:
        return cls(tenant_id=strawberry.ID(r.tenant_id), tenant_domain=r.domain, tenant_company=r.company,
                   parent_tenant_id=strawberry.ID(r.parent_id) if r.parent_id else None, status=r.status,
                   creation_time=r.created_at, deletion_time=r.deleted_at,
                   custom_properties=JSON(r.custom_properties), **_values(r.values),
                   total_resource_create_and_update_count=Long(r.total_resource_create_and_update_count))


FROM = strawberry.argument(name="from")


@strawberry.type
class UsageQueries:
    @strawberry.field(description="Daily usage of the routed tenant, or of a descendant (ADMIN).")
    async def usage(self, info: Info, from_: Annotated[date, FROM], to: date,
                    tenant_id: strawberry.ID | None = None) -> list[UsageDay]:
        ctx = info.context
        routed = await ctx.root("usage")
        record = await service.readable_tenant(ctx.management_db, routed, tenant_id, ctx.platform.registry)
        rows = await service.daily(ctx.management_db, tenant_id=record.id, start=from_, end=to)
        return [UsageDay.of(r) for r in rows]

    @strawberry.field(description="Usage of every tenant below the routed one (management: all), for invoicing.")
    async def subtenant_usage(
        self, info: Info, from_: Annotated[date, FROM], to: date, include_descendants: bool = True,
        include_deleted: bool = True,
    ) -> list[TenantUsageSummary]:
        ctx = info.context
        rows = await service.summaries(ctx.management_db, await ctx.root("subtenantUsage"), start=from_, end=to,
                                       include_descendants=include_descendants, include_deleted=include_deleted)
        return [TenantUsageSummary.of(r) for r in rows]
