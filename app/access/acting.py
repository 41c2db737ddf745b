"""Acting as a tenant: the only module that writes role-switch SQL.

Every statement on tenant data runs under exactly one tenant's role with that tenant's schema
first on the search_path; management-plane statements run as the application role (which
reads no tenant table) with the management schema on the path. Both settings are
transaction-local (`set_config(…, true)`), so nothing leaks into the next checkout of a pooled
connection — a session-level SET would. Identifiers are inlined because the simple protocol
takes no parameters; they come only from `app.db.naming`, which validates them.

- `RequestTransaction`: one request's single transaction on ONE pooled connection, shared by
  routing's management lookups and the tenant's work (a request never holds one connection while
  waiting for a second: with every connection held so, the server once stopped answering).
- `tenant_transaction` / `management_transaction`: stand-alone transactions (jobs, CLI).
- `act_as_tenant` / `act_as_app`: switches inside a caller's own transaction (copy, migration,
  template sync: one transaction that reads as one tenant and writes as another).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any

import psycopg
from sqlalchemy import Executable, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db import prepared
from app.db.naming import MANAGEMENT_SCHEMA, tenant_role, tenant_schema
from app.db.notify import append_sql, audit_sql, wake_sql
from app.db.transaction import (
    WORKER_XID,
    Direct,
    Executor,
    Params,
    Transaction,
    connect,
    copy_in,
    discard,
    driver_execute,
    is_citus,
    libpq_connection,
    release,
    schemas_per_connection,
    simple_query,
    touched_schema,
)
from app.db.wakes import DURABLE_READS, Waker
from app.errors import CommitOutcomeUnknown

# The management plane: back to the application role, management schema on the path.
APP_SWITCH = f"SELECT set_config('role', 'none', true), set_config('search_path', '{MANAGEMENT_SCHEMA}', true)"


def tenant_switch(tenant_id: str) -> str:
    schema, role = tenant_schema(tenant_id), tenant_role(tenant_id)
    return f"SELECT set_config('search_path', '{schema}', true), set_config('role', '{role}', true)"


_ROLE_NOW = text("SELECT current_setting('role') AS role, current_setting('search_path') AS path")
_RESTORE = text("SELECT set_config('role', :role, true), set_config('search_path', :path, true)")


async def append_as_tenant(db: Executor, tenant_id: str, entries: Sequence[str]) -> None:
    """Append change-log entries to `tenant_id`'s log inside `db`'s open transaction, under that
    tenant's role whatever plane `db` is on (a copy job's management transaction writes its
    target's log), then back to the role and search path it had."""
    now = (await db.execute(_ROLE_NOW)).one()
    array = "[" + ",".join(entries) + "]"
    await db.execute(text(tenant_switch(tenant_id)))
    for statement in append_sql(tenant_id, entries, bound=True):
        await db.execute(text(statement), {"entries": array})
    await db.execute(_RESTORE, {"role": now.role, "path": now.path})


async def read_as_tenants(engine: AsyncEngine, queries: dict[str, str]) -> dict[str, list[tuple[bytes | None, ...]]]:
    """One read-only statement per tenant (complete SQL, values inlined as literals by the caller),
    each under its tenant's role, all in ONE simple-protocol round trip on one pooled connection,
    then ROLLBACK: each row as its values' text. The realtime hub reads the logs of every tenant
    that woke up this way (a transaction per tenant cost it two round trips each)."""
    conn = await connect(engine)
    order = list(queries)
    try:
        for tenant in order:
            touched_schema(conn, tenant)
        steps = ["BEGIN READ ONLY"]
        for tenant in order:
            steps += [tenant_switch(tenant), queries[tenant]]
        driver = await libpq_connection(conn)
        steps.append(DURABLE_READS)  # what it read made durable before it is handed on (app.db.wakes)
        try:
            results = await simple_query(driver, "; ".join([*steps, "ROLLBACK"]))
        except psycopg.Error:
            await driver.execute(b"ROLLBACK")
            raise
    except BaseException:
        await discard(conn)
        raise
    if conn.in_transaction():  # SQLAlchemy's bookkeeping only: the database's transaction ended above
        await conn.rollback()
    await release(engine, conn)
    out: dict[str, list[tuple[bytes | None, ...]]] = {}
    for i, tenant in enumerate(order):
        res = results[2 + 2 * i]
        out[tenant] = [tuple(res.get_value(r, c) for c in range(res.nfields)) for r in range(res.ntuples)]
    return out


