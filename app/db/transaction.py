"""Explicit transactions on AUTOCOMMIT connections.

A transaction is opened by one simple-protocol round trip (`BEGIN` plus whatever prefix the
caller gives — `app.access.acting` adds the tenant routing statement there), so the
routing travels with BEGIN. Connections are taken from the pool with a bounded wait: a
request that cannot get one in time is refused as UNAVAILABLE, never left hanging.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol, cast

import orjson
import psycopg
from psycopg import errors as psycopg_errors
from psycopg import generators
from psycopg.pq import ExecStatus
from sqlalchemy import Executable, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import embedded
from app.errors import Unavailable

Params = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


class Executor(Protocol):
    """What services need from a transaction: run a statement, get buffered rows back."""

    async def execute(self, statement: Executable, parameters: Params = None) -> Result[Any]: ...


async def first_column(db: Executor, sql: str, *, writes: bool = False) -> list[bytes | None]:
    """The first column's text (UTF-8) of each row of one complete SQL statement, its values inlined
    as literals by the caller (`writes`: an INSERT … RETURNING or the like). Request transactions
    send it on libpq directly, with BEGIN in its round trip when it opens the transaction
    (SQLAlchemy's execute cost four times the CPU of a one-row check); any other executor runs the
    same text through SQLAlchemy, its colons escaped so that none in a literal is read as a bind."""
    # Duck-typed (app.access.acting.PlaneView.first_column): isinstance on a Protocol costs more than the call.
    reader = getattr(db, "first_column", None)
    if reader is not None:
        return cast(list[bytes | None], await reader(sql, writes=writes))
    values = (await db.execute(text(sql.replace(":", "\\:")))).scalars()
    return [str(v).encode() if v is not None else None for v in values]


async def read_ids(db: Executor, sql: str) -> list[int]:
    """The first column, an integer, of each row of one complete SQL read (`first_column`)."""
    return [int(v) for v in await first_column(db, sql) if v is not None]


async def returned_json(db: Executor, sql: str) -> list[Any]:
    """The rows of one complete SQL write returning one JSON text per row (`first_column`), parsed.
    A write's text carries new values every time: give it `app.db.prepared.shaped`, so it is
    prepared by its shape without being cut (and not remembered by its text)."""
    return [orjson.loads(v) for v in await first_column(db, sql, writes=True) if v is not None]


class Direct:
    """An Executor on a connection whose transaction the caller already controls."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def execute(self, statement: Executable, parameters: Params = None) -> Result[Any]:
        return await self._conn.execute(statement, parameters)


class BulkExecutor(Executor, Protocol):
    """An Executor that also takes COPY … FROM STDIN (the bulk measurement path)."""

    async def copy_text(self, copy_sql: str, data: bytes) -> None: ...

    async def worker_xid(self) -> int | None:
        """The id of the transaction writing this plane's rows as their `xmin` shows it, when that is
        not the session's own: on Citus, the worker's local transaction. None elsewhere."""
        ...


class Transaction:
    """One database transaction, opened on first use and finished exactly once.

    Resolvers of one GraphQL request run concurrently; a lock serialises their statements
    on the single connection (results are buffered, so nothing is left half-read).
    """

    def __init__(self, engine: AsyncEngine, prefix: str, schema: str | None = None) -> None:
        self._engine = engine
        self._prefix = prefix
        self._schema = schema  # the tenant schema it works in, counted against the connection's limit
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
            if self._schema is not None:
                touched_schema(conn, self._schema)
            self._conn = conn
        return self._conn

    async def touch(self, schemas: Sequence[str]) -> None:
        """Count schemas this transaction read the catalog entries of (sizes of every tenant) against
        its connection's limit, as if it had worked in them: they stay cached in the backend alike."""
        async with self._lock:
            conn = await self._connection()
            for schema in schemas:
                touched_schema(conn, schema)

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

    async def _on_citus(self) -> bool:
        async with self._lock:
            return await is_citus(self._engine, await self._connection())

    async def worker_xid(self) -> int | None:
        if not await self._on_citus():
            return None
        return int((await self.execute(WORKER_XID)).scalar_one())

    async def exec_ddl(self, sql: str) -> None:
        """DDL text of several statements: in one round trip, or one statement per call on Citus."""
        if await self._on_citus():
            for statement in split_statements(sql):
                await self.exec_driver_sql(statement)
        else:
            await self.exec_driver_sql(sql)

    async def finish(self, *, commit: bool) -> None:
        """COMMIT or ROLLBACK and return the connection to the pool."""
        async with self._lock:
            self._finished = True
            conn, self._conn = self._conn, None
            if conn is None:
                return
            if not commit and await _over_limit(self._engine, conn):
                await conn.invalidate()  # its transaction ends with the backend
                await conn.close()
            elif not commit:
                await discard(conn)
            else:
                try:
                    await driver_execute(conn, "COMMIT")
                except BaseException:
                    await discard(conn)
                    raise
                await release(self._engine, conn)


_STATEMENT_END = re.compile(r";[ \t]*\n")


def split_statements(sql: str) -> list[str]:
    """DDL text (ours, and Alembic's offline output: one statement per `;` at a line end, no function
    bodies) as separate statements, comment-only pieces dropped."""
    out = []
    for piece in _STATEMENT_END.split(sql + "\n"):
        body = piece.strip().rstrip(";").strip()
        if body and any(line.strip() and not line.strip().startswith("--") for line in body.splitlines()):
            out.append(body)
    return out


_citus: dict[str, bool] = {}  # by database URL
_citus_engines: weakref.WeakKeyDictionary[AsyncEngine, bool] = weakref.WeakKeyDictionary()
# Routed to the worker holding the tenant schema (every tenant schema has alembic_version), so the
# function runs in the worker's part of the distributed transaction: the xid its rows carry.
WORKER_XID = text("SELECT pg_current_xact_id()::text::bigint % 4294967296 FROM alembic_version LIMIT 1")


_CITUS_QUERY = "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')"


async def is_citus(engine: AsyncEngine, conn: AsyncConnection | None = None) -> bool:
    """Whether the database runs Citus (asked once per database, at start-up by the app). Citus
    forwards a DDL string to its workers as one prepared statement, so there DDL goes one statement
    per call (citusdata/citus#6608).

    A caller that holds a connection passes it: asking on a second one from the same pool
    deadlocked provisioning on a cold cache (each of four concurrent createSubtenant held an owner
    connection, three waiting on the parent row the fourth had locked while it waited 30 s for a
    fifth connection to ask this)."""
    known = _citus_engines.get(engine)
    if known is not None:  # asked on every ingest request: rendering the URL cost more than the rest
        return known
    key = engine.url.render_as_string(hide_password=True)
    if key not in _citus:
        if conn is not None:
            found = (await conn.exec_driver_sql(_CITUS_QUERY)).scalar()
        else:
            async with engine.connect() as own:
                found = (await own.exec_driver_sql(_CITUS_QUERY)).scalar()
        _citus[key] = bool(found)
    _citus_engines[engine] = _citus[key]
    return _citus[key]


async def copy_in(conn: AsyncConnection, copy_sql: str, data: bytes) -> None:
    """COPY … FROM STDIN on the psycopg connection, the data sent in one write."""
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    async with driver.cursor() as cursor, cursor.copy(copy_sql) as copy:
        await copy.write(data)


class _Kept:
    """Connections a request gave back in a clean state, kept checked out for the next request.

    SQLAlchemy's checkout and checkin (greenlet hops, pool events, the reset) were a third of a
    small compiled read's CPU. A kept connection is IDLE (no transaction: role and search_path
    are transaction-local, so nothing of the last request remains), at most `limit` are kept, a
    kept one goes back to the pool after IDLE_SECONDS unused or LEASE_SECONDS in all (so the
    pool's recycling and sizing stay SQLAlchemy's), and anything unusual is simply closed."""

    IDLE_SECONDS = 1.0
    LEASE_SECONDS = 30.0

    def __init__(self, engine: AsyncEngine, limit: int) -> None:
        self.pool = engine.sync_engine.pool
        self.limit = limit
        self.idle: list[tuple[AsyncConnection, float]] = []  # (connection, given back at), newest last
        self.leased: weakref.WeakKeyDictionary[AsyncConnection, float] = weakref.WeakKeyDictionary()

    async def take(self) -> AsyncConnection | None:
        now = time.monotonic()
        while self.idle:
            conn, _ = self.idle.pop()
            if not conn.closed and now - self.leased.get(conn, now) < self.LEASE_SECONDS and self._current(conn):
                return conn
            await _close_quietly(conn)
        return None

    def _current(self, conn: AsyncConnection) -> bool:
        """Not made before the pool was invalidated (a lost server: SQLAlchemy then replaces every
        connection at its next checkout, which a kept one skips)."""
        try:
            fairy = conn.sync_connection.connection if conn.sync_connection is not None else None
        except sa_exc.SQLAlchemyError:
            return False
        record = getattr(fairy, "_connection_record", None)
        return record is not None and record.starttime >= getattr(self.pool, "_invalidate_time", 0)

    async def give(self, conn: AsyncConnection) -> bool:
        """Keep `conn` if it is clean; False when the caller must close it."""
        now = time.monotonic()
        await self.sweep(now)
        if len(self.idle) >= self.limit or now - self.leased.setdefault(conn, now) >= self.LEASE_SECONDS:
            return False
        if conn.closed or conn.invalidated or conn.in_transaction() or not _clean(conn):
            return False
        self.idle.append((conn, now))
        return True

    async def sweep(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        while self.idle and now - self.idle[0][1] >= self.IDLE_SECONDS:
            conn, _ = self.idle.pop(0)
            await _close_quietly(conn)

    async def close_all(self) -> None:
        idle, self.idle = self.idle, []
        for conn, _ in idle:
            await _close_quietly(conn)


def _clean(conn: AsyncConnection) -> bool:
    try:
        fairy = conn.sync_connection.connection if conn.sync_connection is not None else None
    except sa_exc.SQLAlchemyError:
        return False
    driver = fairy.driver_connection if fairy is not None else None
    return driver is not None and driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def _close_quietly(conn: AsyncConnection) -> None:
    try:
        await conn.close()
    except (sa_exc.SQLAlchemyError, psycopg.Error, OSError):
        await asyncio.shield(conn.invalidate())


_kept: weakref.WeakKeyDictionary[AsyncEngine, _Kept] = weakref.WeakKeyDictionary()


def keep_connections(engine: AsyncEngine, limit: int) -> None:
    """Let requests on `engine` keep up to `limit` clean connections between them."""
    _kept[engine] = _Kept(engine, limit)


async def release_kept(engine: AsyncEngine) -> None:
    kept = _kept.get(engine)
    if kept is not None:
        await kept.close_all()


# Schemas a pooled connection may have touched before it is closed (per engine; unset: no limit).
_schema_limits: dict[AsyncEngine, int | None] = {}
_TOUCHED = "tenantry_schemas_touched"
SCHEMAS_PER_CONNECTION = 500
# On Citus a coordinator backend also keeps one cached connection to a worker for every tenant role
# it acted as there (Citus caches per node *and user*, citus.max_cached_conns_per_worker each), so a
# backend that served 500 tenants held ~250 worker connections and a few of them exhausted a
# worker's max_connections. 20 bounds it at ~pool size x 20 worker connections in all, reconnecting
# to the coordinator once every 20 distinct tenants.
CITUS_SCHEMAS_PER_CONNECTION = 20


def limit_schemas_per_connection(engine: AsyncEngine, limit: int | None) -> None:
    """Close `engine`'s pooled connections once they have worked in `limit` schemas (None: 500, or
    20 on Citus): a PostgreSQL backend caches the catalog entries of every relation it touched (tens
    of KB a tenant schema) and never gives them back, so a long-lived connection of a server with
    10,000 tenants would grow to gigabytes. (Time-based recycling, pool_recycle, bounds it too, but
    only slowly.)"""
    _schema_limits[engine] = limit


async def count_schemas(db: Executor, schemas: Sequence[str]) -> None:
    """Count schemas whose tables `db` opened without working in them (sizing every tenant) against its
    connection's limit, where `db` keeps one (a Transaction, a request's plane)."""
    touch = getattr(db, "touch", None)
    if touch is not None:
        await touch(schemas)


def touched_schema(conn: AsyncConnection, schema: str) -> None:
    """Note that `conn` works in `schema` (kept with the pooled connection across checkouts)."""
    conn.info.setdefault(_TOUCHED, set()).add(schema)


async def schemas_per_connection(engine: AsyncEngine) -> int | None:
    """How many tenant schemas one of `engine`'s connections may work in (None: no limit)."""
    if engine not in _schema_limits:
        return None
    limit = _schema_limits[engine]
    if limit is None:  # decided once: asked again on every connection's release, it was 2% of a write's handler
        limit = _schema_limits[engine] = CITUS_SCHEMAS_PER_CONNECTION if await is_citus(engine) \
            else SCHEMAS_PER_CONNECTION
    return limit


async def _over_limit(engine: AsyncEngine, conn: AsyncConnection) -> bool:
    limit = await schemas_per_connection(engine)
    return limit is not None and len(conn.info.get(_TOUCHED, ())) > limit


async def release(engine: AsyncEngine, conn: AsyncConnection) -> None:
    """Give back a connection whose transaction is finished: kept for the next request when
    clean, otherwise returned to the pool; closed when it has touched too many schemas."""
    if await _over_limit(engine, conn):
        await conn.invalidate()  # the pool opens a fresh backend in its place
        await conn.close()
        return
    kept = _kept.get(engine)
    if kept is None or not await kept.give(conn):
        await conn.close()


async def connect(engine: AsyncEngine) -> AsyncConnection:
    """A pooled connection, or UNAVAILABLE when none frees up within the pool's (short)
    timeout or the database cannot be reached: a clear, retryable refusal instead of a hang."""
    kept = _kept.get(engine)
    if kept is not None:
        conn = await kept.take()
        if conn is not None:
            return conn
    try:
        return await engine.connect()
    except sa_exc.TimeoutError as exc:
        raise Unavailable("the server is busy: no database connection became free in time", retryAfter=1) from exc
    except (sa_exc.OperationalError, sa_exc.InterfaceError, psycopg.OperationalError) as exc:
        trouble = embedded.outage()  # the embedded server's own account of it, where there is one
        if trouble is None:
            raise Unavailable("the database cannot be reached", retryAfter=5) from exc
        raise Unavailable(f"the database cannot be reached (embedded PostgreSQL: {trouble})", retryAfter=5,
                          database=trouble) from exc


async def driver_execute(conn: AsyncConnection, sql: str | bytes) -> None:
    """Run transaction control on libpq itself, in one simple-protocol round trip: it returns no rows,
    so SQLAlchemy's result machinery (about half the cost of a round trip) and psycopg's cursor (its
    statement preparation and result bookkeeping, a tenth of a one-row write's CPU) buy nothing."""
    await simple_query(await libpq_connection(conn), sql.decode() if isinstance(sql, bytes) else sql)


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
async def transaction_on(conn: AsyncConnection) -> AsyncIterator[AsyncConnection]:
    """A transaction on a connection the caller holds outside any transaction (a request's own,
    lent to a use case): committed when the block succeeds, rolled back otherwise."""
    await driver_execute(conn, "BEGIN")
    try:
        yield conn
    except BaseException:
        await asyncio.shield(driver_execute(conn, "ROLLBACK"))
        raise
    await driver_execute(conn, "COMMIT")


@asynccontextmanager
async def transaction(engine: AsyncEngine, prefix: str = "BEGIN") -> AsyncIterator[Transaction]:
    """A transaction that commits when the block succeeds and rolls back otherwise."""
    async with settled(Transaction(engine, prefix)) as tx:
        yield tx


@asynccontextmanager
async def settled(tx: Transaction) -> AsyncIterator[Transaction]:
    """`tx` (a routed one: app.access.acting) committed when the block succeeds, rolled back otherwise."""
    try:
        yield tx
    except BaseException:
        await tx.finish(commit=False)
        raise
    await tx.finish(commit=True)


async def simple_query(driver: psycopg.AsyncConnection[Any], query: str) -> list[Any]:
    """Every result of a multi-statement query sent in one simple-protocol round trip on libpq;
    the first failed statement raised as psycopg would raise it."""
    pgconn = driver.pgconn
    pgconn.send_query(query.encode(driver.info.encoding))
    results = await driver.wait(generators.execute(pgconn))
    for result in results:
        if result.status not in (ExecStatus.TUPLES_OK, ExecStatus.COMMAND_OK):
            raise psycopg_errors.error_from_result(result, encoding=driver.info.encoding)
    return list(results)


async def libpq_connection(conn: AsyncConnection) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under `conn`: read directly when SQLAlchemy holds it (no greenlet
    hop), else through get_raw_connection (which also revalidates)."""
    sync = conn.sync_connection
    dbapi = getattr(sync, "_dbapi_connection", None) if sync is not None else None
    driver = getattr(dbapi, "driver_connection", None)
    if driver is None:
        driver = (await conn.get_raw_connection()).driver_connection
    assert isinstance(driver, psycopg.AsyncConnection)
    return driver
