"""Periodic housekeeping of a server process: jobs (copies, device registrations) whose process died,
expired idempotency keys, idle rate-limit and login-throttle buckets.

Each step is cheap and idempotent, so every worker process may run it; a failing step (the
database restarting, say) is logged and tried again next time, never ends the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from app.access.admission import purge_buckets
from app.runtime import idempotency
from app.runtime.periodic import every
from app.services.connectivity import registering
from app.services.sharing import jobs

log = logging.getLogger("tenantry.housekeeping")


async def run_once(engine: AsyncEngine, *, now: datetime) -> None:
    failed = await jobs.fail_interrupted(engine)
    if failed:
        log.warning("marked %d copy job(s) of a stopped process FAILED", failed)
    stopped = await registering.fail_interrupted(engine)
    if stopped:
        log.warning("marked %d device registration job(s) of a stopped process FAILED", stopped)
    await idempotency.purge(engine, now=now)
    await purge_buckets(engine)


async def periodic(engine: AsyncEngine, interval: float, clock: Callable[[], datetime]) -> None:
    await every(interval, lambda: run_once(engine, now=clock()), log=log, what="housekeeping")
