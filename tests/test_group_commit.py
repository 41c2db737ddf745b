"""Grouped commits (app.db.wakes): a request that appends to the change log while another of the
process's commits is under way COMMITs without waiting for its flush, and is answered only once a
later flush has made it durable; the log's readers flush what they read before handing it on.

PostgreSQL's own WAL writer is slowed for these tests (ALTER SYSTEM, undone after), so a commit
that nobody flushes stays unflushed for seconds and each assertion can tell the difference: with
the waker's flush (or a reader's) removed, the flushed position stays behind the commit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.access.acting import read_as_tenants, tenant_switch
from app.db.notify import append_sql, literal
from app.db.transaction import libpq_connection, simple_query
from app.db.wakes import GROUPED, Waker
from app.errors import CommitOutcomeUnknown
from app.runtime.platform import Platform
from app.services.changes import log
from tests.conftest import Api, World

SLOW = {"wal_writer_delay": "10s", "wal_writer_flush_after": "1GB"}


async def _settings(owner: AsyncConnection) -> dict[str, str]:
    rows = await owner.execute(text("SELECT name, setting || coalesce(unit, '') FROM pg_settings "
                                    "WHERE name = ANY(:n)"), {"n": list(SLOW)})
    return {name: value for name, value in rows.all()}


@pytest.fixture
async def owner(platform: Platform) -> AsyncIterator[AsyncConnection]:
    """An owner's connection, PostgreSQL's WAL writer slowed (it flushes only every 10 s) until the
    test ends; skipped where the owner may not change it."""
    async with platform.db.owner.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        if not (await conn.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))).scalar():
            pytest.skip("the database owner is no superuser here: it cannot slow the WAL writer (ALTER SYSTEM)")
        before = await _settings(conn)
        try:
            for name, value in SLOW.items():
                await conn.execute(text(f"ALTER SYSTEM SET {name} = '{value}'"))
            await conn.execute(text("SELECT pg_reload_conf()"))
            for _ in range(200):  # the reload reaches the WAL writer in its own time
                await _commit_unflushed(conn)
                await asyncio.sleep(0.05)
                if await _flushed(conn) < await _written(conn):
                    break
            else:
                raise AssertionError(f"the WAL writer was not slowed ({before} → {await _settings(conn)})")
            yield conn
        finally:
            for name in SLOW:
                await conn.execute(text(f"ALTER SYSTEM RESET {name}"))
            await conn.execute(text("SELECT pg_reload_conf()"))


async def _commit_unflushed(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT pg_logical_emit_message(false, 'tenantry.test', 'x')"))


async def _written(conn: AsyncConnection) -> int:
    return int((await conn.execute(text("SELECT pg_current_wal_insert_lsn() - '0/0'"))).scalar_one())


async def _flushed(conn: AsyncConnection) -> int:
    return int((await conn.execute(text("SELECT pg_current_wal_flush_lsn() - '0/0'"))).scalar_one())


def _append(tenant: str, note: str) -> str:
    """A grouped commit of one alarm entry in `tenant`'s log, as complete SQL."""
    entry = orjson.dumps({"k": "alarm", "o": "CREATED", "d": None, "b": {"id": 1, "type": note}}).decode()
    statements = [s.replace("CAST(:entries AS jsonb)", literal(f"[{entry}]") + "::jsonb")
                  for s in append_sql(tenant, [entry], bound=True)]
    return "; ".join(["BEGIN", tenant_switch(tenant), *statements, GROUPED[0], "COMMIT"])


@contextlib.asynccontextmanager
async def _another_commit_under_way(platform: Platform) -> AsyncIterator[None]:
    async with platform.db.app.connect() as conn:
        driver = await libpq_connection(conn)
        async with platform.waker.committing(driver, ["elsewhere"]):
            yield


async def _ready(platform: Platform) -> None:
    platform.waker.wake(["warm-up"])  # its first connection learns whether commits can be grouped
    await platform.waker.flushed()
    if not platform.waker.group_commit:
        pytest.skip("this database cannot group commits (Citus, PostgreSQL before 17, or synchronous standbys)")


async def test_a_grouped_commit_returns_only_once_a_later_flush_made_it_durable(
        platform: Platform, world: World, owner: AsyncConnection) -> None:
    await _ready(platform)
    tenant = await world.tenant()
    async with _another_commit_under_way(platform), platform.db.app.connect() as conn:
        driver = await libpq_connection(conn)
        async with platform.waker.committing(driver, [tenant.id]) as before_commit:
            assert before_commit == [GROUPED]
            await simple_query(driver, _append(tenant.id, "grouped"))
            committed = await _written(owner)
            assert await _flushed(owner) < committed  # committed, not yet flushed
        assert await _flushed(owner) >= committed


