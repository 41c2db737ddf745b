"""Periodic housekeeping of a server process: jobs whose process died, expired idempotency keys.

Each step is cheap and idempotent, so every worker process may run it; a failing step (the
database restarting, say) is logged and tried again next time, never ends the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from app.services import copying, idempotency

log = logging.getLogger("tenantry.housekeeping")


async def run_once(engine: AsyncEngine, *, now: datetime) -> None:
    failed = await copying.fail_interrupted(engine)
    if failed:
        log.warning("marked %d copy job(s) of a stopped process FAILED", failed)
    await idempotency.purge(engine, now=now)


async def periodic(engine: AsyncEngine, interval: float, clock: Callable[[], datetime]) -> None:
    while True:
        try:
            await run_once(engine, now=clock())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("housekeeping failed; trying again in %.0f s", interval)
        await asyncio.sleep(interval)
