"""A pooled connection never carries a transaction (or its role and search_path) to the next checkout."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from app.access.acting import RequestTransaction
from app.db.engines import make_engine
from app.db.naming import tenant_schema
from app.db.transaction import driver_execute, is_citus, limit_schemas_per_connection, transaction
from app.runtime.platform import Platform
from app.tenancy.placement import placements
from tests.conftest import World


async def test_an_open_transaction_is_rolled_back_when_its_connection_returns(platform: Platform) -> None:
    engine = make_engine(platform.db.owner.url.render_as_string(hide_password=False), pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:  # on the driver, as the request transaction works
            await driver_execute(conn, "BEGIN; SELECT set_config('search_path', 'nowhere', true)")
            raw = await conn.get_raw_connection()
            first = raw.driver_connection
            assert first is not None
            assert (await (await first.execute("SHOW search_path")).fetchone()) == ("nowhere",)
        # Closed inside its transaction (a bug path): the pool's reset rolls it back.
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            assert raw.driver_connection is first  # the same connection, pool of one
            assert (await conn.execute(text("SHOW search_path"))).scalar_one() != "nowhere"
            status = raw.driver_connection.info.transaction_status
            assert status.name == "IDLE"
    finally:
        await engine.dispose()


async def test_kept_connections_are_clean_reused_and_given_back(platform: Platform) -> None:
    from app.db.transaction import _Kept, connect, keep_connections, release, release_kept

    engine = make_engine(platform.db.owner.url.render_as_string(hide_password=False), pool_size=2, max_overflow=0)
    keep_connections(engine, limit=1)
    try:
        conn = await connect(engine)
        await driver_execute(conn, "BEGIN; SELECT set_config('search_path', 'nowhere', true); COMMIT")
        await release(engine, conn)
        again = await connect(engine)
        assert again is conn  # kept, not checked in and out of the pool
        raw = await again.get_raw_connection()
        assert raw.driver_connection is not None
        assert (await (await raw.driver_connection.execute("SHOW search_path")).fetchone()) != ("nowhere",)
        # Still inside a transaction: never kept, the pool's reset rolls it back.
        await driver_execute(again, "BEGIN")
        await release(engine, again)
        third = await connect(engine)
        assert third is not again
        raw = await third.get_raw_connection()
        assert raw.driver_connection is not None
        assert raw.driver_connection.info.transaction_status.name == "IDLE"
        # Given back to the pool (as at shutdown, or after IDLE_SECONDS unused).
        await release(engine, third)
        await release_kept(engine)
        fourth = await connect(engine)
        assert fourth is not third
        await fourth.close()
    finally:
        await release_kept(engine)
        await engine.dispose()
    assert _Kept.IDLE_SECONDS <= _Kept.LEASE_SECONDS


async def test_a_pooled_connection_is_closed_after_working_in_too_many_tenant_schemas(
        platform: Platform, world: World) -> None:
    """Backend catalog caches grow with every tenant schema a connection touches: past the limit the
    connection is closed (a fresh backend takes its place), so no backend serves more than limit + 1."""
    tenants = [await world.tenant() for _ in range(5)]
    engine = platform.db.app
    limit_schemas_per_connection(engine, 2)
    served: dict[int, set[str]] = {}
    try:
        for _ in range(2):
            for t in tenants:
                tx = RequestTransaction(engine)
                pid = (await tx.plane(t.id).execute(text("SELECT pg_backend_pid()"))).scalar_one()
                served.setdefault(pid, set()).add(t.id)
                await tx.finish(commit=False)
    finally:
        limit_schemas_per_connection(engine, platform.settings.schemas_per_connection)
    assert max(len(ids) for ids in served.values()) <= 3, served
    assert len(served) >= 4  # backends were replaced, not just rotated


async def test_a_sweep_that_sized_many_tenants_gives_its_backend_up(world: World, platform: Platform) -> None:
    """Sizing a tenant's tables loads their catalog entries into the backend like working in them: a
    usage snapshot's batch counts against the connection's schema limit (a sweep of 1,000 tenants grew
    one backend by 164 MB before, 3 MB after, measured by hand)."""
    tenants = [await world.tenant() for _ in range(3)]
    engine = platform.db.app
    limit_schemas_per_connection(engine, 2)
    try:
        async with transaction(engine) as tx:
            pid = (await tx.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await placements(tx, [t.id for t in tenants], citus=await is_citus(engine))
        async with platform.db.owner.connect() as conn:
            for _ in range(50):  # the backend ends shortly after its connection is closed
                alive = (await conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"),
                                            {"p": pid})).scalar_one()
                if not alive:
                    break
                await asyncio.sleep(0.1)
        assert alive == 0
    finally:
        limit_schemas_per_connection(engine, platform.settings.schemas_per_connection)


async def test_a_transaction_never_needs_a_second_connection_to_learn_the_engine(
        world: World, platform: Platform) -> None:
    """Whether the database runs Citus, asked with a cold cache inside a transaction, is asked on
    that transaction's own connection: on a pool of one, a second checkout would wait for the
    connection this transaction holds (on Citus, concurrent createSubtenant calls deadlocked so)."""
    from app.db import transaction as module

    t = await world.tenant()
    engine = make_engine(platform.db.owner.url.render_as_string(hide_password=False), pool_size=1,
                         max_overflow=0, pool_timeout=2)
    key = engine.url.render_as_string(hide_password=True)
    citus = await is_citus(engine)

    def forget() -> None:  # both caches: by URL and by engine
        module._citus.pop(key)
        module._citus_engines.pop(engine)

    try:
        forget()
        async with transaction(engine) as tx:
            await tx.execute(text("SELECT 1"))  # the pool's one connection is this transaction's now
            await tx.exec_ddl("SELECT 1;\nSELECT 2")
        forget()
        async with transaction(engine, f"BEGIN; SET LOCAL search_path = {tenant_schema(t.id)}") as tx:
            await tx.execute(text("SELECT 1"))
            assert (await tx.worker_xid() is None) == (not citus)
        forget()
        request = RequestTransaction(engine)
        try:
            await request.plane(t.id).execute(text("SELECT 1"))
            assert (await request.worker_xid(t.id) is None) == (not citus)
        finally:
            await request.finish(commit=False)
        assert module._citus[key] == citus
    finally:
        module._citus[key] = citus
        await engine.dispose()
