"""GraphQL for devices joining: bulk registration jobs, and devices asking to join with a claim code
(app.services.connectivity)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from enum import Enum
from uuid import UUID

import strawberry
from strawberry.types import Info

from app.auth.roles import DEVICES_READ, DEVICES_WRITE
from app.errors import Forbidden, NotFound
from app.graphql.connections import Connection
from app.ids import here, local_id
from app.services.connectivity import claims
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


@strawberry.enum(description="PREAUTHORIZED (accepted ahead, not asked yet); PENDING (waits for an admin); "
                             "ACCEPTED (its device exists; credentials not collected); DELIVERED (collected, once).")
class DeviceRequestStatus(Enum):
    PREAUTHORIZED = "PREAUTHORIZED"
    PENDING = "PENDING"
    ACCEPTED = "ACCEPTED"
    DELIVERED = "DELIVERED"


@strawberry.type
class DeviceCredentials:
    device_id: strawberry.ID
    token: str = strawberry.field(description="A device token (tdev_…), in this one answer only; stored hashed.")


@strawberry.input
class RequestDeviceRegistrationInput:
    external_id: str = strawberry.field(description="The device's factory identity (external id type serial).")
    claim_code: str | None = strawberry.field(default=None, description=(
        "The device's secret, 16-200 characters: the first request binds it, every later one must repeat it."))


@strawberry.type(description="A device asking to join this tenant (requestDeviceRegistration).")
class DeviceRegistrationRequest:
    id: strawberry.ID
    external_id: str
    status: DeviceRequestStatus
    device_id: strawberry.ID | None
    created_at: datetime
    requested_at: datetime | None
    accepted_at: datetime | None
    delivered_at: datetime | None
    credentials: DeviceCredentials | None = strawberry.field(description=(
        "Only in the answer that delivers them (the device's request once it is accepted); null ever after."))

    @classmethod
    def of(cls, r: claims.Request) -> DeviceRegistrationRequest:
        device = strawberry.ID(here("Device", r.device_id)) if r.device_id is not None else None
        return cls(id=strawberry.ID(here("DeviceRequest", r.id)), external_id=r.external_id,
                   status=DeviceRequestStatus(r.status), device_id=device, created_at=r.created_at,
                   requested_at=r.requested_at, accepted_at=r.accepted_at, delivered_at=r.delivered_at,
                   credentials=DeviceCredentials(device_id=device, token=r.credentials)
                   if r.credentials is not None and device is not None else None)


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


    @strawberry.field(description="Devices asking to join this tenant, oldest first (devices:read).")
    async def device_registration_requests(self, info: Info, status: DeviceRequestStatus | None = None,
                                           first: int | None = None, after: str | None = None,
                                           ) -> Connection[DeviceRegistrationRequest]:
        ctx = info.context
        await ctx.authorize(DEVICES_READ)
        size = page_size(first, ctx.cap)
        found = await claims.listing(await ctx.tenant_db(), status.value if status else None,
                                     after=decode_int_cursor(after) or 0, first=size)
        return Connection.of(build_page(found, size, lambda r: r.id), DeviceRegistrationRequest.of)


@strawberry.type
class ConnectivityMutations:
    @strawberry.mutation(description=(
        "A device with no credentials asks to join the tenant X-Tenant-ID names (no Authorization): PENDING "
        "until an admin accepts (or at once when preauthorised); asked again once accepted, the answer "
        "carries its credentials, once."))
    async def request_device_registration(self, info: Info,
                                          input: RequestDeviceRegistrationInput) -> DeviceRegistrationRequest:
        plane = await info.context.claimant_plane()
        return DeviceRegistrationRequest.of(await claims.request(plane, input.external_id, input.claim_code))

    @strawberry.mutation(description="Let a PENDING device in: its device is created (devices:write).")
    async def accept_device_registration(self, info: Info, id: strawberry.ID) -> DeviceRegistrationRequest:
        plane = await info.context.data_plane(DEVICES_WRITE)
        if not plane.scope.unrestricted:
            raise Forbidden("accepting a device creates it in the whole tenant: a group-limited role cannot")
        key = local_id(id, "deviceRequest")
        if key is None:
            raise NotFound(f"device registration request {id} not found")
        return DeviceRegistrationRequest.of(await claims.accept(plane, key))

    @strawberry.mutation(description=(
        "Accept these external ids ahead of time (those that asked already, now); returns how many were "
        "preauthorised or accepted (devices:write)."))
    async def preauthorize_devices(self, info: Info, external_ids: list[str]) -> int:
        plane = await info.context.data_plane(DEVICES_WRITE)
        if not plane.scope.unrestricted:
            raise Forbidden("preauthorising devices creates them in the whole tenant: a group-limited role cannot")
        return await claims.preauthorize(plane, external_ids)

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
