"""Database trouble is UNAVAILABLE (HTTP 503, Retry-After), never INTERNAL, and /readyz says so."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from sqlalchemy import insert, text

from app.access.acting import RequestTransaction
from app.errors import CommitOutcomeUnknown
from app.main import create_app
from app.models.tenant import devices
from app.runtime.platform import Platform
from app.settings import Settings
from tests.conftest import Api, World


@asynccontextmanager
async def _client(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(platform=platform))
    async with httpx.AsyncClient(transport=transport, base_url="http://tenantry.test") as client:
        yield client


async def test_an_unreachable_database_is_unavailable_not_internal(settings: Settings, world: World) -> None:
    t = await world.tenant()
    down = Platform.create(settings.with_(database_url="postgresql://postgres@127.0.0.1:1/postgres"))
    try:
        async with _client(down) as client:
            response = await client.post("/graphql", json={"query": "{ devices { totalCount } }"},
                                         headers={"authorization": f"Bearer {t.token}", "x-tenant-id": t.id})
            assert response.status_code == 503
            assert response.headers["retry-after"]
            assert response.json()["errors"][0]["extensions"]["code"] == "UNAVAILABLE"
            assert (await client.get("/readyz")).status_code == 503
            assert (await client.get("/healthz")).status_code == 200  # the process itself is up
    finally:
        await down.close()


async def test_no_connection_slots_left_is_unavailable_and_not_ready(platform: Platform, world: World) -> None:
    """With the app role refused new connections (as when PostgreSQL's slots are used up), a
    process whose pool holds no spare connection answers 503, and /readyz turns 503 while the
    shared pool still holds connections."""
    t = await world.tenant()
    fresh = Platform.create(platform.settings)
    role = platform.settings.app_role
    try:
        async with platform.db.owner.begin() as conn:
            await conn.execute(text(f"ALTER ROLE {role} CONNECTION LIMIT 0"))
        async with _client(fresh) as client:
            response = await client.post("/graphql", json={"query": "{ devices { totalCount } }"},
                                         headers={"authorization": f"Bearer {t.token}", "x-tenant-id": t.id})
            assert response.status_code == 503, response.text
            assert response.json()["errors"][0]["extensions"]["code"] == "UNAVAILABLE"
        async with _client(platform) as client:
            assert (await client.get("/readyz")).status_code == 503
    finally:
        async with platform.db.owner.begin() as conn:
            await conn.execute(text(f"ALTER ROLE {role} CONNECTION LIMIT -1"))
        await fresh.close()
    async with _client(platform) as client:
        assert (await client.get("/readyz")).status_code == 200


async def test_a_connection_lost_during_commit_reports_an_unknown_outcome(platform: Platform, api: Api,
                                                                         world: World) -> None:
    t = await world.tenant()
    tx = RequestTransaction(platform.db.app)
    tenant = tx.plane(t.id)
    await tenant.execute(insert(devices).values(name="maybe", owner="x"))
    pid = (await tenant.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    async with platform.db.owner.begin() as conn:
        await conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    with pytest.raises(CommitOutcomeUnknown) as raised:
        await tx.finish(commit=True)
    assert raised.value.code == "UNAVAILABLE"
    assert raised.value.extensions["commitOutcome"] == "UNKNOWN"
