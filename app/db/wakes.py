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
request is answered without waiting for the NOTIFY (a grouped one waits for the flush, below).

The log, not the notification, is the news (app.runtime.announcements): a wake-up that is late or
lost delays readers and loses nothing. One lost with a process that dies between COMMIT and its
NOTIFY is made good by the readers' own sweeps (app.realtime.hub, webhooks, shares, MQTT), which
read their tenants' logs every few seconds whatever they heard.

Group commit. The change log's gap-free order (app.db.notify.append_sql) holds one tenant's log head
until its writer's COMMIT returns, so one tenant's writers commit one at a time, and each waited
for its own WAL flush with the head held. So, where the database allows (`group_commit`), a request
that appends to the log while another of this process's such commits is under way (`committing`)
COMMITs with `synchronous_commit = off` — its locks go as soon as its commit record is written —
and is answered only once a flush that began after its COMMIT has succeeded (`durable`): the
waker's next round starts with one, never spaced, so one flush makes every commit before it
durable, as PostgreSQL's own group commit would. Thirty-two writers of one tenant ran 6,591
createDevice transactions a second at 0.181 ms of PostgreSQL CPU each against 2,944 at 0.317 ms
with each COMMIT flushed; a lone writer is not grouped, and costs what it did (0.235 against 0.230
ms on one connection; `python -m bench.write_cost 20000 --connections 32`, `… 2000`).

Durable, not merely flushed: the flush must not follow a crash that lost the commit. It does not
if the waker's connection, open before the request sent its COMMIT, is the one the flush ran on
(a crash ends every connection); otherwise the request flushes on its own connection, which
proves the same, and if that fails too its outcome is unknown (CommitOutcomeUnknown), as when
the COMMIT itself is cut off. Until the flush, other sessions can see the commit; the log's
readers that hand changes on (app.services.changes.log.durable_reads) flush before they do, so no
reader passes on a change a crash could take back.

Off on Citus (a worker's commits are flushed there, not here), before PostgreSQL 17 (no flushing
message), where PUBLIC may not call pg_logical_emit_message (tenants' roles could not flush what
they read), and with synchronous standbys (a local flush is not what their COMMIT waits for).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import psycopg
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engines import own_connection
from app.db.notify import wake_sql
from app.db.transaction import simple_query
from app.errors import CommitOutcomeUnknown

log = logging.getLogger("tenantry.changes")

# At most one NOTIFY a process this often: under a stream of writes each wake-up waits up to this
# long for the next ones instead of costing a NOTIFY (and its commit) of its own.
SPACING_SECONDS = 0.002
RETRY_SECONDS = 0.1  # … doubling up to RETRY_MAX_SECONDS while PostgreSQL cannot be reached
RETRY_MAX_SECONDS = 2.0
# How long a request waits for the waker's flush before it flushes on its own connection.
DURABLE_WAIT_SECONDS = 5.0

# Written and flushed at once, whatever the transaction (PostgreSQL 17's `flush`): every commit
# record written before it is then on disk. A logical decoder sees an empty message of this prefix.
FLUSH = "SELECT pg_logical_emit_message(false, 'tenantry.flush', '', true)"
# A reader's guard (app.services.changes.log.durable_reads, app.access.acting.read_as_tenants):
# whatever it read was committed before this, so with the WAL flushed up to here nothing it read can
# be taken back by a crash. Nothing is written when the WAL is already flushed; nothing is done
# before PostgreSQL 17, or where the reader's role may not flush (PUBLIC's right revoked), for
# then no commit is grouped (`_GROUPABLE`). A DO block: its PERFORM is planned, and its right
# checked, only when it runs.
_SIGNATURE = "'pg_logical_emit_message(boolean,text,text,boolean)'"
DURABLE_READS = ("DO $$ BEGIN IF current_setting('server_version_num')::int >= 170000 THEN "
                 f"IF pg_current_wal_flush_lsn() < pg_current_wal_insert_lsn() AND has_function_privilege("
                 f"{_SIGNATURE}, 'EXECUTE') THEN PERFORM " + FLUSH.removeprefix("SELECT ") + "; END IF; END IF; END $$")
# The step a grouped request sends before its COMMIT (app.access.acting): its locks go before the flush.
GROUPED = ("SET LOCAL synchronous_commit = off", False)
# Whether this database can group requests' commits so (see the module's docstring).
_GROUPABLE = ("SELECT CASE WHEN current_setting('server_version_num')::int >= 170000 "
              f"THEN has_function_privilege('public', {_SIGNATURE}, 'EXECUTE') ELSE false END "
              "AND current_setting('synchronous_standby_names') = '' "
              "AND NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")


