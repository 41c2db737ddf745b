"""Explicit transactions on AUTOCOMMIT connections.

A transaction is opened by one simple-protocol round trip (`BEGIN` plus whatever prefix the
caller gives — `app.access.acting` adds the tenant routing statement there), so the
routing travels with BEGIN. Connections are taken from the pool with a bounded wait: a
request that cannot get one in time is refused as UNAVAILABLE, never left hanging.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import psycopg
from sqlalchemy import Executable
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.errors import Unavailable

Params = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


class Executor(Protocol):
    """What services need from a transaction: run a statement, get buffered rows back."""

    async def execute(self, statement: Executable, parameters: Params = None) -> Result[Any]: ...


class BulkExecutor(Executor, Protocol):
    """An Executor that also takes COPY … FROM STDIN (the bulk measurement path)."""

    async def copy_text(self, copy_sql: str, data: bytes) -> None: ...


class Transaction:
    """One database transaction, opened on first use and finished exactly once.

    Resolvers of one GraphQL request run concurrently; a lock serialises their statements
    on the single connection (results are buffered, so nothing is left half-read).
    """

    def __init__(self, engine: AsyncEngine, prefix: str) -> None:
        self._engine = engine
        self._prefix = prefix
        self._conn: AsyncConnection | None = None
        self._lock = asyncio.Lock()
        self._finished = False
        self.wrote = False  # whether an INSERT/UPDATE/DELETE ran (its rollback loses work)

    async def _connection(self) -> AsyncConnection:
        if self._finished:
            raise RuntimeError("transaction already finished")
        if self._conn is None:
            conn = await connect(self._engine)
            try:
                await driver_execute(conn, self._prefix)
            except BaseException:
                await discard(conn)
                raise
            self._conn = conn
        return self._conn

    @property
    def opened(self) -> bool:
        return self._conn is not None

    async def execute(self, statement: Executable, parameters: Params = None) -> Result[Any]:
        async with self._lock:
            conn = await self._connection()
            if getattr(statement, "is_dml", False):
                self.wrote = True
            return await conn.execute(statement, parameters)

    async def copy_text(self, copy_sql: str, data: bytes) -> None:
        """COPY … FROM STDIN (text format) inside this transaction, the data sent in one write:
        the bulk path, one round trip per batch."""
        async with self._lock:
            conn = await self._connection()
            self.wrote = True
            await copy_in(conn, copy_sql, data)

    async def exec_driver_sql(self, sql: str) -> None:
        async with self._lock:
            conn = await self._connection()
            await conn.exec_driver_sql(sql)

    async def finish(self, *, commit: bool) -> None:
        """COMMIT or ROLLBACK and return the connection to the pool."""
        async with self._lock:
            self._finished = True
            conn, self._conn = self._conn, None
            if conn is None:
                return
            if not commit:
                await discard(conn)
                return
            try:
                await driver_execute(conn, "COMMIT")
            except BaseException:
                await discard(conn)
                raise
            await conn.close()


async def copy_in(conn: AsyncConnection, copy_sql: str, data: bytes) -> None:
    """COPY … FROM STDIN on the psycopg connection, the data sent in one write."""
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    async with driver.cursor() as cursor, cursor.copy(copy_sql) as copy:
        await copy.write(data)


async def connect(engine: AsyncEngine) -> AsyncConnection:
    """A pooled connection, or UNAVAILABLE when none frees up within the pool's (short)
    timeout or the database cannot be reached: a clear, retryable refusal instead of a hang."""
    try:
        return await engine.connect()
    except sa_exc.TimeoutError as exc:
        raise Unavailable("the server is busy: no database connection became free in time", retryAfter=1) from exc
    except (sa_exc.OperationalError, sa_exc.InterfaceError, psycopg.OperationalError) as exc:
        raise Unavailable("the database cannot be reached", retryAfter=5) from exc


async def driver_execute(conn: AsyncConnection, sql: str | bytes) -> None:
    """Run transaction control on the psycopg connection itself: it returns no rows, so
    SQLAlchemy's result machinery (about half the cost of a round trip) buys nothing."""
    raw = await conn.get_raw_connection()
    await raw.driver_connection.execute(sql.encode() if isinstance(sql, str) else sql)  # type: ignore[union-attr]


async def discard(conn: AsyncConnection) -> None:
    """Roll back whatever is open and release the connection, even when cancelled. A broken
    connection (the server went away) is dropped from the pool instead; the error that broke
    it is the caller's to report, not this cleanup's."""
    try:
        await asyncio.shield(conn.exec_driver_sql("ROLLBACK"))
    except (sa_exc.DBAPIError, sa_exc.InvalidRequestError, psycopg.Error):
        # Also SQLAlchemy's PendingRollbackError: a statement was cancelled half-way (shutdown).
        await asyncio.shield(conn.invalidate())
    finally:
        await asyncio.shield(conn.close())


@asynccontextmanager
async def transaction(engine: AsyncEngine, prefix: str = "BEGIN") -> AsyncIterator[Transaction]:
    """A transaction that commits when the block succeeds and rolls back otherwise."""
    tx = Transaction(engine, prefix)
    try:
        yield tx
    except BaseException:
        await tx.finish(commit=False)
        raise
    await tx.finish(commit=True)