def _switch(plane: str | None) -> str:
    return APP_SWITCH if plane is None else tenant_switch(plane)


# The timeouts a request's transaction runs under, by the names PostgreSQL gives them (and its
# errors name); app.http.errors answers each as UNAVAILABLE naming it.
REQUEST_TIMEOUTS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")


def request_limits(statement_seconds: float, lock_seconds: float, idle_seconds: float) -> str:
    """The request transaction's timeouts as more columns of its first role switch (transaction-local
    like it, so a pooled connection's next user — a job, a migration — is not bound by them; and in
    the same SELECT, so they cost no statement of their own). 0 leaves one unset."""
    values = dict(zip(REQUEST_TIMEOUTS, (statement_seconds, lock_seconds, idle_seconds), strict=True))
    return "".join(f", set_config('{name}', '{round(seconds * 1000)}', true)"
                   for name, seconds in values.items() if seconds > 0)


def tenant_transaction(engine: AsyncEngine, tenant_id: str) -> Transaction:
    """A transaction routed to one tenant (its role and schema) from its first round trip."""
    return Transaction(engine, "BEGIN; " + tenant_switch(tenant_id), schema=tenant_id)


def management_transaction(engine: AsyncEngine) -> Transaction:
    return Transaction(engine, "BEGIN; " + APP_SWITCH)


async def act_as_tenant(driver: psycopg.AsyncConnection[Any], tenant_id: str) -> None:
    """Inside an open transaction on `driver`: from now on, act as this tenant."""
    await driver.execute(tenant_switch(tenant_id).encode())


async def act_as_app(driver: psycopg.AsyncConnection[Any]) -> None:
    """Inside an open transaction on `driver`: back to the management plane."""
    await driver.execute(APP_SWITCH.encode())


def act_as_tenant_blocking(conn: psycopg.Connection[Any], tenant_id: str) -> None:
    """The same, on a blocking psycopg connection (a copy's reader thread)."""
    conn.execute(tenant_switch(tenant_id).encode())


AfterHook = Callable[[Executor], Awaitable[None]]


async def read_in_tenants(engine: AsyncEngine, tenant_ids: Sequence[str], sql: str) -> list[tuple[bytes | None, ...]]:
    """The single row of the same read statement in each tenant (values as text), in ONE
    simple-protocol round trip: BEGIN, then each tenant's role switch and the statement, then
    ROLLBACK (nothing is written). For sweeps over every tenant (usage snapshots): a transaction
    a tenant cost three round trips each. Raises if any tenant's statement fails (the caller
    then asks those tenants one by one). At most a connection's share of tenant schemas goes to one
    connection (TENANTRY_SCHEMAS_PER_CONNECTION: on Citus each tenant role costs a worker connection)."""
    chunk = await schemas_per_connection(engine) or len(tenant_ids) or 1
    rows: list[tuple[bytes | None, ...]] = []
    for start in range(0, len(tenant_ids), chunk):
        part = tenant_ids[start:start + chunk]
        conn = await connect(engine)
        try:
            driver = await libpq_connection(conn)
            steps = ["BEGIN"]
            for tenant_id in part:
                steps += [tenant_switch(tenant_id), sql]
            steps.append("ROLLBACK")
            results = await simple_query(driver, "; ".join(steps))
            for n in range(len(part)):
                answer = results[2 + 2 * n]
                rows.append(tuple(answer.get_value(0, k) for k in range(answer.nfields)) if answer.ntuples else ())
            for tenant_id in part:
                touched_schema(conn, tenant_id)
        except BaseException:
            await discard(conn)
            raise
        await release(engine, conn)
    return rows


