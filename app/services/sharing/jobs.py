"""Copy jobs: a copy's record (QUEUED → RUNNING → SUCCEEDED | FAILED), run inline when small and
as a background job under a lease when large; `fail_interrupted` fails the jobs of a dead process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from sqlalchemy import Text, and_, cast, func, insert, literal, or_, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.access.principal import Actor, Routed
from app.access.scope import Scope
from app.db.transaction import Executor, connect, transaction, transaction_on
from app.errors import AppError, Unavailable
from app.models.management import copy_jobs
from app.runtime import announcements
from app.services.sharing.copying import CopyCounts, CopySpec, copy_on, estimate_on, run_copy

log = logging.getLogger("tenantry.copying")


@dataclass(frozen=True)
class CopyJob:
    id: UUID
    source_tenant: str
    target_tenant: str
    status: str
    counts: dict[str, int]
    error: str | None
    created_at: datetime
    finished_at: datetime | None


JOB_COLUMNS = (copy_jobs.c.id, copy_jobs.c.source_tenant, copy_jobs.c.target_tenant, copy_jobs.c.status,
               copy_jobs.c.counts, copy_jobs.c.error, copy_jobs.c.created_at, copy_jobs.c.finished_at)


async def start(conn: AsyncConnection, spec: CopySpec, *, source: Routed, requested_by: UUID,
                request_id: str | None, inline_rows: int, background: set[asyncio.Task[None]]) -> UUID:
    """Run a checked, authorised copy on `conn`, the request's own connection lent outside its
    transaction (app.access.acting.RequestTransaction.own_transaction): small ones inline (the job is
    recorded SUCCEEDED), larger ones as a background job (QUEUED → RUNNING → SUCCEEDED | FAILED)
    referenced in `background` until done, which takes its connections once the request has
    given its own back. Returns the job id either way."""
    if await estimate_on(conn, spec, source.scope) > inline_rows:
        job_id = uuid.uuid4()
        async with transaction_on(conn) as tx:
            await insert_job(tx, spec, requested_by=requested_by, status="QUEUED", job_id=job_id)
        task = asyncio.create_task(_run_queued(conn.engine, job_id, spec, source.scope, source.actor, request_id))
        background.add(task)
        task.add_done_callback(background.discard)
        return job_id
    counts = await copy_on(conn, spec, source_scope=source.scope, actor=source.actor, request_id=request_id)
    async with transaction_on(conn) as tx:
        return await insert_job(tx, spec, requested_by=requested_by, status="SUCCEEDED", counts=counts.as_json(),
                                finished_at=datetime.now().astimezone())


async def _run_queued(engine: AsyncEngine, job_id: UUID, spec: CopySpec, source_scope: Scope, actor: Actor,
                      request_id: str | None) -> None:
    """A QUEUED job started by a request: its lease first, then the run (`fail_interrupted` gives a
    QUEUED job a grace period to be leased, so a job whose process died before leasing fails too)."""
    try:
        lease = await JobLease.take(engine, job_id)
    except AppError as exc:
        await update_job(engine, job_id, status="FAILED", error=exc.message, finished_at=datetime.now().astimezone())
        return
    await _run_job(engine, lease, spec, source_scope, actor, request_id, None)


# How long a QUEUED job may wait for its task to lease it (the task waits for a pooled connection
# while requests hold them) before housekeeping takes its process for dead.
QUEUED_GRACE = timedelta(minutes=1)


def _lease_key(job_id: UUID) -> str:
    return f"copy-job:{job_id}"  # the same text as 'copy-job:' || id::text in fail_interrupted


class JobLease:
    """A background job's proof of life: a session advisory lock on a connection of its own,
    taken before the job row exists and released when the job is done. A process that dies
    drops its connections and so its leases; `fail_interrupted` fails exactly the jobs whose
    lease nobody holds — at once after a restart, and never another worker's live job."""

    def __init__(self, conn: AsyncConnection, job_id: UUID) -> None:
        self._conn = conn
        self.job_id = job_id

    @classmethod
    async def take(cls, engine: AsyncEngine, job_id: UUID) -> JobLease:
        conn = await connect(engine)
        try:
            await conn.execute(text("SELECT pg_advisory_lock(hashtextextended(:k, 0))"), {"k": _lease_key(job_id)})
        except BaseException:
            await conn.close()
            raise
        return cls(conn, job_id)

    async def release(self) -> None:
        try:
            await asyncio.shield(self._conn.execute(text("SELECT pg_advisory_unlock(hashtextextended(:k, 0))"),
                                                    {"k": _lease_key(self.job_id)}))
        finally:
            await asyncio.shield(self._conn.close())


async def start_job(engine: AsyncEngine, spec: CopySpec, *, source_scope: Scope, actor: Actor, requested_by: UUID,
                    request_id: str | None, on_step: Callable[[str, CopyCounts], Any] | None = None,
                    ) -> tuple[UUID, asyncio.Task[None]]:
    """A QUEUED job row under a lease, and the task that runs it."""
    job_id = uuid.uuid4()
    lease = await JobLease.take(engine, job_id)
    try:
        await create_job(engine, spec, requested_by=requested_by, status="QUEUED", job_id=job_id)
    except BaseException:
        await lease.release()
        raise
    task = asyncio.create_task(_run_job(engine, lease, spec, source_scope, actor, request_id, on_step))
    return job_id, task


