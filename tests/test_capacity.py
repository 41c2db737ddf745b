"""Isolation of capacity: one tenant's stuck work never takes another tenant's.

A request's transaction runs under statement, lock and idle-in-transaction timeouts (answered as
UNAVAILABLE naming the timeout, never INTERNAL, never a hang), and one tenant holds at most its
share of a process's in-flight slots (and so of its pool). The last test runs `tenantry serve`
as a real process, with one tenant's table locked by another session and many clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text

from app.access.acting import RequestTransaction, management_transaction
from app.access.admission import InFlight
from app.db.naming import tenant_schema
from app.errors import Unavailable
from app.main import create_app
from app.runtime.platform import Platform
from app.settings import Settings
from tests.conftest import TenantHandle, World
from tests.test_stops import _free_port, _serve, _until_listening

COUNT = "{ devices { totalCount } }"
CREATE = 'mutation { createDevice(input: {name: "d"}) { id } }'
_SHOW = text("SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), "
             "current_setting('idle_in_transaction_session_timeout')")


@asynccontextmanager
async def _locked(settings: Settings, tenant_id: str, table: str = "devices") -> AsyncIterator[None]:
    """Another session (an operator's migration, say) holding ACCESS EXCLUSIVE on a tenant's table."""
    assert settings.database_url is not None
    conn = await psycopg.AsyncConnection.connect(settings.database_url.replace("+psycopg", "", 1))
    try:
        await conn.execute(f"LOCK TABLE {tenant_schema(tenant_id)}.{table} IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        await conn.rollback()
        await conn.close()


@asynccontextmanager
async def _client(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(platform=platform))
    async with httpx.AsyncClient(transport=transport, base_url="http://tenantry.test", timeout=60) as client:
        yield client


async def _post(client: httpx.AsyncClient, t: TenantHandle, query: str) -> httpx.Response:
    return await client.post("/graphql", json={"query": query},
                       headers={"authorization": f"Bearer {t.token}", "x-tenant-id": t.id})


@pytest.mark.parametrize(("named", "changes"), [
    ("lock_timeout", {"lock_timeout_seconds": 0.3}),
    ("statement_timeout", {"lock_timeout_seconds": 0.0, "statement_timeout_seconds": 0.3}),
])
@pytest.mark.parametrize("query", [COUNT, CREATE], ids=["compiled read", "mutation"])
async def test_a_request_stuck_behind_a_lock_is_unavailable_naming_the_timeout(
        settings: Settings, world: World, named: str, changes: dict[str, float], query: str) -> None:
    t = await world.tenant()
    platform = Platform.create(settings.with_(**changes))
    try:
        async with _client(platform) as client, _locked(settings, t.id):
            started = time.monotonic()
            response = await _post(client, t, query)
            waited = time.monotonic() - started
        body = response.json()
        assert response.status_code == 503, body
        assert response.headers["retry-after"] == "1"
        error = body["errors"][0]
        assert error["extensions"] == {"code": "UNAVAILABLE", "retryAfter": 1, "timeout": named}
        assert named in error["message"]
        assert waited < 30  # cancelled by the timeout, not by the lock's release
        async with _client(platform) as client:  # the connection went back to the pool usable
            assert (await _post(client, t, COUNT)).status_code == 200
    finally:
        await platform.close()


async def test_the_timeouts_bind_request_transactions_only(platform: Platform) -> None:
    """Transaction-local: the next user of a pooled connection (a job, a migration) runs unbound."""
    tx = RequestTransaction(platform.db.app, platform.gate.limits)
    shown = (await tx.plane(None).execute(_SHOW)).one()
    await tx.finish(commit=False)
    assert tuple(shown) == ("15s", "3s", "30s")
    job = management_transaction(platform.db.app)
    try:
        assert tuple((await job.execute(_SHOW)).one()) == ("0", "0", "0")
    finally:
        await job.finish(commit=False)


async def test_a_tenant_over_its_share_waits_for_its_own_slots_not_the_others() -> None:
    gate = InFlight(6, wait=0.2, share=2)
    release = asyncio.Event()

    async def hold(key: str) -> None:
        async with gate.slot(key):
            await release.wait()

    holders = [asyncio.create_task(hold("tenant:a")) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(Unavailable, match="for this tenant"):  # a's third request: a's share is taken
        async with gate.slot("tenant:a"):
            pass
    async with gate.slot("tenant:b"):  # b is not behind a
        pass
    release.set()
    await asyncio.gather(*holders)
    assert gate._shares == {}  # nothing kept for keys with no request


async def _hammer(client: httpx.AsyncClient, t: TenantHandle, until: float, out: list[tuple[int, float, dict[str, Any]]]
                  ) -> None:
    while time.monotonic() < until:
        started = time.monotonic()
        response = await _post(client, t, COUNT)
        out.append((response.status_code, time.monotonic() - started, response.json()))


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def test_one_tenants_locked_table_leaves_the_other_tenants_their_capacity(
        settings: Settings, platform: Platform, world: World, tmp_path: Path) -> None:
    """20 clients of a tenant whose table is locked, 4 clients of another: the other tenant's
    requests all succeed (before per-tenant shares and timeouts, 85 % of them were 503), and the
    stuck tenant is told why (its timeout, or its share) instead of hanging."""
    stuck, other = await world.tenant(), await world.tenant()
    port = _free_port()
    process = await _serve(settings, port, tmp_path / "serve.log")
    try:
        await _until_listening(port, process)
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits) as client:
            idle: list[tuple[int, float, dict[str, Any]]] = []
            await asyncio.gather(*(_hammer(client, other, time.monotonic() + 2, idle) for _ in range(4)))
            stuck_out: list[tuple[int, float, dict[str, Any]]] = []
            other_out: list[tuple[int, float, dict[str, Any]]] = []
            async with _locked(settings, stuck.id):
                until = time.monotonic() + 8
                await asyncio.gather(*(_hammer(client, stuck, until, stuck_out) for _ in range(20)),
                                     *(_hammer(client, other, until, other_out) for _ in range(4)))
    finally:
        process.terminate()
        await process.wait()
    assert all(status == 200 for status, _, _ in idle)
    refused = [body for status, _, body in other_out if status != 200]
    assert not refused, refused[:3]
    assert len(other_out) > 20
    reasons = {(body["errors"][0]["extensions"].get("timeout") or body["errors"][0]["message"])
               for status, _, body in stuck_out}
    assert {status for status, _, _ in stuck_out} == {503}
    assert reasons <= {"lock_timeout", "too many requests in flight for this tenant"}, reasons
    assert "lock_timeout" in reasons
    # Printed for the record (the ratio's goal, at most 2x idle, is measured by bench/capacity.py).
    print(f"other tenant p99: idle {_p99([d for _, d, _ in idle]) * 1000:.1f} ms, "
          f"beside the locked tenant {_p99([d for _, d, _ in other_out]) * 1000:.1f} ms")
