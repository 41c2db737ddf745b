"""Where tenants live: `Tenant.placement`, `tenantry tenants placement/move/rebalance`, and on Citus
(make test-citus) moves under load, copies and migrations across nodes, and worker-level isolation.

The Citus-only tests skip on a single PostgreSQL server (`make test`); `make test-citus` runs this
file, among others, against a coordinator and two workers.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.db.naming import tenant_schema
from app.db.transaction import is_citus, transaction
from app.runtime.platform import Platform
from app.services.tenants.placement import move_tenant, tenant_placements
from app.services.usage.statistics import take_snapshots
from tests.conftest import Api, TenantHandle, World
from tests.test_cli import run  # noqa: F401 - the `tenantry` subprocess fixture
from tests.test_copy import COPY, _seed, _target_state

PLACEMENT = "query($t: ID!) { tenantById(id: $t) { placement { node sizeBytes } } }"


async def _citus(platform: Platform) -> bool:
    return await is_citus(platform.db.owner)


async def _sql_size(platform: Platform, tenant_id: str) -> int:
    """The schema's size by another road than the app's: Citus's own per-table function there."""
    size = "citus_total_relation_size" if await _citus(platform) else "pg_total_relation_size"
    async with platform.db.owner.connect() as conn:
        return int((await conn.execute(text(
            f"SELECT coalesce(sum({size}(c.oid)), 0) FROM pg_class c WHERE c.relkind = 'r' "
            "AND c.relnamespace = CAST(:s AS regnamespace)"), {"s": tenant_schema(tenant_id)})).scalar_one())


async def _nodes(platform: Platform) -> list[str]:
    async with platform.db.owner.connect() as conn:
        return [f"{h}:{p}" for h, p in (await conn.execute(text(
            "SELECT nodename, nodeport FROM pg_dist_node WHERE noderole = 'primary' AND shouldhaveshards "
            "ORDER BY nodeid"))).all()]


async def _node_of(platform: Platform, tenant_id: str) -> str:
    async with transaction(platform.db.app) as tx:
        found = await tenant_placements(platform, tx, await platform.gate.operator(tx), [tenant_id])
    node = found[tenant_id].node
    assert node is not None
    return node


async def _move_elsewhere(platform: Platform, tenant_id: str, away_from: str | None = None) -> str:
    """Move the tenant to a node other than `away_from` (default: its own); returns that node."""
    here = away_from or await _node_of(platform, tenant_id)
    target = next(n for n in await _nodes(platform) if n != here)
    if await _node_of(platform, tenant_id) != target:
        async with transaction(platform.db.app) as tx:
            operator = await platform.gate.operator(tx)
        await move_tenant(platform, operator, tenant_id, target)
    return target


async def test_the_operator_alone_sees_where_a_tenant_lives_and_its_size(api: Api, world: World,
                                                                         platform: Platform) -> None:
    enterprise = await world.tenant(kind="ENTERPRISE")
    t = await world.tenant(enterprise)
    await _seed(api, t, "sized", n=50)
    seen = (await api.gql(PLACEMENT, {"t": t.id}, token=world.operator_token, tenant="management")).data
    placement = seen["tenantById"]["placement"]
    assert placement["sizeBytes"] == await _sql_size(platform, t.id)
    if await _citus(platform):
        assert placement["node"] in await _nodes(platform)
    else:
        assert placement["node"] is None

    # A page of tenants is answered in one batch (and each one's own figures).
    page = await api.gql("{ tenants(first: 50) { edges { node { id placement { sizeBytes } } } } }",
                         token=world.operator_token, tenant="management")
    sizes = {e["node"]["id"]: e["node"]["placement"]["sizeBytes"] for e in page.data["tenants"]["edges"]}
    assert all(size > 0 for size in sizes.values())

    # The tenant's own admin and its parent's admin are refused: placement is the installation's.
    own = await api.gql("{ tenant { placement { node } } }", token=t.token, tenant=t.id)
    assert own.code == "FORBIDDEN"
    parent = await api.gql(PLACEMENT, {"t": t.id}, token=enterprise.token, tenant=enterprise.id)
    assert parent.code == "FORBIDDEN"

    # Usage snapshots store the same size (on Citus: as the worker holding it measures it).
    today = datetime.now(UTC).date()
    await take_snapshots(platform.db.app, today=today, tenant_ids=[t.id])
    async with platform.db.owner.connect() as conn:
        stored = (await conn.execute(text("SELECT storage_size FROM tenantry.usage_daily WHERE tenant_id = :t "
                                          "AND day = :d"), {"t": t.id, "d": today})).scalar_one()
    assert stored == await _sql_size(platform, t.id)


