"""GraphQL for devices joining in numbers: bulk registration jobs (app.services.connectivity)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from enum import Enum
from uuid import UUID

import strawberry
from strawberry.types import Info

from app.auth.roles import DEVICES_READ, DEVICES_WRITE
from app.errors import Forbidden
from app.graphql.connections import Connection
from app.ids import here
from app.services.connectivity import registration as reg
from app.services.connectivity.registering import Runner
from app.services.pagination import build_page, decode_int_cursor, page_size


@strawberry.enum
class DeviceRegistrationFormat(Enum):
    CSV = "CSV"
    JSON = "JSON"


@strawberry.enum(description="ALL_OR_NOTHING: one bad row (or too few devices left) registers none; PER_ROW: "
                             "each row on its own.")
class DeviceRegistrationMode(Enum):
    ALL_OR_NOTHING = "ALL_OR_NOTHING"
    PER_ROW = "PER_ROW"


@strawberry.enum
class DeviceRegistrationStatus(Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


@strawberry.enum(description="CREATED; EXISTING (its externalId is registered already: the job is idempotent); "
                             "FAILED (message says why); SKIPPED (an ALL_OR_NOTHING job failed); PENDING.")
class DeviceRegistrationOutcome(Enum):
    CREATED = "CREATED"
    EXISTING = "EXISTING"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    PENDING = "PENDING"


@strawberry.input
class RegisterDevicesInput:
    format: DeviceRegistrationFormat
    content: str = strawberry.field(description=(
        "CSV with a header line, or a JSON list of objects; columns name (required), type, externalId "
        "(type serial: the job's idempotency key), groupId. Up to 100,000 devices."))
    mode: DeviceRegistrationMode = DeviceRegistrationMode.ALL_OR_NOTHING


@strawberry.type
class DeviceRegistrationRow:
    line: int = strawberry.field(description="The row's line in the CSV, or its place (from 1) in the JSON list.")
    name: str
    external_id: str | None
    outcome: DeviceRegistrationOutcome
    device_id: strawberry.ID | None
    message: str | None


@strawberry.type(description="A bulk registration (registerDevices): its progress, counts and each row's outcome.")
class DeviceRegistrationJob:
    id: strawberry.ID
    status: DeviceRegistrationStatus
    mode: DeviceRegistrationMode
    total: int
    processed: int
    created: int
    existing: int
    failed: int
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    key: strawberry.Private[UUID]

    @classmethod
    def of(cls, job: reg.Job) -> DeviceRegistrationJob:
        return cls(id=strawberry.ID(str(job.id)), status=DeviceRegistrationStatus(job.status),
                   mode=DeviceRegistrationMode(job.mode), total=job.total, processed=job.processed,
                   created=job.created, existing=job.existing, failed=job.failed, error=job.error,
                   created_at=job.created_at, finished_at=job.finished_at, key=job.id)

    @strawberry.field(description="Each row's outcome, in line order.")
    async def rows(self, info: Info, first: int | None = None,
                   after: str | None = None) -> Connection[DeviceRegistrationRow]:
        ctx = info.context
        await ctx.authorize(DEVICES_READ)
        size = page_size(first, ctx.cap)
        found = await reg.outcomes(await ctx.tenant_db(), self.key, after=decode_int_cursor(after) or 0, first=size)
        page = build_page(found, size, lambda o: o.line)
        return Connection.of(page, lambda o: DeviceRegistrationRow(
            line=o.line, name=o.name, external_id=o.external_id, outcome=DeviceRegistrationOutcome(o.outcome),
            device_id=strawberry.ID(here("Device", o.device_id)) if o.device_id else None, message=o.message))


def _job_id(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


@strawberry.type
class ConnectivityQueries:
    @strawberry.field(description="A bulk registration job of this tenant (devices:read).")
    async def device_registration_job(self, info: Info, id: strawberry.ID) -> DeviceRegistrationJob | None:
        ctx = info.context
        routed = await ctx.authorize(DEVICES_READ)
        routed.require_data_access()
        key = _job_id(id)
        found = await reg.job(ctx.management_db, routed.tenant.id, key) if key else None
        return DeviceRegistrationJob.of(found) if found else None


@strawberry.type
class ConnectivityMutations:
    @strawberry.mutation(description=(
        "Register up to 100,000 devices from a CSV or JSON upload, as a job (poll deviceRegistrationJob): "
        "idempotent by externalId, maxDevices honoured exactly. The upload's shape is checked at once."))
    async def register_devices(self, info: Info, input: RegisterDevicesInput) -> DeviceRegistrationJob:
        ctx = info.context
        plane = await ctx.data_plane(DEVICES_WRITE)
        if not plane.scope.unrestricted:
            raise Forbidden("bulk registration writes into the whole tenant: a group-limited role cannot")
        rows = reg.read(input.format.value, input.content)
        actor = plane.actor
        job_id = await reg.submit(plane.management, plane.db, tenant_id=plane.tenant.id, mode=input.mode.value,
                                  rows=rows, requested_by=f"{actor.type}:{actor.id}")
        platform = ctx.platform

        def counted(tenant_id: str, n: int) -> None:
            if n and platform.settings.metering:
                platform.meter.add(tenant_id, {"inventories_created_count": n})

        runner = Runner(engine=platform.db.app, registry=platform.registry, job_id=job_id, tenant_id=plane.tenant.id,
                        mode=input.mode.value, actor=actor, counted=counted)
        task = asyncio.create_task(runner.run())  # it starts once this request commits (Runner._start)
        platform.background.add(task)
        task.add_done_callback(platform.background.discard)
        found = await reg.job(plane.management, plane.tenant.id, job_id)
        assert found is not None
        return DeviceRegistrationJob.of(found)
