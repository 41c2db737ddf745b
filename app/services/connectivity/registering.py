"""Running a bulk registration job (app.services.connectivity.registration says what it does): in the
background of the process that accepted it, a thousand rows per transaction, its progress written
after each. A job whose process stopped is marked FAILED by housekeeping (`fail_interrupted`); the
same upload submitted again registers only what is missing (external ids answer EXISTING)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import func, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access.acting import management_transaction, tenant_transaction
from app.access.principal import Actor
from app.db.transaction import Executor, Transaction, settled
from app.errors import AppError, InvalidInput, LimitExceeded
from app.models.management import registration_jobs
from app.runtime import announcements
from app.services.audit import data_audit
from app.services.connectivity import registration as reg
from app.tenancy.registry import Registry

logger = logging.getLogger("tenantry.registration")
STALE_SECONDS = 120  # a RUNNING job unheard of this long lost its process


@dataclass
class Runner:
    engine: AsyncEngine
    registry: Registry
    job_id: UUID
    tenant_id: str
    mode: str
    actor: Actor
    counted: Callable[[str, int], None]

    async def run(self) -> None:
        try:
            if not await self._start():
                return
            totals = await (self._per_row() if self.mode == "PER_ROW" else self._all_or_nothing())
            await self._finish("SUCCEEDED", None, totals)
        except AppError as exc:
            await self._finish("FAILED", exc.message, None)
        except Exception:
            logger.exception("registration job %s failed", self.job_id)
            await self._finish("FAILED", "the job failed unexpectedly; submit it again (registered rows answer "
                                         "EXISTING)", None)

    async def _start(self) -> bool:
        """QUEUED → RUNNING, once the submitting request committed (it may still be finishing)."""
        for _ in range(100):
            async with settled(management_transaction(self.engine)) as tx:
                started = (await tx.execute(update(registration_jobs).where(
                    registration_jobs.c.id == self.job_id, registration_jobs.c.status == "QUEUED")
                    .values(status="RUNNING", heartbeat_at=func.now()).returning(registration_jobs.c.id))).first()
            if started is not None:
                return True
            await asyncio.sleep(0.1)
        return False  # the request rolled back: there is no job

    async def _room(self, tx: Executor) -> int | None:
        """Devices that may still be created (None: no limit), under createDevice's lock."""
        mgmt = management_transaction(self.engine)
        try:
            self.registry.forget_tenants([self.tenant_id])  # its limits as they are now
            record = await self.registry.tenant(mgmt, self.tenant_id)
        finally:
            await mgmt.finish(commit=False)
        if record is None or record.max_devices is None:
            return None
        await tx.execute(text("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '/devices'))"))
        count = int((await tx.execute(text("SELECT count(*) FROM devices"))).scalar_one())
        return max(0, record.max_devices - count)

    async def _chunk(self, tx: Transaction, rows: list[reg.Row], claimed: dict[str, int], *,
                     all_or_nothing: bool) -> dict[str, int]:
        checked = await reg.check(tx, self.tenant_id, rows, claimed)
        if all_or_nothing and checked.failed:
            line, exc = next(iter(checked.failed.items()))
            raise _Invalid(checked, f"line {line}: {exc.message}")
        room = await self._room(tx)
        create, over = checked.create, []
        if room is not None and len(create) > room:
            if all_or_nothing:
                raise LimitExceeded(f"maxDevices would be exceeded: {room} more device(s) allowed",
                                    limit="maxDevices", available=room)
            create, over = create[:room], create[room:]
        created = await reg.create(tx, create, owner=f"{self.actor.type}:{self.actor.id}")
        if created:
            await announcements.announce(tx, self.tenant_id, "device", "CREATED", rows=created)
        outcomes: list[reg.Settled] = [(r.line, "CREATED", d.id, None)
                                       for (r, _), d in zip(create, created, strict=True)]
        outcomes += [(line, "EXISTING", device, None) for line, device in checked.existing.items()]
        outcomes += [(line, "FAILED", None, f"{e.code}: {e.message}") for line, e in checked.failed.items()]
        outcomes += [(r.line, "FAILED", None, "LIMIT_EXCEEDED: maxDevices reached") for r, _ in over]
        await reg.record_outcomes(tx, self.job_id, outcomes)
        return {"created": len(created), "existing": len(checked.existing),
                "failed": len(checked.failed) + len(over)}

    async def _per_row(self) -> dict[str, int]:
        totals = {"processed": 0, "created": 0, "existing": 0, "failed": 0}
        claimed: dict[str, int] = {}
        after = 0
        while True:
            async with settled(tenant_transaction(self.engine, self.tenant_id)) as tx:
                rows = await reg.pending(tx, self.job_id, after)
                if rows:
                    counts = await self._chunk(tx, rows, claimed, all_or_nothing=False)
            if not rows:
                break
            after = rows[-1].line
            totals = {k: totals[k] + counts.get(k, len(rows) if k == "processed" else 0) for k in totals}
            self.counted(self.tenant_id, counts["created"])
            await self._progress(totals)
        return totals

    async def _all_or_nothing(self) -> dict[str, int]:
        totals = {"processed": 0, "created": 0, "existing": 0, "failed": 0}
        claimed: dict[str, int] = {}
        after = 0
        tx = tenant_transaction(self.engine, self.tenant_id)
        committed = False
        try:
            while rows := await reg.pending(tx, self.job_id, after):
                try:
                    counts = await self._chunk(tx, rows, claimed, all_or_nothing=True)
                except _Invalid as invalid:
                    await tx.finish(commit=False)
                    committed = True  # finished: nothing of it stays
                    await self._report_invalid(invalid.checked)
                    raise
                after = rows[-1].line
                totals = {k: totals[k] + counts.get(k, len(rows) if k == "processed" else 0) for k in totals}
            await tx.finish(commit=True)
            committed = True
        finally:
            if not committed:
                await tx.finish(commit=False)
        self.counted(self.tenant_id, totals["created"])
        return totals

    async def _report_invalid(self, checked: reg.Checked) -> None:
        """ALL_OR_NOTHING failed: the bad rows say why; the others were not registered (SKIPPED)."""
        async with settled(tenant_transaction(self.engine, self.tenant_id)) as tx:
            await tx.execute(text("UPDATE registration_rows SET outcome = 'SKIPPED' WHERE job_id = :job"),
                             {"job": self.job_id})
            await reg.record_outcomes(tx, self.job_id, [(line, "FAILED", None, f"{e.code}: {e.message}")
                                                        for line, e in checked.failed.items()])

    async def _progress(self, totals: dict[str, int]) -> None:
        async with settled(management_transaction(self.engine)) as tx:
            await reg.progress(tx, self.job_id, **totals)

    async def _finish(self, status: str, error: str | None, totals: dict[str, int] | None) -> None:
        async with settled(management_transaction(self.engine)) as tx:
            await reg.progress(tx, self.job_id, status=status, error=error, finished_at=func.now(), **(totals or {}))
        async with settled(tenant_transaction(self.engine, self.tenant_id)) as audit:
            await data_audit.record(audit, actor=self.actor, action="devices.registered", target=str(self.job_id),
                                    changes=[{"attribute": "status", "previous": "RUNNING", "new": status,
                                              **(totals or {}), **({"error": error} if error else {})}])


class _Invalid(InvalidInput):
    """An ALL_OR_NOTHING chunk with a bad row."""

    def __init__(self, checked: reg.Checked, message: str) -> None:
        super().__init__(message)
        self.checked = checked


async def fail_interrupted(engine: AsyncEngine) -> int:
    """Jobs whose process stopped (no progress for STALE_SECONDS): FAILED, saying what to do."""
    async with settled(management_transaction(engine)) as tx:
        done = await tx.execute(update(registration_jobs).where(
            registration_jobs.c.status.in_(["QUEUED", "RUNNING"]),
            func.coalesce(registration_jobs.c.heartbeat_at, registration_jobs.c.created_at)
            < func.now() - text(f"interval '{STALE_SECONDS} seconds'"))
            .values(status="FAILED", finished_at=func.now(),
                    error="the server stopped while registering: submit the same upload again (rows registered "
                          "already answer EXISTING)").returning(registration_jobs.c.id))
        return len(done.all())
