"""Regression tests for the holes the access gate closed (each reproduced on the old main), and
the gate's own guarantees: one module switches roles, bounded waits, single-flight lookups."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import text

from app.access.acting import management_transaction
from app.main import create_app
from app.runtime.platform import Platform
from tests.conftest import PASSWORD, Api, World, unique
from tests.test_people import _latest_token

APP = Path(__file__).resolve().parent.parent / "app"
SIGN_UP = """mutation($e: String!, $p: String!, $c: String!, $i: String) {
  signUp(email: $e, password: $p, company: $c, invitationToken: $i) { status } }"""


def test_only_the_access_module_writes_role_switch_sql() -> None:
    pattern = re.compile(r"set_config\('role'|SET\s+(LOCAL\s+)?ROLE", re.IGNORECASE)
    writers = sorted(str(p.relative_to(APP)) for p in APP.rglob("*.py") if pattern.search(p.read_text()))
    assert writers == ["access/acting.py"]


async def test_api_tokens_are_never_more_than_their_creator_now(api: Api, world: World) -> None:
    """Regression (hole 5): a token kept the rights its creator had when it was made."""
    t = await world.tenant()
    creator_id, creator = await world.member(t, "ADMIN")
    made = await api.gql('mutation { createApiToken(name: "ci", permissions: ["tenant:admin", "devices:read", '
                         '"devices:write"]) { token } }', token=creator, tenant=t.id)
    token = made.data["createApiToken"]["token"]
    assert (await api.gql("{ members { edges { node { role } } } }", token=token)).data
    await api.gql('mutation($u: ID!) { setMemberRole(userId: $u, role: "READER") { role } }', {"u": creator_id},
                  token=t.token, tenant=t.id)
    assert (await api.gql("{ members { edges { node { role } } } }", token=token)).code == "FORBIDDEN"
    assert (await api.gql('mutation { createDevice(input: {name: "x"}) { id } }', token=token)).code == "FORBIDDEN"
    promote = await api.gql('mutation($u: ID!) { setMemberRole(userId: $u, role: "ADMIN") { role } }',
                            {"u": creator_id}, token=token)
    assert promote.code == "FORBIDDEN"
    assert (await api.gql("{ devices { totalCount } }", token=token)).data["devices"]["totalCount"] == 0
    await api.gql("mutation($u: ID!) { removeMember(userId: $u) }", {"u": creator_id}, token=t.token, tenant=t.id)
    assert (await api.gql("{ devices { totalCount } }", token=token)).code == "UNAUTHENTICATED"


async def test_parent_level_admins_cannot_mint_tokens_in_a_child(api: Api, world: World) -> None:
    """Regression (hole 5): a SUBTREE admin minted a full-permission token inside a child,
    dormant until that user joined the child — even where the child grants FULL access."""
    ent = await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(ent)
    await api.gql("mutation { setParentAccess(policy: FULL) { parentAccess } }", token=child.token, tenant=child.id)
    support_id, support = await world.member(ent, "ADMIN")
    await api.gql("mutation($u: ID!) { setMemberScope(userId: $u, scope: SUBTREE) { scope } }", {"u": support_id},
                  token=ent.token, tenant=ent.id)
    minted = await api.gql('mutation { createApiToken(name: "x", permissions: ["devices:read"]) { token } }',
                           token=support, tenant=child.id)
    assert minted.code == "FORBIDDEN"


async def test_metrics_are_for_operators_only(http: httpx.AsyncClient, api: Api, world: World,
                                              operator_token: str) -> None:
    """Regression (hole 6): anonymous /metrics listed every tenant id."""
    t = await world.tenant()
    await api.gql("{ tenant { id } }", token=t.token, tenant=t.id)  # t now has a series
    anonymous = await http.get("/metrics")
    assert anonymous.status_code == 401
    assert t.id not in anonymous.text
    tenant_admin = await http.get("/metrics", headers={"authorization": f"Bearer {t.token}"})
    assert tenant_admin.status_code == 403
    assert t.id not in tenant_admin.text
    served = await http.get("/metrics", headers={"authorization": f"Bearer {operator_token}"})
    assert served.status_code == 200
    assert t.id in served.text
    scraper = await api.gql('mutation { createApiToken(name: "prometheus", permissions: ["metrics:read"]) '
                            "{ token } }", token=operator_token, tenant="management")
    token = scraper.data["createApiToken"]["token"]
    assert (await http.get("/metrics", headers={"authorization": f"Bearer {token}"})).status_code == 200


async def test_parent_level_members_change_a_childs_people_only_with_full_access(api: Api, world: World) -> None:
    """Regression (hole 7): removeMember worked through parent-level access without FULL."""
    ent = await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(ent)
    victim_id, _ = await world.member(child, "READER")
    support_id, support = await world.member(ent, "ADMIN")
    await api.gql("mutation($u: ID!) { setMemberScope(userId: $u, scope: SUBTREE) { scope } }", {"u": support_id},
                  token=ent.token, tenant=ent.id)
    remove = "mutation($u: ID!) { removeMember(userId: $u) }"
    assert (await api.gql(remove, {"u": victim_id}, token=support, tenant=child.id)).code == "FORBIDDEN"
    listed = await api.gql("{ members { edges { node { user { id } } } } }", token=child.token, tenant=child.id)
    assert victim_id in {e["node"]["user"]["id"] for e in listed.data["members"]["edges"]}
    await api.gql("mutation { setParentAccess(policy: FULL) { parentAccess } }", token=child.token, tenant=child.id)
    assert (await api.gql(remove, {"u": victim_id}, token=support, tenant=child.id)).data["removeMember"] is True


async def test_suspended_tenants_take_no_new_members(api: Api, world: World, platform: Platform) -> None:
    """Regression (hole 8): invitations (and sign-up with one) were accepted into a SUSPENDED tenant."""
    ent = await world.tenant(kind="ENTERPRISE")
    t = await world.tenant(ent)
    invite = 'mutation($e: String!) { inviteMember(email: $e, role: "READER") { id } }'
    existing = f"{unique('existing')}@x.test"
    newcomer = f"{unique('newcomer')}@x.test"
    for email in (existing, newcomer):
        await api.gql(invite, {"e": email}, token=t.token, tenant=t.id)
    existing_token = await _latest_token(platform, existing)
    newcomer_token = await _latest_token(platform, newcomer)
    other = await world.tenant()
    async with platform.db.owner.begin() as conn:
        hashed = await platform.passwords.hash(PASSWORD)
        user_id = (await conn.execute(text("INSERT INTO tenantry.users (email, password_hash) VALUES (:e, :h) "
                                           "RETURNING id"), {"e": existing, "h": hashed})).scalar_one()
        await conn.execute(text("INSERT INTO tenantry.memberships (user_id, tenant_id, role) VALUES (:u, :t, 'ADMIN')"),
                           {"u": user_id, "t": other.id})
    session = await api.token(existing, PASSWORD, other.id)
    await api.gql("mutation($id: ID!) { suspendTenant(id: $id) { status } }", {"id": t.id}, token=ent.token,
                  tenant=ent.id)

    accepted = await api.gql("mutation($t: String!) { acceptInvitation(token: $t) { role } }",
                             {"t": existing_token}, token=session)
    assert accepted.code == "TENANT_SUSPENDED"
    signed_up = await api.gql(SIGN_UP, {"e": newcomer, "p": "a-good-password", "c": "X", "i": newcomer_token})
    assert signed_up.code == "TENANT_SUSPENDED"
    async with platform.db.owner.connect() as conn:
        members = (await conn.execute(text("SELECT count(*) FROM tenantry.memberships WHERE tenant_id = :t"),
                                      {"t": t.id})).scalar_one()
        created = (await conn.execute(text("SELECT count(*) FROM tenantry.users WHERE email = :e"),
                                      {"e": newcomer})).scalar_one()
    assert (members, created) == (1, 0)  # the first admin only; the refused sign-up left no account


async def test_concurrent_registry_misses_for_one_key_make_one_lookup(platform: Platform, world: World) -> None:
    t = await world.tenant()
    registry = platform.registry
    registry.clear()
    before = registry.lookups
    transactions = [management_transaction(platform.db.app) for _ in range(20)]
    try:
        found = await asyncio.gather(*(registry.tenant(tx, t.id) for tx in transactions))
    finally:
        for tx in transactions:
            await tx.finish(commit=False)
    assert {r.id for r in found if r is not None} == {t.id}
    assert registry.lookups - before == 1


async def test_a_request_that_gets_no_connection_in_time_is_unavailable_with_retry_after(
        platform: Platform, world: World, api: Api) -> None:
    t = await world.tenant()
    tight = Platform.create(platform.settings.with_(pool_size=1, pool_wait_seconds=0.2))
    transport = httpx.ASGITransport(app=create_app(platform=tight))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://tenantry.test") as client:
            held = await tight.db.app.connect()  # the pool's only connection (no overflow at size 1)
            try:
                started = time.monotonic()
                busy = await Api(client).gql("{ devices { totalCount } }", token=t.token, tenant=t.id)
                assert time.monotonic() - started < 5  # refused promptly, not after the 30 s default
            finally:
                await held.close()
            assert busy.status == 503
            assert busy.code == "UNAVAILABLE"
            response = await client.post("/graphql", json={"query": "{ devices { totalCount } }"},
                                         headers={"authorization": f"Bearer {t.token}", "x-tenant-id": t.id})
            assert response.status_code == 200  # and served again once a connection is free
    finally:
        await tight.close()


async def test_64_keep_alive_clients_over_several_tenants_never_stall_the_default_pool(
        platform: Platform, world: World, api: Api) -> None:
    """Regression (hole 4): at 32 connections every pooled connection sat idle in transaction on
    the registry lookup while its request waited for a second one; throughput fell to zero each
    time the 1 s registry cache expired. Served by uvicorn on loopback, default pool settings."""
    assert platform.settings.pool_size == 10  # the default
    tenants = [await world.tenant() for _ in range(4)]
    devices = []
    for t in tenants:
        created = await api.gql('mutation { createDevice(input: {name: "d"}) { id } }', token=t.token, tenant=t.id)
        devices.append(created.data["createDevice"]["id"])
    server = uvicorn.Server(uvicorn.Config(create_app(platform=platform), host="127.0.0.1", port=0,
                                           log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    # Measured for three times the registry cache's lifetime, after a warm-up in which the
    # pool opens its connections (start-up, not a stall).
    warmup, duration, bucket = 0.5, 3.5, 0.25
    done: list[float] = []
    codes: Counter[str] = Counter()

    # Made before the clock starts: each client builds an SSL context (~25 ms of this loop).
    clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) for _ in range(64)]

    async def client(n: int, http: httpx.AsyncClient) -> None:
        t, device = tenants[n % len(tenants)], devices[n % len(tenants)]
        headers = {"authorization": f"Bearer {t.token}", "x-tenant-id": t.id}
        body = {"query": "query($d: ID!) { device(id: $d) { id name } }", "variables": {"d": device}}
        while time.monotonic() - started < duration:  # one keep-alive connection per client
            response = await http.post("/graphql", json=body, headers=headers)
            payload = response.json()
            codes[payload["errors"][0]["extensions"]["code"] if "errors" in payload else "ok"] += 1
            done.append(time.monotonic() - started)

    started = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.gather(*(client(n, c) for n, c in enumerate(clients))), timeout=60)
    finally:
        for c in clients:
            await c.aclose()
        server.should_exit = True
        await serving
    assert codes["INTERNAL"] == 0, codes
    assert codes["ok"] > 0, codes
    per_bucket = Counter(int(t // bucket) for t in done if t < duration)
    empty = [b for b in range(int(warmup / bucket), int(duration / bucket)) if per_bucket[b] == 0]
    assert empty == [], (empty, codes)


@pytest.mark.parametrize("header", ["Bearer", "Basic abc", "Bearer tapi_nope", "Bearer tdev_t000000001_x"])
async def test_malformed_credentials_are_unauthenticated(api: Api, header: str) -> None:
    response = await api.http.post("/graphql", json={"query": "{ tenant { id } }"},
                                    headers={"authorization": header, "x-tenant-id": "t000000001"})
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_platform_copies_get_their_own_gate(platform: Platform) -> None:
    copy = dataclasses.replace(platform, settings=platform.settings.with_(pool_wait_seconds=0.5))
    assert copy.gate is not platform.gate
    assert copy.gate.in_flight.limit == platform.gate.in_flight.limit