async def test_placement_move_and_rebalance_from_the_shell(run, platform: Platform) -> None:  # type: ignore[no-untyped-def] # noqa: F811
    listed = run("tenants", "placement", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"id":"management"' in listed.stdout
    table = run("tenants", "placement", "management")
    assert table.returncode == 0, table.stderr
    bad = run("tenants", "move", "management", "--node", "not a node")
    assert bad.returncode == 2
    unknown = run("tenants", "move", "t000000001", "--node", "127.0.0.1:5432")
    assert (unknown.returncode, "no tenant t000000001" in unknown.stderr) == (2, True)
    plan = run("tenants", "rebalance", "--by", "count", "--dry-run")
    if await _citus(platform):
        assert "host:port" in bad.stderr
        assert plan.returncode == 0, plan.stderr
        assert "schema move(s)" in plan.stdout
        nowhere = run("tenants", "move", "management", "--node", "127.0.0.1:1")
        assert "not an active Citus node" in nowhere.stderr
    else:
        assert "(this server)" in table.stdout
        for refused in (bad, plan):  # nothing to move between: a clear refusal, not a crash
            assert refused.returncode == 2
            assert "single PostgreSQL server" in refused.stderr


async def _require_citus(platform: Platform) -> None:
    if not await _citus(platform):
        pytest.skip("needs Citus (make test-citus)")


async def test_a_tenant_moves_online_under_a_write_loop_and_loses_nothing(api: Api, world: World,
                                                                          platform: Platform) -> None:
    await _require_citus(platform)
    t = await world.tenant()
    await _seed(api, t, "before", n=200)
    acknowledged: list[str] = []
    latencies: list[float] = []
    stop = asyncio.Event()

    async def writes() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            made = await api.gql('mutation { createDevice(input: {name: "during"}) { id } }', token=t.token,
                                 tenant=t.id)
            latencies.append(time.perf_counter() - started)
            acknowledged.append(made.data["createDevice"]["id"])

    loop = asyncio.create_task(writes())
    try:
        await asyncio.sleep(0.3)
        source = await _node_of(platform, t.id)
        target = await _move_elsewhere(platform, t.id)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await loop
    assert await _node_of(platform, t.id) == target != source
    assert len(acknowledged) >= 5
    async with platform.db.owner.connect() as conn:  # every acknowledged write survived the move
        during = (await conn.execute(text(f"SELECT count(*) FROM {tenant_schema(t.id)}.devices "
                                          "WHERE name = 'during'"))).scalar()
    assert during == len(acknowledged)
    listed = await api.gql("{ devices { totalCount } }", token=t.token, tenant=t.id)
    assert listed.data["devices"]["totalCount"] == len(acknowledged) + 1
    async with platform.db.owner.connect() as conn:
        audited = (await conn.execute(text("SELECT count(*) FROM tenantry.audit_log WHERE tenant_id = :t "
                                           "AND action = 'tenant.moved'"), {"t": t.id})).scalar()
    assert audited == 1
    print(f"move under writes: {len(acknowledged)} writes, longest request {max(latencies) * 1000:.0f} ms")


async def test_copy_and_migration_across_nodes(api: Api, world: World, platform: Platform) -> None:
    await _require_citus(platform)
    source = await world.tenant()
    created = await api.create_subtenant(world.operator_token, "management", domain=f"x{source.domain}",
                                         company="T", adminEmail=source.admin_email)
    target = TenantHandle(created.data["createSubtenant"]["id"], "", source.admin_email, source.token)
    await _move_elsewhere(platform, target.id, away_from=await _node_of(platform, source.id))
    assert await _node_of(platform, target.id) != await _node_of(platform, source.id)

    copied = await _seed(api, source, "copied", n=20)
    spec = {"sourceTenantId": source.id, "targetTenantId": target.id, "deviceIds": [copied],
            "include": ["INVENTORY", "MEASUREMENTS", "EVENTS", "ALARMS"]}
    job = (await api.gql(COPY, {"i": spec}, token=source.token, tenant=source.id)).data["copyData"]
    assert job["status"] == "SUCCEEDED"
    assert job["counts"]["measurements"] == 20
    moving = await _seed(api, source, "moving", n=10)
    moved = await api.gql("""mutation($s: ID!, $t: ID!, $d: ID!) { migrateDevices(deviceIds: [$d],
        targetTenantId: $t, sourceTenantId: $s) { moved { name } } }""",
                          {"s": source.id, "t": target.id, "d": moving}, token=source.token, tenant=source.id)
    assert [m["name"] for m in moved.data["migrateDevices"]["moved"]] == ["moving"]
    state = await _target_state(api, target)
    assert state["devices"] == ["copied", "moving"]
    assert state["measurements"] == 30
    left = await _target_state(api, source)
    assert left["devices"] == ["copied"]


async def test_a_tenant_role_on_a_worker_reaches_no_other_tenant(world: World, platform: Platform) -> None:
    """Tenant roles LOGIN on Citus: logged in directly on the worker that holds another tenant's
    shards, a tenant's role still cannot read them."""
    await _require_citus(platform)
    a, b = await world.tenant(), await world.tenant()
    node = await _node_of(platform, b.id)
    async with platform.db.owner.connect() as conn:
        shard = (await conn.execute(text(
            "SELECT shard_name(logicalrelid, shardid) FROM pg_dist_shard "
            "WHERE logicalrelid = CAST(:t AS regclass)"), {"t": f"{tenant_schema(b.id)}.devices"})).scalar_one()
    host, port = node.rsplit(":", 1)
    url = make_url(str(platform.settings.database_url))
    for name in (shard, f"{tenant_schema(b.id)}.devices"):
        with psycopg.connect(host=host, port=int(port), dbname=url.database, user=tenant_schema(a.id),
                             autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SELECT count(*) FROM {name}")
        with psycopg.connect(host=host, port=int(port), dbname=url.database, user=tenant_schema(b.id),
                             autocommit=True) as conn:
            assert conn.execute(f"SELECT count(*) FROM {name}").fetchone() is not None
