"""Cheap refusal before authentication: anonymous traffic cannot take the event loop.

Documents over the size limit are refused before anything parses them, parse failures are
cached like parse results, callers without a credential are rate limited per client address,
and clients that trickle their headers or body are cut off (the last two with `tenantry serve`
as a real process and raw sockets)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from app.graphql.engine.fast_path import cache_info
from app.main import create_app
from app.runtime.platform import Platform
from app.settings import Settings
from tests.conftest import World, unique
from tests.test_stops import ROOT, TENANTRY, _env, _free_port, _until_listening

JSON = {"content-type": "application/json", "accept": "application/graphql-response+json"}


@asynccontextmanager
async def _client(platform: Platform, address: str = "203.0.113.7") -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(platform=platform), client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://tenantry.test") as client:
        yield client


async def test_an_oversized_document_is_refused_before_it_is_parsed(http: httpx.AsyncClient, world: World) -> None:
    t = await world.tenant()
    document = "{ __typename " + "# padding\n" * 20_000 + "}"  # 200 KB, a handful of tokens
    before = cache_info()["parse"]
    response = await http.post("/graphql", json={"query": document},
                               headers={**JSON, "authorization": f"Bearer {t.token}", "x-tenant-id": t.id})
    assert response.status_code == 413
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    assert "100000 characters" in error["message"]
    after = cache_info()["parse"]
    assert (after.hits, after.misses) == (before.hits, before.misses)  # never reached the parser


async def test_a_document_that_does_not_parse_is_parsed_once(http: httpx.AsyncClient) -> None:
    broken = "{ devices { " + unique("x").replace("-", "_") + " "  # unterminated
    answers = [await http.post("/graphql", json={"query": broken}, headers=JSON) for _ in range(3)]
    assert {a.status_code for a in answers} == {400}
    assert {a.json()["errors"][0]["extensions"]["code"] for a in answers} == {"INVALID_INPUT"}
    assert len({a.json()["errors"][0]["message"] for a in answers}) == 1  # the same answer each time
    before = cache_info()["parse"]
    await http.post("/graphql", json={"query": broken}, headers=JSON)
    after = cache_info()["parse"]
    assert after.misses == before.misses
    assert after.hits > before.hits


async def test_anonymous_requests_are_limited_per_client_address(settings: Settings, world: World) -> None:
    t = await world.tenant()
    platform = Platform.create(settings.with_(anonymous_requests_per_second=2.0))
    try:
        async with _client(platform) as client:
            answers = [await client.post("/graphql", json={"query": "{ __typename }"}, headers=JSON)
                       for _ in range(8)]
            codes = [a.status_code for a in answers]
            assert codes[:4] == [200] * 4
            assert 429 in codes[4:]
            refused = next(a for a in answers if a.status_code == 429)
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["errors"][0]["extensions"]["limit"] == "anonymousRequestsPerSecond"
            # A garbage token is no credential; a real one is the tenant's business, not the address's.
            garbage = await client.post("/graphql", json={"query": "{ __typename }"},
                                        headers={**JSON, "authorization": "Bearer not-a-token"})
            assert garbage.status_code == 429
            mine = await client.post("/graphql", json={"query": "{ tenant { id } }"},
                                     headers={**JSON, "authorization": f"Bearer {t.token}", "x-tenant-id": t.id})
            assert mine.status_code == 200
            assert mine.json()["data"]["tenant"]["id"] == t.id
        async with _client(platform, "198.51.100.9") as other:  # another address has its own allowance
            assert (await other.post("/graphql", json={"query": "{ __typename }"}, headers=JSON)).status_code == 200
    finally:
        await platform.close()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(20)
    return sock


def _closed_after(sock: socket.socket) -> tuple[float, bytes]:
    """Seconds until the server closed the connection, and what it sent before."""
    started, received = time.monotonic(), b""
    while chunk := sock.recv(4096):
        received += chunk
    return time.monotonic() - started, received


async def test_slow_clients_are_cut_off(settings: Settings, platform: Platform, tmp_path: Path) -> None:
    port = _free_port()
    with (tmp_path / "serve.log").open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *TENANTRY, "serve", cwd=ROOT, stdout=out, stderr=out,
            env=_env(settings, TENANTRY_PORT=str(port), TENANTRY_HEADER_TIMEOUT="1", TENANTRY_BODY_TIMEOUT="1"))
    try:
        await _until_listening(port, process)
        silent = _connect(port)  # connects and says nothing
        trickling = _connect(port)
        trickling.sendall(b"POST /graphql HTTP/1.1\r\nHost: x\r\n")  # headers never finish
        body = _connect(port)
        body.sendall(b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"query\":")  # the body never finishes
        waited = await asyncio.gather(*(asyncio.to_thread(_closed_after, s) for s in (silent, trickling, body)))
        for sock in (silent, trickling, body):
            sock.close()
        # A client that keeps to time is served as ever.
        async with httpx.AsyncClient() as client:
            ok = await client.post(f"http://127.0.0.1:{port}/graphql", json={"query": "{ __typename }"})
    finally:
        process.terminate()
        await process.wait()
    assert all(seconds < 15 for seconds, _ in waited), waited  # closed by the deadlines, not by the test
    assert waited[0][1] == b""
    assert waited[1][1] == b""
    assert waited[2][1].startswith(b"HTTP/1.1 408"), waited[2][1][:200]
    assert ok.status_code == 200


async def test_without_a_credential_documents_and_bodies_stay_small(http: httpx.AsyncClient, world: World) -> None:
    """Signing in needs a few KB: an anonymous caller's document is capped at 10,000 characters
    (and its body at twice that, refused from Content-Length before it is read); with a credential
    the general limits apply."""
    t = await world.tenant()
    document = "{ __typename " + "# padding\n" * 1_500 + "}"  # 15 KB
    anonymous = await http.post("/graphql", json={"query": document}, headers=JSON)
    assert anonymous.status_code == 413
    assert anonymous.json()["errors"][0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    assert "without a credential" in anonymous.json()["errors"][0]["message"]
    big_body = await http.post("/graphql", json={"query": "{ __typename }", "variables": {"x": "y" * 30_000}},
                               headers=JSON)
    assert big_body.status_code == 413
    signed = await http.post("/graphql", json={"query": document},
                             headers={**JSON, "authorization": f"Bearer {t.token}", "x-tenant-id": t.id})
    assert signed.status_code == 200
    assert signed.json()["data"] == {"__typename": "Query"}
