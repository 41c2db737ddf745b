"""What a single-page frontend meets first: the tenant in the URL (one client and cache per tenant),
CORS for a local dev server, `/` and /console, and the legacy-subprotocol close code. Real ASGI app,
real uvicorn for WebSockets; the console itself in a browser is tests/test_console.py."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
import websockets
from sqlalchemy import text
from starlette.applications import Starlette

from app.main import create_app
from app.runtime.platform import Platform
from app.settings import Settings
from tests.conftest import Api, World
from tests.test_stops import _free_port, _serve, _until_listening

TENANT = "{ tenant { id } devices(first: 5) { edges { node { name } } } }"


async def test_one_client_per_tenant_url_never_mixes_tenants(api: Api, world: World, http: httpx.AsyncClient) -> None:
    a, b = await world.tenant(), await world.tenant()
    for tenant, name in ((a, "in-a"), (b, "in-b")):
        await api.gql("mutation($n: String!) { createDevice(input: {name: $n}) { id } }", {"n": name},
                      token=tenant.token, tenant=tenant.id)

    async def at(path: str, token: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return await http.post(path, json={"query": TENANT},
                               headers={"Authorization": f"Bearer {token}", **(headers or {})})

    for tenant, name in ((a, "in-a"), (b, "in-b")):
        answer = await at(f"/t/{tenant.id}/graphql", tenant.token)
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"] == {"tenant": {"id": tenant.id}, "devices": {"edges": [{"node": {"name": name}}]}}
        # GET works too (what an HTTP cache keys by URL).
        got = await http.get(f"/t/{tenant.id}/graphql", params={"query": "{ tenant { id } }"},
                             headers={"Authorization": f"Bearer {tenant.token}"})
        assert got.json()["data"] == {"tenant": {"id": tenant.id}}
    # The URL names the tenant for the gate: another tenant's admin is refused there as with the header.
    crossing = await at(f"/t/{b.id}/graphql", a.token)
    assert crossing.json()["errors"][0]["extensions"]["code"] in ("FORBIDDEN", "NOT_FOUND"), crossing.text
    assert "data" not in crossing.json() or crossing.json()["data"] is None
    # A header naming another tenant than the URL is refused, never silently one or the other.
    mixed = await at(f"/t/{a.id}/graphql", a.token, {"X-Tenant-ID": b.id})
    assert mixed.status_code == 400
    assert mixed.json()["errors"][0]["extensions"]["code"] == "INVALID_INPUT"
    same = await at(f"/t/{a.id}/graphql", a.token, {"X-Tenant-ID": a.id})
    assert same.json()["data"]["tenant"] == {"id": a.id}
    assert (await http.post("/t//graphql", json={"query": TENANT})).status_code == 404
    assert (await http.post(f"/t/{a.id}/x/graphql", json={"query": TENANT})).status_code == 404
    assert (await http.post(f"/t/{a.id}/other", json={"query": TENANT})).status_code == 404


async def _closed_with(ws: websockets.ClientConnection) -> int:
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            await ws.recv()
    assert ws.close_code is not None
    return int(ws.close_code)


async def test_websockets_take_the_tenant_from_the_url_and_legacy_clients_get_4406(server: str, world: World) -> None:
    a, b = await world.tenant(), await world.tenant()
    url = f"ws://{server}/t/{a.id}/graphql"
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {a.token}"}}
        await ws.send(orjson.dumps(init).decode())
        assert orjson.loads(await ws.recv())["type"] == "connection_ack"
        query = {"id": "q", "type": "subscribe", "payload": {"query": "{ tenant { id } }"}}
        await ws.send(orjson.dumps(query).decode())
        assert orjson.loads(await ws.recv())["payload"] == {"data": {"tenant": {"id": a.id}}}
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(orjson.dumps({"type": "connection_init", "payload": {
            "Authorization": f"Bearer {a.token}", "X-Tenant-ID": b.id}}).decode())
        assert await _closed_with(ws) == 4403
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(b'{"type": "connection_init"}')  # a binary frame: the protocol's messages are text
        assert await _closed_with(ws) == 4400
    # subscriptions-transport-ws (the "graphql-ws" subprotocol): the handshake completes so the close code arrives.
    async with websockets.connect(f"ws://{server}/graphql", subprotocols=["graphql-ws"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "graphql-ws"
        assert await _closed_with(ws) == 4406
        assert ws.close_reason is not None
        assert "graphql-transport-ws" in ws.close_reason
    async with websockets.connect(f"ws://{server}/graphql") as ws:  # no subprotocol at all
        assert await _closed_with(ws) == 4406


def _client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tenantry.test")


async def _preflight(client: httpx.AsyncClient, origin: str) -> httpx.Response:
    return await client.options("/graphql", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-tenant-id"})


async def test_cors_lets_a_local_dev_server_in_during_development_and_nobody_in_production(
        platform: Platform) -> None:
    development = create_app(platform.settings.with_(cors_origins=(), env="development"), platform=platform)
    async with _client(development) as client:
        for origin in ("http://localhost:5173", "http://127.0.0.1:3000", "http://[::1]:8080"):
            answer = await _preflight(client, origin)
            assert answer.status_code == 200, (origin, answer.text)
            assert answer.headers["access-control-allow-origin"] == origin
        for origin in ("https://evil.example", "http://localhost.evil.example", "http://localhost:5173.evil.example"):
            answer = await _preflight(client, origin)
            assert "access-control-allow-origin" not in answer.headers, origin
    production = create_app(platform.settings.with_(cors_origins=(), env="production"), platform=platform)
    async with _client(production) as client:
        answer = await _preflight(client, "http://localhost:5173")
        assert "access-control-allow-origin" not in answer.headers
    configured = create_app(platform.settings.with_(cors_origins=("https://console.example.com",),
                                                    env="production"), platform=platform)
    async with _client(configured) as client:
        assert (await _preflight(client, "https://console.example.com")).headers[
            "access-control-allow-origin"] == "https://console.example.com"
        assert "access-control-allow-origin" not in (await _preflight(client, "http://localhost:5173")).headers


async def test_the_root_sends_people_to_the_console_and_an_unbuilt_console_says_how_to_build_it(
        platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENANTRY_CONSOLE_DIR", str(tmp_path / "absent"))
    async with _client(create_app(platform=platform)) as client:
        home = await client.get("/")
        assert (home.status_code, home.headers["location"]) == (302, "/console/")
        assert (await client.get("/console")).headers["location"] == "/console/"
        missing = await client.get("/console/")
        assert missing.status_code == 503
        assert "make console" in missing.text
    built = tmp_path / "dist"
    (built / "assets").mkdir(parents=True)
    (built / "index.html").write_text("<!doctype html><title>console</title><div id=root></div>")
    (built / "assets" / "app.js").write_text("console.log('hello')")
    monkeypatch.setenv("TENANTRY_CONSOLE_DIR", str(built))
    async with _client(create_app(platform=platform)) as client:
        page = await client.get("/console/")
        assert (page.status_code, page.headers["content-type"].split(";")[0]) == (200, "text/html")
        assert "<div id=root>" in page.text
        assert (await client.get("/console/assets/app.js")).text == "console.log('hello')"
        assert (await client.get("/console/../secret_key")).status_code == 404


async def test_serve_names_its_urls_and_its_root_answers(settings: Settings, platform: Platform,
                                                         tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "serve.log"
    process = await _serve(settings, port, log)
    try:
        await _until_listening(port, process)
        base = f"http://127.0.0.1:{port}"
        printed = log.read_text()
        for url in (f"{base}/graphql", f"{base}/t/<tenant>/graphql", f"{base}/console/", f"{base}/graphiql/"):
            assert url in printed, printed
        async with httpx.AsyncClient(base_url=base) as client:
            root = await client.get("/", follow_redirects=True)  # the URL uvicorn prints is not a dead end
            assert root.status_code in (200, 503)
            assert str(root.url).endswith("/console/")
            assert (await client.get("/graphiql/")).text.count("graphql-ws.min.js") == 1
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


# urql's Accept for every query and mutation: it could read a stream, but prefers JSON.
URQL_ACCEPT = "application/graphql-response+json, application/graphql+json, application/json, text/event-stream, " \
              "multipart/mixed"


async def test_a_client_that_prefers_json_gets_json_and_one_that_prefers_a_stream_gets_sse(
        http: httpx.AsyncClient, world: World) -> None:
    tenant = await world.tenant()
    auth = {"Authorization": f"Bearer {tenant.token}"}
    for accept, expected in ((URQL_ACCEPT, "application/graphql-response+json"),
                             ("text/event-stream;q=0.5, application/json", "application/json"),
                             ("text/event-stream", "text/event-stream"),
                             ("text/event-stream, application/json", "text/event-stream")):
        answer = await http.post(f"/t/{tenant.id}/graphql", json={"query": "{ tenant { id } }"},
                                 headers={**auth, "Accept": accept})
        assert answer.headers["content-type"].split(";")[0] == expected, accept
        assert tenant.id in answer.text


@contextlib.asynccontextmanager
async def _usage_locked(settings: Settings) -> AsyncIterator[None]:
    """An operator's session holding the usage table (what `Tenant.limits` reads beside the limits)."""
    assert settings.database_url is not None
    conn = await psycopg.AsyncConnection.connect(settings.database_url.replace("+psycopg", "", 1))
    try:
        await conn.execute("LOCK TABLE tenantry.usage_daily IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        await conn.rollback()
        await conn.close()


async def test_a_query_over_sse_cut_short_gives_its_connection_back(world: World, settings: Settings,
                                                                   platform: Platform) -> None:
    """A stream ended while its query waits (the server stopping; a client gone, seen at the next
    keep-alive) while a batched field's statement waits too: the cancelled operation's transaction
    still ends, and its connection goes back (it stayed out, idle in transaction, before)."""
    tenant = await world.tenant()
    app = create_app(platform=platform)
    idle = text("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' "
                "AND usename = 'tenantry_app'")
    transport = httpx.ASGITransport(app=app)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            async with _usage_locked(settings):
                answer = asyncio.create_task(client.post(
                    "/graphql", json={"query": "{ tenant { id limits { deviceCount } } }"},
                    headers={"Authorization": f"Bearer {tenant.token}", "X-Tenant-ID": tenant.id,
                             "Accept": "text/event-stream"}))
                await asyncio.sleep(0.5)  # the limits' batch waits for the lock
                app.state.graphql.operations.stop_streams()
                ended = await asyncio.wait_for(answer, 10)
                assert ended.text.endswith("event: complete\ndata:\n\n"), ended.text
            await asyncio.sleep(0.5)  # the lock is gone: an abandoned transaction would now sit idle in it
        async with platform.db.owner.connect() as conn:
            assert (await conn.execute(idle)).scalar_one() == 0
        gc.collect()
    leaked = [w for w in caught if "non-checked-in connection" in str(w.message)]
    assert leaked == [], leaked
