"""The change log's readers woken after COMMIT, many tenants' wake-ups in one NOTIFY.

A transaction that notifies takes a database-wide lock at COMMIT and holds it until its commit is
flushed: every notifying commit of the database, whatever its tenant, waits for the one before.
Sent with each request's COMMIT, the wake-up therefore capped a whole deployment's writes at the
rate one commit after another can flush. On 32 connections writing eight tenants, createDevice's
statements as the app sends them ran 2,866 a second at 0.418 ms of PostgreSQL CPU each with the
NOTIFY in the COMMIT, and 5,208 at 0.273 ms woken by this waker, its NOTIFYs counted
(`python -m bench.write_cost 20000 --connections 32 --tenants 8`).

So requests (app.access.acting) hand the tenants whose logs grew to the process's `Waker` once
their COMMIT has succeeded, and it sends them on a connection of its own: what arrives while one
NOTIFY is under way, or within `SPACING_SECONDS` of it, goes in the next, so a process sends at
most one notifying commit at a time and a few hundred a second however many requests commit. A
request is answered without waiting for it.

The log, not the notification, is the news (app.runtime.announcements): a wake-up that is late or
lost delays readers and loses nothing. One lost with a process that dies between COMMIT and its
NOTIFY is made good by the readers' own sweeps (app.realtime.hub, webhooks, shares, MQTT), which
read their tenants' logs every few seconds whatever they heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import psycopg
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engines import own_connection
from app.db.notify import wake_sql

log = logging.getLogger("tenantry.changes")

# At most one NOTIFY a process this often: under a stream of writes each wake-up waits up to this
# long for the next ones instead of costing a NOTIFY (and its commit) of its own.
SPACING_SECONDS = 0.002
RETRY_SECONDS = 0.1  # … doubling up to RETRY_MAX_SECONDS while PostgreSQL cannot be reached
RETRY_MAX_SECONDS = 2.0


class Waker:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pending: set[str] = set()
        self._ready = asyncio.Event()
        self._sent = asyncio.Event()  # nothing pending and nothing under way
        self._sent.set()
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None

    def wake(self, tenants: Iterable[str]) -> None:
        """Wake the readers of these tenants' logs soon (their COMMIT has succeeded)."""
        self._pending.update(tenants)
        if not self._pending:
            return
        self._sent.clear()
        self._ready.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="change-log-waker")

    async def flushed(self) -> None:
        """Wait until every wake-up handed over so far has been sent."""
        await self._sent.wait()

    async def close(self) -> None:
        """Send what is pending (a shutdown leaves no reader unwoken), then stop."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):  # PostgreSQL gone: the readers' sweeps will see
                await asyncio.wait_for(self._sent.wait(), RETRY_MAX_SECONDS)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._task = None
        await self._disconnect()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay, next_at = RETRY_SECONDS, 0.0
        while True:
            await self._ready.wait()
            if (wait := next_at - loop.time()) > 0:
                await asyncio.sleep(wait)
            self._ready.clear()
            batch, self._pending = self._pending, set()
            if not batch:
                self._sent.set()
                continue
            try:
                conn = await self._connection()
                await conn.execute(wake_sql(batch))
                delay, next_at = RETRY_SECONDS, loop.time() + SPACING_SECONDS
            except Exception as exc:  # whatever it was, the batch is kept and the waker lives on
                self._pending |= batch  # sent again once PostgreSQL answers
                await self._disconnect()
                log.warning("changes: waking the readers of %d tenant(s) failed (%s); again in %.1fs",
                            len(batch), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                self._ready.set()
                continue
            if not self._pending:
                self._sent.set()

    async def _connection(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = await own_connection(self._engine)
        return self._conn

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()