class RequestTransaction:
    """One request's transaction on one pooled connection, shared by the management plane
    (`plane=None`) and any tenant (`plane=<tenant id>`); the role is switched only when the
    next statement is for another plane. Resolvers of one GraphQL request run concurrently:
    a lock serialises their statements (results are buffered, so nothing is left half-read).
    """

    def __init__(self, engine: AsyncEngine, limits: str = "", waker: Waker | None = None) -> None:
        self._engine = engine
        self._limits = limits  # request_limits(…), set with the first role switch of each transaction
        self._waker = waker  # wakes the log's readers after COMMIT (app.db.wakes); without one, at COMMIT
        self._conn: AsyncConnection | None = None
        self._plane: str | None = None
        self._between = False  # the connection is held, but no transaction is open on it (own_transaction)
        self._lock = asyncio.Lock()
        self._finished = False
        self.wrote = False  # whether an INSERT/UPDATE/DELETE ran (its rollback loses work)
        # Management-plane writes kept whatever the request's outcome (the audit of a
        # parent-level access): run before COMMIT, or after a ROLLBACK in a short transaction
        # of their own on the same connection.
        self._always: list[AfterHook] = []
        # Per tenant, change-log entries (app.runtime.announcements) and data-plane audit rows
        # (app.services.audit.data_audit), both written in the round trip of COMMIT.
        self._announced: dict[str, tuple[list[str], list[str]]] = {}

    @property
    def opened(self) -> bool:
        return self._conn is not None

    def _begin(self, plane: str | None) -> str:
        return "BEGIN; " + _switch(plane) + self._limits

    async def _connection(self, plane: str | None) -> AsyncConnection:
        if self._finished:
            raise RuntimeError("transaction already finished")
        if self._conn is None:
            conn = await connect(self._engine)
            try:
                await driver_execute(conn, self._begin(plane))
            except BaseException:
                await discard(conn)
                raise
            self._conn, self._plane = conn, plane
        elif self._between:
            await driver_execute(self._conn, self._begin(plane))
            self._plane, self._between = plane, False
        elif plane != self._plane:
            await driver_execute(self._conn, _switch(plane))
            self._plane = plane
        if plane is not None:
            touched_schema(self._conn, plane)
        return self._conn

    async def execute(self, plane: str | None, statement: Executable, parameters: Params = None) -> Result[Any]:
        async with self._lock:
            conn = await self._connection(plane)
            if getattr(statement, "is_dml", False):
                self.wrote = True
            return await conn.execute(statement, parameters)

    async def read_results(self, statements: Sequence[tuple[str | None, str]], *, setup: Sequence[str] = (),
                           last: bool) -> tuple[list[Any], str]:
        """libpq's result of each read statement (complete SQL, values inlined by the caller) on its
        plane, and the connection's encoding: with BEGIN and the role switches, `setup` statements
        (transaction-local settings) first, and COMMIT after them when they are the request's `last`
        and nothing must run before COMMIT, in ONE simple-protocol round trip on libpq: the compiled
        read path. (A pipeline of extended-protocol statements cost a third more CPU, psycopg's cursor
        another tenth.) On failure the transaction stays open (aborted) for `finish` to roll back."""
        return await self._round_trip(statements, setup, last)

    async def first_column(self, plane: str | None, sql: str, writes: bool) -> list[bytes | None]:  # transaction.
        self.wrote |= writes
        (result,), encoding = await self._round_trip([(plane, sql)], (), False)
        values: list[bytes | None] = [result.get_value(row, 0) for row in range(result.ntuples)]
        return values if encoding == "utf-8" else [v and v.decode(encoding).encode() for v in values]

    async def _round_trip(self, statements: Sequence[tuple[str | None, str]], setup: Sequence[str],
                          last: bool) -> tuple[list[Any], str]:  # libpq's results, the encoding
        async with self._lock:
            if self._finished:
                raise RuntimeError("transaction already finished")
            steps: list[str] = []
            if self._conn is None or self._between:
                self._conn = self._conn or await connect(self._engine)
                self._between = False
                steps, self._plane = ["BEGIN", _switch(statements[0][0]) + self._limits], statements[0][0]
            planned = [(step, False) for step in [*steps, *setup]]
            for plane, sql in statements:
                if plane != self._plane:
                    planned.append((_switch(plane), False))
                    self._plane = plane
                if plane is not None:
                    touched_schema(self._conn, plane)
                planned.append((sql, True))  # prepared once the connection has met its shape (app.db.prepared)
            commit = last and not self._always and not self._announced
            driver = await libpq_connection(self._conn)
            results = await prepared.round_trip(driver, [*planned, *([("COMMIT", False)] if commit else [])],
                                                whole=bool(steps))
            if commit:  # a statement after this (a compiled read's failed guard: the generic path) opens another
                conn, self._conn = self._conn, None
                await release(self._engine, conn)
            return results, driver.info.encoding

    async def copy_text(self, plane: str | None, copy_sql: str, data: bytes) -> None:
        """COPY … FROM STDIN (text format), the data sent in one write: the bulk path."""
        async with self._lock:
            conn = await self._connection(plane)
            self.wrote = True
            await copy_in(conn, copy_sql, data)

    async def exec_driver_sql(self, plane: str | None, sql: str) -> None:
        async with self._lock:
            await (await self._connection(plane)).exec_driver_sql(sql)

    async def touch(self, schemas: Sequence[str]) -> None:
        """Count tenant schemas whose catalog entries this request loaded against the connection's limit."""
        async with self._lock:
            conn = await self._connection(None)
            for schema in schemas:
                touched_schema(conn, schema)

    async def worker_xid(self, plane: str | None) -> int | None:
        async with self._lock:  # asked on this request's connection, never a second one of the pool
            if plane is None or not await is_citus(self._engine, await self._connection(plane)):
                return None
        return int((await self.execute(plane, WORKER_XID)).scalar_one())

    def always(self, hook: AfterHook) -> None:
        self._always.append(hook)

    def announce(self, tenant_id: str, entries: Sequence[str]) -> None:
        self._announced.setdefault(tenant_id, ([], []))[0].extend(entries)

    def audit_at_commit(self, tenant_id: str, row: str) -> None:
        self._announced.setdefault(tenant_id, ([], []))[1].append(row)

    def plane(self, plane: str | None) -> PlaneView:
        return PlaneView(self, plane)

    @asynccontextmanager
    async def own_transaction(self) -> AsyncIterator[AsyncConnection]:
        """Lend this request's connection, outside any transaction, to a use case that runs a
        transaction of its own (a cross-tenant copy or migration in REPEATABLE READ, which must
        be chosen at BEGIN). The request's work so far is committed first, with its hooks and
        announcements, and the request goes on afterwards in a new transaction on the same
        connection: the pool is never asked for a second connection while this one is held."""
        async with self._lock:
            if self._finished:
                raise RuntimeError("transaction already finished")
            if self._conn is None:
                self._conn = await connect(self._engine)
            elif not self._between:
                await self._commit_so_far(self._conn)
            self._between, self.wrote = True, False
            conn = self._conn
            try:
                yield conn
            except BaseException:
                if not await _usable(conn):  # interrupted half-way: nothing on it can be trusted
                    self._conn = None
                    await discard(conn)
                raise

    async def _commit_so_far(self, conn: AsyncConnection) -> None:
        hooks, self._always = self._always, []
        announced, self._announced = self._announced, {}
        if hooks and self._plane is not None:
            await driver_execute(conn, APP_SWITCH)
        await _commit(conn, hooks, announced, self._waker)

    async def finish(self, *, commit: bool) -> None:
        """COMMIT or ROLLBACK (once) and return the connection to the pool."""
        async with self._lock:
            if self._finished:
                return
            self._finished = True
            hooks, self._always = self._always, []
            announced, self._announced = self._announced, {}
            conn, self._conn = self._conn, None
            if conn is not None and self._between:  # a lent connection came back: hooks need a transaction
                await driver_execute(conn, self._begin(None))
                self._plane, self._between = None, False
            if conn is not None and not await _usable(conn):
                # A statement was interrupted (graphql-core cancels the other resolvers of a request
                # once a non-null field fails): nothing of this transaction can be kept. The
                # connection is dropped; the always-hooks (audit) still run on a fresh one.
                await discard(conn)
                conn = None
                if commit:
                    raise RuntimeError("the request's transaction was interrupted: nothing was saved")
            if conn is None and hooks:
                conn = await connect(self._engine)
                await driver_execute(conn, self._begin(None))
                commit = True
            elif conn is not None and hooks and self._plane is not None:
                await driver_execute(conn, APP_SWITCH)
            if conn is None:
                return
            try:
                if commit:
                    await _commit(conn, hooks, announced, self._waker)
                else:
                    await driver_execute(conn, "ROLLBACK")
                    if hooks:
                        await driver_execute(conn, self._begin(None))
                        for hook in hooks:
                            await hook(Direct(conn))
                        await driver_execute(conn, "COMMIT")
            except BaseException:
                await discard(conn)
                raise
            if conn.in_transaction():  # SQLAlchemy's bookkeeping only: the database's transaction ended above
                await conn.rollback()
            await release(self._engine, conn)


