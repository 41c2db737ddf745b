"""Sharing across tenants: copyData and its jobs."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated
from uuid import UUID

import strawberry

from app.auth.roles import ALARMS_WRITE, DEVICES_READ, DEVICES_WRITE, EVENTS_WRITE, MEASUREMENTS_WRITE
from app.errors import NotFound
from app.graphql.context import Context
from app.graphql.scalars import ChangePosition
from app.ids import encode
from app.services.inventory.devices import require_id
from app.services.sharing import copying, jobs, migration

Info = strawberry.Info[Context, None]
FROM = strawberry.argument(name="from")
WRITE_PERMISSION = {"MEASUREMENTS": MEASUREMENTS_WRITE, "EVENTS": EVENTS_WRITE, "ALARMS": ALARMS_WRITE}


@strawberry.enum
class CopyKind(Enum):
    INVENTORY = "INVENTORY"
    MEASUREMENTS = "MEASUREMENTS"
    EVENTS = "EVENTS"
    ALARMS = "ALARMS"


@strawberry.enum
class ConflictPolicy(Enum):
    SKIP = "SKIP"
    OVERWRITE = "OVERWRITE"


@strawberry.enum
class CopyJobStatus(Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


@strawberry.input
class CopyDataInput:
    source_tenant_id: strawberry.ID
    target_tenant_id: strawberry.ID
    device_ids: list[strawberry.ID] | None = None
    group_id: strawberry.ID | None = None
    include_subgroups: bool = False
    include: list[CopyKind] = strawberry.field(default_factory=lambda: [CopyKind.INVENTORY])
    from_: Annotated[datetime | None, strawberry.field(name="from")] = None
    to: datetime | None = None
    on_conflict: ConflictPolicy = ConflictPolicy.SKIP


@strawberry.type
class CopyCounts:
    devices: int
    groups: int
    measurements: int
    events: int
    alarms: int
    skipped: int = strawberry.field(description="Already copied by an earlier run (SKIP).")


@strawberry.type
class CopyJob:
    id: strawberry.ID
    status: CopyJobStatus
    source_tenant_id: strawberry.ID
    target_tenant_id: strawberry.ID
    counts: CopyCounts
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    position: ChangePosition | None = strawberry.field(
        default=None, description="Where a subscription delivered this in the target's change log (null in queries).")

    @classmethod
    def of(cls, job: jobs.CopyJob) -> CopyJob:
        c = {k: int(job.counts.get(k, 0)) for k in ("devices", "groups", "measurements", "events", "alarms",
                                                    "skipped")}
        return cls(id=strawberry.ID(str(job.id)), status=CopyJobStatus(job.status),
                   source_tenant_id=strawberry.ID(job.source_tenant), target_tenant_id=strawberry.ID(job.target_tenant),
                   counts=CopyCounts(**c), error=job.error, created_at=job.created_at, finished_at=job.finished_at)


@strawberry.type
class SharingQueries:
    @strawberry.field(description="A copy job you asked for (its status and progress).")
    async def copy_job(self, info: Info, id: strawberry.ID) -> CopyJob | None:
        ctx = info.context
        principal = await ctx.user()
        try:
            key = UUID(id)
        except ValueError:
            return None
        job = await jobs.job_by_id(ctx.management_db, key, requested_by=principal.user_id)
        return CopyJob.of(job) if job else None


@strawberry.type
class SharingMutations:
    @strawberry.mutation(description="Copy devices (by ids or a group) and, per include, their data in a time range "
                                     "from one tenant to another. Small copies finish inline; large ones run as jobs.")
    async def copy_data(self, info: Info, input: CopyDataInput) -> CopyJob:
        ctx = info.context
        principal = await ctx.user()
        spec = copying.CopySpec(
            source_tenant=input.source_tenant_id, target_tenant=input.target_tenant_id,
            # the source's ids, whichever tenant this request is routed to
            device_ids=tuple(require_id(d, "device", tenant=input.source_tenant_id) for d in input.device_ids or ()),
            group_id=require_id(input.group_id, "group", tenant=input.source_tenant_id)
            if input.group_id is not None else None,
            include_subgroups=input.include_subgroups, include=tuple(k.value for k in input.include),
            start=input.from_, end=input.to, on_conflict=input.on_conflict.value,
        ).check()
        writes = {DEVICES_WRITE, *(WRITE_PERMISSION[k] for k in spec.include if k in WRITE_PERMISSION)}
        source, _ = await ctx.access.data_move(spec.source_tenant, spec.target_tenant, read={DEVICES_READ},
                                               write=writes)

        platform = ctx.platform
        async with ctx.access.own_transaction() as conn:
            job_id = await jobs.start(conn, spec, source=source, requested_by=principal.user_id,
                                         request_id=ctx.request_id, inline_rows=platform.settings.copy_inline_rows,
                                         background=platform.background)
        job = await jobs.job_by_id(ctx.management_db, job_id, requested_by=principal.user_id)
        if job is None:  # pragma: no cover - just written
            raise NotFound("copy job vanished")
        return CopyJob.of(job)


@strawberry.type
class MovedDevice:
    source_id: strawberry.ID
    target_id: strawberry.ID
    name: str


@strawberry.type
class DeviceNotMoved:
    device_id: strawberry.ID
    reason: str


@strawberry.type(description="A group membership that could not follow its device (groups belong to a tenant).")
class GroupLeftBehind:
    device_id: strawberry.ID
    group_id: strawberry.ID
    group_name: str


@strawberry.type
class DeviceMigration:
    source_tenant_id: strawberry.ID
    target_tenant_id: strawberry.ID
    moved: list[MovedDevice]
    not_moved: list[DeviceNotMoved]
    groups_left_behind: list[GroupLeftBehind]
    measurements: int
    events: int
    alarms: int
    operations: int


@strawberry.type
class MigrationMutations:
    @strawberry.mutation(description="Move devices with their whole history (and child devices, external ids and "
                                     "credentials) to another tenant, atomically. Source: sourceTenantId, else the "
                                     "routed tenant.")
    async def migrate_devices(self, info: Info, device_ids: list[strawberry.ID], target_tenant_id: strawberry.ID,
                              source_tenant_id: strawberry.ID | None = None) -> DeviceMigration:
        ctx = info.context
        source_id = source_tenant_id or (await ctx.routed()).tenant.id
        routed_source, routed_target = await ctx.access.data_move(
            source_id, target_tenant_id, read=migration.PERMISSIONS, write=migration.PERMISSIONS, whole_source=True)
        source, target = routed_source.tenant, routed_target.tenant
        wanted = [require_id(d, "device", tenant=source.id) for d in device_ids]
        async with ctx.access.own_transaction() as conn:
            result = await migration.migrate(conn, source=source, target=target, device_ids=wanted,
                                             actor=(await ctx.user()).actor, request_id=ctx.request_id)
        return DeviceMigration(
            source_tenant_id=strawberry.ID(source.id), target_tenant_id=strawberry.ID(target.id),
            moved=[MovedDevice(source_id=strawberry.ID(encode("Device", source.id, m.source_id)),
                               target_id=strawberry.ID(encode("Device", target.id, m.target_id)),
                               name=m.name) for m in result.moved],
            not_moved=[DeviceNotMoved(device_id=strawberry.ID(encode("Device", source.id, n.device_id)),
                                      reason=n.reason) for n in result.not_moved],
            groups_left_behind=[GroupLeftBehind(device_id=strawberry.ID(encode("Device", source.id, g.device_id)),
                                                group_id=strawberry.ID(encode("Group", source.id, g.group_id)),
                                                group_name=g.group_name) for g in result.groups_left_behind],
            measurements=result.counts.get("measurements", 0), events=result.counts.get("events", 0),
            alarms=result.counts.get("alarms", 0), operations=result.counts.get("operations", 0),
        )