class Waker:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._pending: set[str] = set()
        self._ready = asyncio.Event()
        self._wanted = asyncio.Event()  # a request waits for a flush
        self._committing = 0  # requests of this process sending a COMMIT that appends to the log
        self._sent = asyncio.Event()  # nothing pending and nothing under way
        self._sent.set()
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        # Requests waiting for the next flush, each with the connection generation it committed under.
        self._waiting: list[tuple[asyncio.Future[bool], int]] = []
        self._closed = False
        # Bumped by every new connection: a flush proves a commit durable only on the connection
        # that was open before the commit was sent.
        self.generation = 0
        # Learnt on the first connection (False until then: the first writes flush as they commit).
        self.group_commit = False

    def wake(self, tenants: Iterable[str]) -> None:
        """Wake the readers of these tenants' logs soon (their COMMIT has succeeded)."""
        self._pending.update(tenants)
        if not self._pending:
            return
        self._sent.clear()
        self._ready.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="change-log-waker")

    @contextlib.asynccontextmanager
    async def committing(self, driver: psycopg.AsyncConnection[Any],
                         tenants: Sequence[str]) -> AsyncIterator[list[tuple[str, bool]]]:
        """Around a request's COMMIT that appends to these tenants' logs (none: it does not): the
        steps to send before it, then, once it has succeeded, its readers woken — and first the
        commit made durable if it was grouped. Grouped only when another of this process's
        commits is under way: a lone writer's commit is flushed as it commits, which costs it
        less than a flush of its own on the waker's connection (`python -m bench.write_cost`)."""
        grouped = bool(tenants) and self.group_commit and bool(self._committing or self._waiting)
        generation = self.generation
        self._committing += bool(tenants)
        try:
            yield [GROUPED] if grouped else []
        finally:
            self._committing -= bool(tenants)
        if grouped:
            await self.durable(driver, tenants, generation)
        elif tenants:
            self.wake(tenants)

    async def durable(self, driver: psycopg.AsyncConnection[Any], tenants: Iterable[str], generation: int) -> None:
        """Return once this request's commit, sent with `synchronous_commit = off` while the waker's
        connection was `generation`, is durable, waking these tenants' readers; CommitOutcomeUnknown
        if nothing can prove it. `driver` is the request's own connection, which committed."""
        flushed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._closed:  # shutting down: its readers' sweeps will see it
            flushed.set_result(False)
        else:
            self._waiting.append((flushed, generation))
            self._wanted.set()
            self.wake(tenants)
        try:
            if await asyncio.wait_for(asyncio.shield(flushed), DURABLE_WAIT_SECONDS):
                return
        except TimeoutError:
            pass
        try:  # its own connection still open, so no crash since its COMMIT: a flush there covers it
            await simple_query(driver, FLUSH)
        except (psycopg.Error, OSError) as exc:
            raise CommitOutcomeUnknown() from exc

    def _cancel_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        _settle(waiting, None)

    async def flushed(self) -> None:
        """Wait until every wake-up handed over so far has been sent."""
        await self._sent.wait()

    async def close(self) -> None:
        """Send what is pending (a shutdown leaves no reader unwoken), then stop."""
        self._closed = True
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):  # PostgreSQL gone: the readers' sweeps will see
                await asyncio.wait_for(self._sent.wait(), RETRY_MAX_SECONDS)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._task = None
        self._cancel_waiting()  # any left flush on their own connections
        await self._disconnect()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay, next_at = RETRY_SECONDS, 0.0
        while True:
            await self._ready.wait()
            if not self._waiting and (wait := next_at - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):  # wake-ups wait for their spacing, a commit's flush never
                    await asyncio.wait_for(self._wanted.wait(), wait)
            self._ready.clear()
            self._wanted.clear()
            waiting, self._waiting = self._waiting, []
            batch: set[str] = set()
            if loop.time() >= next_at:
                batch, self._pending = self._pending, set()
            if not batch and not waiting:
                self._settled()
                continue
            try:
                conn = await self._connection()
                await conn.execute(";".join([*([FLUSH] if waiting else []), *([wake_sql(batch)] if batch else [])]))
                delay = RETRY_SECONDS
                if batch:
                    next_at = loop.time() + SPACING_SECONDS
                _settle(waiting, self.generation)
            except Exception as exc:  # whatever it was, the batch is kept and the waker lives on
                self._pending |= batch  # sent again once PostgreSQL answers
                _settle(waiting, None)  # they prove it on their own connections
                await self._disconnect()
                log.warning("changes: waking the readers of %d tenant(s) failed (%s); again in %.1fs",
                            len(batch), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                self._ready.set()
                continue
            self._settled()

    def _settled(self) -> None:
        """Done if nothing is left; else round again (wake-ups held back for their spacing)."""
        if self._pending or self._waiting:
            self._ready.set()
        else:
            self._sent.set()

    async def _connection(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = await own_connection(self._engine)
            self.generation += 1
            self.group_commit = bool((await (await self._conn.execute(_GROUPABLE)).fetchone() or (False,))[0])
        return self._conn

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()


def _settle(waiting: list[tuple[asyncio.Future[bool], int]], generation: int | None) -> None:
    """Tell each waiting request whether the flush just made proves its commit durable."""
    for flushed, committed_under in waiting:
        if not flushed.done():
            flushed.set_result(committed_under == generation)