async def _run_job(engine: AsyncEngine, lease: JobLease, spec: CopySpec, source_scope: Scope, actor: Actor,
                   request_id: str | None, on_step: Callable[[str, CopyCounts], Any] | None) -> None:
    job_id = lease.job_id
    try:
        await update_job(engine, job_id, status="RUNNING")

        async def progress(step: str, counts: CopyCounts) -> None:
            await update_job(engine, job_id, counts=counts.as_json())
            if on_step is not None:
                await on_step(step, counts)

        counts = await run_copy(engine, spec, source_scope=source_scope, actor=actor, request_id=request_id,
                                on_step=progress)
    except asyncio.CancelledError:
        await update_job(engine, job_id, status="FAILED", finished_at=datetime.now().astimezone(),
                         error="the server stopped during the copy; nothing was written")
        raise
    except Exception as exc:
        await _record_failure(engine, job_id, exc)
    else:
        await update_job(engine, job_id, status="SUCCEEDED", counts=counts.as_json(),
                         finished_at=datetime.now().astimezone())
    finally:
        with contextlib.suppress(Exception):  # a lease on a lost connection went with it
            await lease.release()


# A job whose database went away is marked FAILED as soon as the database is back: tried again
# this long (with backoff), before housekeeping's sweep would find its lease gone.
FAILURE_RECORD_SECONDS = 120.0
_LOST = (psycopg.OperationalError, sa_exc.OperationalError, sa_exc.InterfaceError)


async def _record_failure(engine: AsyncEngine, job_id: UUID, exc: Exception) -> None:
    """FAILED with what happened, and announced (a copyJob subscription ends with it). A lost
    database (PostgreSQL restarted under the copy) says so, and is recorded once it answers again:
    the job stayed RUNNING for up to 30 s, then said the server had stopped."""
    lost = isinstance(exc, _LOST) or (isinstance(exc, Unavailable) and isinstance(exc.__cause__, _LOST))
    if lost:
        error = "the database connection was lost during the copy; nothing was written: start it again"
    elif isinstance(exc, AppError):
        error = exc.message
    else:
        log.error("copy job %s failed", job_id, exc_info=exc)
        error = "internal error"
    delay, deadline = 0.25, time.monotonic() + FAILURE_RECORD_SECONDS
    while True:
        try:
            await update_job(engine, job_id, status="FAILED", error=error, finished_at=datetime.now().astimezone())
            return
        except (*_LOST, Unavailable):
            if time.monotonic() > deadline:
                log.error("copy job %s failed (%s) and could not be marked FAILED: housekeeping will", job_id, error)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def create_job(engine: AsyncEngine, spec: CopySpec, *, requested_by: UUID, status: str,
                     job_id: UUID | None = None) -> UUID:
    async with transaction(engine) as tx:
        return await insert_job(tx, spec, requested_by=requested_by, status=status, job_id=job_id)


async def insert_job(db: Executor, spec: CopySpec, *, requested_by: UUID, status: str, job_id: UUID | None = None,
                     **values: Any) -> UUID:
    """A job row (and its announcement) in the caller's transaction."""
    job_id = job_id or uuid.uuid4()
    await db.execute(insert(copy_jobs).values(
        id=job_id, source_tenant=spec.source_tenant, target_tenant=spec.target_tenant, requested_by=requested_by,
        spec=spec.as_json(), status=status, heartbeat_at=func.now(), **values))
    # In the target's log: the tenant the copied data lands in (app.realtime.hub: copyJob subscriptions).
    await announcements.announce(db, spec.target_tenant, "copyjob", status, job=str(job_id))
    return job_id


async def update_job(engine: AsyncEngine, job_id: UUID, **values: Any) -> None:
    async with transaction(engine) as tx:
        target = (await tx.execute(update(copy_jobs).where(copy_jobs.c.id == job_id)
                                   .values(**values, heartbeat_at=func.now())
                                   .returning(copy_jobs.c.target_tenant))).scalar_one_or_none()
        if target is not None:
            await announcements.announce(tx, target, "copyjob", str(values.get("status", "RUNNING")), job=str(job_id))


async def job_by_id(db: Any, job_id: UUID, *, requested_by: UUID) -> CopyJob | None:
    """A job, for the user who asked for it (others learn nothing, not even that it exists)."""
    row = (await db.execute(select(*JOB_COLUMNS).where(copy_jobs.c.id == job_id,
                                                       copy_jobs.c.requested_by == requested_by))).first()
    return CopyJob(*row) if row else None


async def fail_interrupted(engine: AsyncEngine) -> int:
    """Jobs whose process died (their lease is free) are marked FAILED; their target was never
    touched, since the copy's transaction never committed. Run at start and periodically."""
    async with transaction(engine) as tx:
        result = await tx.execute(update(copy_jobs).where(
            or_(copy_jobs.c.status == "RUNNING",
                and_(copy_jobs.c.status == "QUEUED", copy_jobs.c.heartbeat_at < func.now() - QUEUED_GRACE)),
            func.pg_try_advisory_xact_lock(func.hashtextextended(literal("copy-job:") + cast(copy_jobs.c.id, Text),
                                                                 0)),
        ).values(status="FAILED", error="interrupted: the server stopped (or lost its database) during the copy; "
                        "nothing was written",
                 finished_at=func.now()))
        return int(result.rowcount)  # type: ignore[attr-defined]
