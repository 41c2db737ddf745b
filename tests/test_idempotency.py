"""Idempotency-Key: a retried mutation gets the first answer without running again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text

from app.main import create_app
from app.runtime import idempotency
from app.runtime.platform import Platform
from tests.conftest import PASSWORD, Api, TenantHandle, World, unique

BATCH = """mutation($d: ID!, $v: Float!) { createMeasurements(input: [
  {deviceId: $d, time: "2026-01-01T00:00:00Z", type: "c", series: "t", value: $v},
  {deviceId: $d, time: "2026-01-01T00:00:01Z", type: "c", series: "t", value: $v}]) }"""


async def _post(http: httpx.AsyncClient, t: TenantHandle, query: str, variables: dict[str, Any], key: str | None,
                token: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token or t.token}", "x-tenant-id": t.id,
               "accept": "application/graphql-response+json"}
    if key is not None:
        headers["idempotency-key"] = key
    return await http.post("/graphql", json={"query": query, "variables": variables}, headers=headers)

CREATE = 'mutation { createDevice(input: {name: "once"}) { id } }'


@asynccontextmanager
async def _asgi(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(platform=platform))
    async with httpx.AsyncClient(transport=transport, base_url="http://tenantry.test", timeout=60) as client:
        yield client


async def _count(api: Api, t: TenantHandle, device: str) -> int:
    result = await api.gql("query($d: ID!) { measurements(deviceId: $d) { edges { node { id } } } }", {"d": device},
                           token=t.token, tenant=t.id)
    return len(result.data["measurements"]["edges"])


async def _device(api: Api, t: TenantHandle) -> str:
    created = await api.gql('mutation { createDevice(input: {name: "d"}) { id } }', token=t.token, tenant=t.id)
    return str(created.data["createDevice"]["id"])


async def test_a_retried_batch_is_stored_once_and_answered_alike(http: httpx.AsyncClient, api: Api,
                                                                 world: World) -> None:
    t = await world.tenant()
    device = await _device(api, t)
    first = await _post(http, t, BATCH, {"d": device, "v": 1.0}, "batch-0001")
    retry = await _post(http, t, BATCH, {"d": device, "v": 1.0}, "batch-0001")
    assert first.json() == retry.json() == {"data": {"createMeasurements": 2}}
    assert retry.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await _count(api, t, device) == 2
    other_body = await _post(http, t, BATCH, {"d": device, "v": 2.0}, "batch-0001")
    assert other_body.status_code == 409
    assert other_body.json()["errors"][0]["extensions"]["code"] == "CONFLICT"
    fresh = await _post(http, t, BATCH, {"d": device, "v": 2.0}, "batch-0002")
    assert fresh.json() == {"data": {"createMeasurements": 2}}
    assert await _count(api, t, device) == 4
    without = await _post(http, t, BATCH, {"d": device, "v": 1.0}, None)  # no key: runs every time
    assert without.json() == {"data": {"createMeasurements": 2}}
    assert await _count(api, t, device) == 6


async def test_concurrent_retries_run_the_mutation_once(http: httpx.AsyncClient, api: Api, world: World) -> None:
    t = await world.tenant()
    device = await _device(api, t)
    answers = await asyncio.gather(*(_post(http, t, BATCH, {"d": device, "v": 3.0}, "same-key") for _ in range(5)))
    assert {a.status_code for a in answers} == {200}
    assert all(a.json() == {"data": {"createMeasurements": 2}} for a in answers)
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 4
    assert await _count(api, t, device) == 2


async def test_keys_are_per_tenant_and_caller_and_failures_are_not_kept(
        http: httpx.AsyncClient, api: Api, world: World) -> None:
    t = await world.tenant()
    _, colleague = await world.member(t, "ADMIN")
    create = 'mutation($n: String!) { createDevice(input: {name: $n}) { name } }'
    mine = await _post(http, t, create, {"n": "x"}, "k1")
    theirs = await _post(http, t, create, {"n": "x"}, "k1", token=colleague)
    assert "idempotent-replayed" not in theirs.headers  # another caller: its own key space
    assert mine.json() == theirs.json() == {"data": {"createDevice": {"name": "x"}}}
    devices = await api.gql("{ devices { totalCount } }", token=t.token, tenant=t.id)
    assert devices.data["devices"]["totalCount"] == 2
    failed = await _post(http, t, create, {"n": " "}, "k2")  # refused: nothing written, nothing kept
    assert failed.json()["errors"][0]["extensions"]["code"] == "INVALID_INPUT"
    again = await _post(http, t, create, {"n": " "}, "k2")
    assert "idempotent-replayed" not in again.headers
    for bad in ("", "has space", "x" * 256, "tab\there"):
        refused = await _post(http, t, create, {"n": "y"}, bad)
        assert refused.status_code == 400, bad


async def test_create_subtenant_and_raise_alarm_honour_the_key(http: httpx.AsyncClient, api: Api,
                                                              world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    create = ("mutation($d: String!, $p: String!) { createSubtenant(input: {domain: $d, company: \"C\", "
              'adminEmail: "a@b.test", adminPassword: $p}) { id } }')
    domain = unique("idem")
    first = await _post(http, ent, create, {"d": domain, "p": PASSWORD}, "provision-1")
    retry = await _post(http, ent, create, {"d": domain, "p": PASSWORD}, "provision-1")
    assert first.json() == retry.json()
    assert retry.headers["idempotent-replayed"] == "true"
    device = await _device(api, ent)
    raise_ = 'mutation($d: ID!) { raiseAlarm(input: {deviceId: $d, type: "t", severity: MAJOR, text: "x"}) { count } }'
    for _ in range(3):
        answer = await _post(http, ent, raise_, {"d": device}, "alarm-1")
        assert answer.json() == {"data": {"raiseAlarm": {"count": 1}}}  # counted once, not three times


async def test_keys_expire_after_24_hours(http: httpx.AsyncClient, api: Api, world: World,
                                          platform: Platform) -> None:
    t = await world.tenant()
    device = await _device(api, t)
    await _post(http, t, BATCH, {"d": device, "v": 1.0}, "old-key")
    async with platform.db.owner.begin() as conn:
        await conn.execute(text("UPDATE tenantry.idempotency_keys SET created_at = now() - interval '25 hours' "
                                "WHERE tenant_id = :t"), {"t": t.id})
    rerun = await _post(http, t, BATCH, {"d": device, "v": 1.0}, "old-key")
    assert "idempotent-replayed" not in rerun.headers  # expired: runs again
    assert await _count(api, t, device) == 4
    await _post(http, t, BATCH, {"d": device, "v": 2.0}, "other-key")
    await _post(http, t, BATCH, {"d": device, "v": 3.0}, "third-key")
    async with platform.db.owner.begin() as conn:
        await conn.execute(text("UPDATE tenantry.idempotency_keys SET created_at = now() - interval '25 hours' "
                                "WHERE tenant_id = :t"), {"t": t.id})
    assert await idempotency.purge(platform.db.app, now=datetime.now(UTC), batch=2) >= 3  # in bounded batches
    async with platform.db.owner.connect() as conn:
        left = (await conn.execute(text("SELECT count(*) FROM tenantry.idempotency_keys WHERE tenant_id = :t"),
                                   {"t": t.id})).scalar_one()
    assert left == 0
    assert timedelta(hours=24) == idempotency.KEEP


async def _owner(platform: Platform) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(str(platform.settings.database_url).replace("+psycopg", "", 1))


@pytest.mark.parametrize("mode", ["ACCESS EXCLUSIVE", "SHARE"], ids=["claim", "remember"])
async def test_a_stuck_idempotency_store_is_unavailable_never_internal(platform: Platform, world: World,
                                                                       mode: str) -> None:
    """The key's claim (a SELECT) or its answer's INSERT stuck behind a lock: UNAVAILABLE naming
    the lock timeout, 503 — what clients retry on — and the mutation did not happen."""
    t = await world.tenant()
    stuck = Platform.create(platform.settings.with_(lock_timeout_seconds=0.3))
    owner = await _owner(platform)
    try:
        await owner.execute(f"LOCK TABLE tenantry.idempotency_keys IN {mode} MODE")
        async with _asgi(stuck) as http:
            response = await _post(http, t, CREATE, {}, unique("key"))
        await owner.rollback()
        assert response.status_code == 503, response.text
        assert response.json()["errors"][0]["extensions"]["timeout"] == "lock_timeout"
        async with _asgi(stuck) as http:
            devices = await http.post("/graphql", json={"query": "{ devices { totalCount } }"},
                                      headers={"authorization": f"Bearer {t.token}", "x-tenant-id": t.id})
        assert devices.json()["data"]["devices"]["totalCount"] == 0
    finally:
        await owner.close()
        await stuck.close()


async def test_a_connection_lost_on_the_idempotency_path_is_unavailable(platform: Platform, world: World) -> None:
    """The request's connection terminated while its key's claim waits (PostgreSQL restarted, a
    failover): 503 UNAVAILABLE, as on every other path (it was a 500)."""
    t = await world.tenant()
    owner = await _owner(platform)
    try:
        await owner.execute("LOCK TABLE tenantry.idempotency_keys IN ACCESS EXCLUSIVE MODE")
        watcher = await _owner(platform)
        await watcher.set_autocommit(True)
        async with _asgi(platform) as http:
            request = asyncio.create_task(_post(http, t, CREATE, {}, unique("key")))
            for _ in range(200):
                waiting = await (await watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%idempotency_keys%' AND pid <> pg_backend_pid()")).fetchall()
                if waiting:
                    break
                await asyncio.sleep(0.02)
            assert waiting, "the claim never waited on the lock"
            await watcher.execute("SELECT pg_terminate_backend(%s::int)", (waiting[0][0],))
            response = await request
        await watcher.close()
        assert response.status_code == 503, response.text
        assert response.json()["errors"][0]["extensions"]["code"] == "UNAVAILABLE"
    finally:
        await owner.rollback()
        await owner.close()