async def _commit(conn: AsyncConnection, hooks: Sequence[AfterHook],
                  announced: dict[str, tuple[list[str], list[str]]], waker: Waker | None) -> None:
    """The kept writes, then the audit rows and change-log entries (each tenant's under its own
    role) and COMMIT in one round trip; then the log's readers are woken by `waker` (which first
    makes the commit durable if it is grouped), or without one by a NOTIFY sent with the COMMIT."""
    for hook in hooks:
        await hook(Direct(conn))
    # Every write's audit and log statements: the same few shapes, prepared (app.db.prepared).
    steps = [step for tenant, (entries, audited) in announced.items()
             for step in ((tenant_switch(tenant), False), *((sql, True) for sql in (
                 *audit_sql(audited), *(append_sql(tenant, entries) if entries else ()))))]
    woken = [tenant for tenant, (entries, _) in announced.items() if entries]
    if woken and waker is None:
        steps.append((wake_sql(woken), False))
    driver = await libpq_connection(conn)
    around: AbstractAsyncContextManager[list[tuple[str, bool]]] = \
        waker.committing(driver, woken) if waker is not None else nullcontext([])
    async with around as before_commit:
        try:
            await prepared.round_trip(driver, [*steps, *before_commit, ("COMMIT", False)], whole=False)
        except (psycopg.OperationalError, sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            # Lost mid-COMMIT: saved or not, nobody here can tell. Say so.
            raise CommitOutcomeUnknown() from exc


async def _usable(conn: AsyncConnection) -> bool:
    """Whether the connection can still run this transaction's COMMIT/ROLLBACK and hooks: no
    statement of it was interrupted half-way (SQLAlchemy then refuses it until rolled back, and
    psycopg may still be reading the interrupted statement's results)."""
    transaction = conn.get_transaction()
    if transaction is not None and not transaction.is_active:
        return False
    try:
        raw = await conn.get_raw_connection()
    except sa_exc.SQLAlchemyError:
        return False
    driver = raw.driver_connection
    return driver is not None and driver.info.transaction_status in (
        psycopg.pq.TransactionStatus.IDLE, psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR)


class PlaneView:
    """The request transaction seen from one plane: what services take as their `db`."""

    def __init__(self, shared: RequestTransaction, plane: str | None) -> None:
        self._shared = shared
        self.plane = plane

    async def execute(self, statement: Executable, parameters: Params = None) -> Result[Any]:
        return await self._shared.execute(self.plane, statement, parameters)

    async def copy_text(self, copy_sql: str, data: bytes) -> None:
        await self._shared.copy_text(self.plane, copy_sql, data)

    async def read_results(self, statements: Sequence[tuple[str | None, str]], *, setup: Sequence[str] = (),
                           last: bool = False) -> tuple[list[Any], str]:
        """RequestTransaction.read_results: each statement on the plane it names, whatever this view's."""
        return await self._shared.read_results(statements, setup=setup, last=last)

    async def first_column(self, sql: str, *, writes: bool = False) -> list[bytes | None]:
        return await self._shared.first_column(self.plane, sql, writes)

    async def exec_driver_sql(self, sql: str) -> None:
        await self._shared.exec_driver_sql(self.plane, sql)

    async def worker_xid(self) -> int | None:
        return await self._shared.worker_xid(self.plane)

    async def touch(self, schemas: Sequence[str]) -> None:
        await self._shared.touch(schemas)

    def announce(self, tenant_id: str, entries: Sequence[str]) -> None:
        """Queue change-log entries for this request's COMMIT (app.runtime.announcements)."""
        self._shared.announce(tenant_id, entries)

    def audit_at_commit(self, row: str) -> None:
        """Queue an audit row (a JSON object, app.db.notify.audit_sql) of this view's tenant for COMMIT."""
        assert self.plane is not None, "the audit log lives in a tenant's schema"
        self._shared.audit_at_commit(self.plane, row)

    def always(self, hook: AfterHook) -> None:
        """Run `hook` before COMMIT, or after a ROLLBACK in a short transaction of its own on the
        same connection: a management-plane write kept whatever the request's outcome."""
        self._shared.always(hook)

    @property
    def opened(self) -> bool:
        return self._shared.opened

    @property
    def wrote(self) -> bool:
        return self._shared.wrote

    async def finish(self, *, commit: bool) -> None:
        await self._shared.finish(commit=commit)
