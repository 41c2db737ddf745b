"""Sharing across tenants: copyData and its jobs."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from enum import Enum
from typing import Annotated
from uuid import UUID

import strawberry

from app.auth.principal import Routed
from app.auth.roles import ALARMS_WRITE, DEVICES_READ, DEVICES_WRITE, EVENTS_WRITE, MEASUREMENTS_WRITE
from app.errors import AppError, Forbidden, NotFound, TenantSuspended
from app.graphql.context import Context
from app.platform import Platform
from app.services import copying, migration
from app.services.devices import require_id
from app.tenancy.naming import is_tenant_id
from app.tenancy.registry import TenantRecord

Info = strawberry.Info[Context, None]
FROM = strawberry.argument(name="from")
log = logging.getLogger("tenantry.copying")
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

    @classmethod
    def of(cls, job: copying.CopyJob) -> CopyJob:
        c = {k: int(job.counts.get(k, 0)) for k in ("devices", "groups", "measurements", "events", "alarms",
                                                    "skipped")}
        return cls(id=strawberry.ID(str(job.id)), status=CopyJobStatus(job.status),
                   source_tenant_id=strawberry.ID(job.source_tenant), target_tenant_id=strawberry.ID(job.target_tenant),
                   counts=CopyCounts(**c), error=job.error, created_at=job.created_at, finished_at=job.finished_at)


def _check_data_access(routed: Routed) -> None:
    if routed.via_ancestor is not None and routed.tenant.parent_access != "FULL":
        raise Forbidden(f"tenant {routed.tenant.id} does not grant parent-level access to its data")


async def _run_in_background(platform: Platform, job_id: UUID, spec: copying.CopySpec, source: Routed,
                             request_id: str) -> None:
    await copying.update_job(platform.db.app, job_id, status="RUNNING")

    async def progress(step: str, counts: copying.CopyCounts) -> None:
        await copying.update_job(platform.db.app, job_id, counts=counts.as_json())

    try:
        counts = await copying.run_copy(platform.db.app, spec, source_scope=source.scope, actor=source.actor,
                                        request_id=request_id, on_step=progress)
    except AppError as exc:
        await copying.update_job(platform.db.app, job_id, status="FAILED", error=exc.message,
                                 finished_at=datetime.now().astimezone())
    except asyncio.CancelledError:
        await copying.update_job(platform.db.app, job_id, status="FAILED",
                                 error="the server stopped during the copy; nothing was written",
                                 finished_at=datetime.now().astimezone())
        raise
    except Exception:
        log.exception("copy job %s failed", job_id)
        await copying.update_job(platform.db.app, job_id, status="FAILED", error="internal error",
                                 finished_at=datetime.now().astimezone())
    else:
        await copying.update_job(platform.db.app, job_id, status="SUCCEEDED", counts=counts.as_json(),
                                 finished_at=datetime.now().astimezone())


@strawberry.type
class SharingQueries:
    @strawberry.field(description="A copy job you asked for (its status and progress).")
    async def copy_job(self, info: Info, id: strawberry.ID) -> CopyJob | None:
        ctx = info.context
        principal = ctx.principal()
        try:
            key = UUID(id)
        except ValueError:
            return None
        job = await copying.job_by_id(ctx.management_db, key, requested_by=principal.user_id)
        return CopyJob.of(job) if job else None


@strawberry.type
class SharingMutations:
    @strawberry.mutation(description="Copy devices (by ids or a group) and, per include, their data in a time range "
                                     "from one tenant to another. Small copies finish inline; large ones run as jobs.")
    async def copy_data(self, info: Info, input: CopyDataInput) -> CopyJob:
        ctx = info.context
        principal = ctx.principal()
        spec = copying.CopySpec(
            source_tenant=input.source_tenant_id, target_tenant=input.target_tenant_id,
            device_ids=tuple(require_id(d, "device") for d in input.device_ids or ()),
            group_id=require_id(input.group_id, "group") if input.group_id is not None else None,
            include_subgroups=input.include_subgroups, include=tuple(k.value for k in input.include),
            start=input.from_, end=input.to, on_conflict=input.on_conflict.value,
        ).check()
        source = await ctx.route_to(spec.source_tenant)
        source.require(DEVICES_READ)
        _check_data_access(source)
        target = await ctx.route_to(spec.target_tenant)
        target.require(DEVICES_WRITE)
        for kind in spec.include:
            if kind in WRITE_PERMISSION:
                target.require(WRITE_PERMISSION[kind])
        _check_data_access(target)
        if not target.scope.unrestricted:
            raise Forbidden("a copy writes into the whole target tenant: a group-limited role cannot receive it")

        platform = ctx.platform
        if await copying.estimate(platform.db.app, spec, source.scope) > platform.settings.copy_inline_rows:
            job_id = await copying.create_job(platform.db.app, spec, requested_by=principal.user_id, status="QUEUED")
            task = asyncio.create_task(_run_in_background(platform, job_id, spec, source, ctx.request_id))
            platform.background.add(task)
            task.add_done_callback(platform.background.discard)
        else:
            counts = await copying.run_copy(platform.db.app, spec, source_scope=source.scope, actor=source.actor,
                                            request_id=ctx.request_id)
            job_id = await copying.create_job(platform.db.app, spec, requested_by=principal.user_id,
                                              status="SUCCEEDED")
            await copying.update_job(platform.db.app, job_id, counts=counts.as_json(),
                                     finished_at=datetime.now().astimezone())
        job = await copying.job_by_id(ctx.management_db, job_id, requested_by=principal.user_id)
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


async def _may_migrate(ctx: Context, source_id: str, target_id: str) -> tuple[TenantRecord, TenantRecord]:
    """An ADMIN of both tenants, or an ADMIN of a common ancestor (PDQ Connect's parent admin)."""
    principal = ctx.principal()
    registry = ctx.platform.registry
    source = await registry.tenant(ctx.management_db, source_id) if is_tenant_id(source_id) else None
    target = await registry.tenant(ctx.management_db, target_id) if is_tenant_id(target_id) else None
    if source is None or target is None or "DELETED" in (source.status, target.status):
        raise Forbidden("you may not move devices between these tenants")
    if "SUSPENDED" in (source.status, target.status):
        raise TenantSuspended("a suspended tenant takes part in no migration")

    async def admin_of(tenant_id: str) -> bool:
        member = await registry.membership(ctx.management_db, principal.user_id, tenant_id)
        return member is not None and member.role == "ADMIN"

    if await admin_of(source.id) and await admin_of(target.id):
        return source, target
    for ancestor in set(source.path) & set(target.path):
        if await admin_of(ancestor):
            return source, target
    raise Forbidden("moving devices needs an ADMIN of both tenants or of a common ancestor")


@strawberry.type
class MigrationMutations:
    @strawberry.mutation(description="Move devices with their whole history (and child devices, external ids and "
                                     "credentials) to another tenant, atomically. Source: sourceTenantId, else the "
                                     "routed tenant.")
    async def migrate_devices(self, info: Info, device_ids: list[strawberry.ID], target_tenant_id: strawberry.ID,
                              source_tenant_id: strawberry.ID | None = None) -> DeviceMigration:
        ctx = info.context
        source_id = source_tenant_id or (await ctx.routed()).tenant.id
        source, target = await _may_migrate(ctx, source_id, target_tenant_id)
        result = await migration.migrate(ctx.platform.db.app, source=source, target=target,
                                         device_ids=[require_id(d, "device") for d in device_ids],
                                         actor=ctx.principal().actor, request_id=ctx.request_id)
        return DeviceMigration(
            source_tenant_id=strawberry.ID(source.id), target_tenant_id=strawberry.ID(target.id),
            moved=[MovedDevice(source_id=strawberry.ID(str(m.source_id)), target_id=strawberry.ID(str(m.target_id)),
                               name=m.name) for m in result.moved],
            not_moved=[DeviceNotMoved(device_id=strawberry.ID(str(n.device_id)), reason=n.reason)
                       for n in result.not_moved],
            groups_left_behind=[GroupLeftBehind(device_id=strawberry.ID(str(g.device_id)),
                                                group_id=strawberry.ID(str(g.group_id)), group_name=g.group_name)
                                for g in result.groups_left_behind],
            measurements=result.counts.get("measurements", 0), events=result.counts.get("events", 0),
            alarms=result.counts.get("alarms", 0), operations=result.counts.get("operations", 0),
        )
