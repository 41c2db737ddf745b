"""Background loops of a server process: run a step every so often until the server stops.

One helper for every loop (metering flush, outbox, retention, snapshots, spare schemas,
housekeeping) so that each stops the same way. A failing step is logged and tried again next
time. A cancellation always ends the loop — also when it surfaces as another error: cancelled
inside a database call, a transaction's cleanup can raise (SQLAlchemy's PendingRollbackError)
instead of CancelledError, and a loop that logged that and went on would keep the server in
"Waiting for application shutdown" forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


def cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def every(interval_seconds: float, step: Callable[[], Awaitable[Any]], *, log: logging.Logger, what: str,
                first_after: float = 0.0) -> None:
    """Run `step` now (or after `first_after` seconds), then every `interval_seconds`."""
    if first_after:
        await asyncio.sleep(first_after)
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            if cancelling():
                raise
            log.exception("%s failed; trying again in %.0f s", what, interval_seconds)
        await asyncio.sleep(interval_seconds)


async def exclusively(engine: AsyncEngine, lock_name: str, step: Callable[[], Awaitable[Any]]) -> None:
    """Run `step` if no other process is running it (a session advisory lock on `lock_name`)."""
    async with engine.connect() as conn:
        got = (await conn.execute(text("SELECT pg_try_advisory_lock(hashtext(:n))"), {"n": lock_name})).scalar()
        if not got:
            return
        try:
            await step()
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(hashtext(:n))"), {"n": lock_name})