async def test_a_lone_commit_is_not_grouped(platform: Platform, owner: AsyncConnection) -> None:
    """No other commit under way: it is flushed as it commits, cheaper than a flush of its own."""
    await _ready(platform)
    async with platform.db.app.connect() as conn:
        driver = await libpq_connection(conn)
        async with platform.waker.committing(driver, ["alone"]) as before_commit:
            assert before_commit == []


async def test_with_the_wakers_connection_lost_the_commit_is_flushed_on_its_own(
        platform: Platform, world: World, owner: AsyncConnection) -> None:
    """The waker's flush ran on a connection opened after the COMMIT (a crash in between would
    have lost it): the request flushes on its own connection, which proves there was none."""
    await _ready(platform)
    tenant = await world.tenant()
    waker = platform.waker
    async with _another_commit_under_way(platform), platform.db.app.connect() as conn:
        driver = await libpq_connection(conn)
        async with waker.committing(driver, [tenant.id]):
            await simple_query(driver, _append(tenant.id, "reconnected"))
            committed = await _written(owner)
            assert waker._conn is not None
            await owner.execute(text("SELECT pg_terminate_backend(:p, 5000)"), {"p": waker._conn.info.backend_pid})
        assert await _flushed(owner) >= committed


async def test_with_both_connections_lost_the_outcome_is_unknown(
        platform: Platform, world: World, owner: AsyncConnection) -> None:
    await _ready(platform)
    tenant = await world.tenant()
    waker = platform.waker
    async with _another_commit_under_way(platform), platform.db.app.connect() as conn:
        driver = await libpq_connection(conn)

        async def commit_and_lose_both() -> None:
            async with waker.committing(driver, [tenant.id]):
                await simple_query(driver, _append(tenant.id, "lost"))
                assert waker._conn is not None
                for pid in (waker._conn.info.backend_pid, driver.info.backend_pid):
                    await owner.execute(text("SELECT pg_terminate_backend(:p, 5000)"), {"p": pid})

        with pytest.raises(CommitOutcomeUnknown):
            await commit_and_lose_both()
        await conn.invalidate()


async def test_the_logs_readers_flush_what_they_read_before_handing_it_on(
        platform: Platform, world: World, api: Api, owner: AsyncConnection) -> None:
    """A grouped commit is visible before its flush. The hub's read, and the `changes` query's,
    flush it before anyone is told: a crash can no longer take back what a reader passed on."""
    await _ready(platform)
    tenant = await world.tenant()
    async with platform.db.app.connect() as conn:
        driver = await libpq_connection(conn)
        await simple_query(driver, _append(tenant.id, "read-by-the-hub"))  # as if its flush never came
    committed = await _written(owner)
    assert await _flushed(owner) < committed
    read = await read_as_tenants(platform.db.app, {tenant.id: log.page_sql(0, 10, ["alarm"])})
    assert len(read[tenant.id]) == 1
    assert await _flushed(owner) >= committed

    async with platform.db.app.connect() as conn:
        await simple_query(await libpq_connection(conn), _append(tenant.id, "read-by-a-query"))
    committed = await _written(owner)
    assert await _flushed(owner) < committed
    answer = await api.gql("{ changes(types: [ALARM]) { edges { node { data } } } }", token=tenant.token,
                           tenant=tenant.id)
    assert [e["node"]["data"]["type"] for e in answer.data["changes"]["edges"]] == ["read-by-the-hub",
                                                                                     "read-by-a-query"]
    assert await _flushed(owner) >= committed


async def test_where_tenants_roles_may_not_flush_nothing_is_grouped_and_readers_still_read(
        platform: Platform, world: World, api: Api, owner: AsyncConnection) -> None:
    """A hardened database (PUBLIC's right to pg_logical_emit_message revoked): readers could not
    flush what they read, so commits are not grouped, and reading the log still works."""
    await _ready(platform)
    tenant = await world.tenant()
    function = "pg_logical_emit_message(boolean, text, text, boolean)"
    await owner.execute(text(f"REVOKE EXECUTE ON FUNCTION {function} FROM PUBLIC"))
    waker = Waker(platform.db.app)
    try:
        waker.wake(["hardened"])
        await waker.flushed()
        assert waker.group_commit is False
        raised = await api.gql('mutation { createDevice(input: {name: "h"}) { id } }', token=tenant.token,
                               tenant=tenant.id)
        assert raised.errors == []
        answer = await api.gql("{ changes(types: [DEVICE]) { edges { node { data } } } }", token=tenant.token,
                               tenant=tenant.id)
        assert [e["node"]["data"]["name"] for e in answer.data["changes"]["edges"]] == ["h"]
    finally:
        await owner.execute(text(f"GRANT EXECUTE ON FUNCTION {function} TO PUBLIC"))
        await waker.close()
