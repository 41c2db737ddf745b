"""Limits: pooled allocation from the parent, race-free enforcement, rate limiting, warnings."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from app.runtime.platform import Platform
from app.services.usage.statistics import take_snapshots
from app.settings import Settings
from tests.conftest import PASSWORD, Api, TenantHandle, World, assert_denied, unique
from tests.test_people import INVITE, _latest_token
from tests.test_stops import _free_port, _serve, _until_listening

UPDATE = "mutation($id: ID!, $l: TenantLimitsInput!) { updateTenant(id: $id, input: {limits: $l}) { id } }"


async def _child(api: Api, parent: TenantHandle, limits: dict[str, Any] | None) -> Any:
    fields: dict[str, Any] = {"domain": unique("lim"), "company": "C", "adminEmail": parent.admin_email}
    if limits is not None:
        fields["limits"] = limits
    return await api.create_subtenant(parent.token, parent.id, **fields)


async def test_children_allocations_never_exceed_the_parents_pool(api: Api, world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    assert (await api.gql(UPDATE, {"id": ent.id, "l": {"maxDevices": 10}}, token=world.operator_token,
                          tenant="management")).data
    first = await _child(api, ent, {"maxDevices": 6})
    first_id = first.data["createSubtenant"]["id"]
    over = await _child(api, ent, {"maxDevices": 5})
    assert over.code == "LIMIT_EXCEEDED"
    assert over.errors[0]["extensions"]["limit"] == "maxDevices"
    assert over.errors[0]["extensions"]["available"] == 4
    unallocated = await _child(api, ent, None)
    assert unallocated.code == "LIMIT_EXCEEDED"
    assert (await api.gql(UPDATE, {"id": first_id, "l": {"maxDevices": 4}}, token=ent.token, tenant=ent.id)).data
    assert (await _child(api, ent, {"maxDevices": 5})).data
    # The pool cannot shrink below what the children hold (4 + 5).
    shrink = await api.gql(UPDATE, {"id": ent.id, "l": {"maxDevices": 8}}, token=world.operator_token,
                           tenant="management")
    assert shrink.code == "LIMIT_EXCEEDED"
    limits = await api.gql(f'{{ tenantById(id: "{ent.id}") {{ limits {{ maxDevices subtenantCount userCount }} }} }}',
                           token=world.operator_token, tenant="management")
    assert limits.data["tenantById"]["limits"] == {"maxDevices": 10, "subtenantCount": 2, "userCount": 1}


async def test_concurrent_allocations_cannot_both_take_the_last_of_the_pool(api: Api, world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    await api.gql(UPDATE, {"id": ent.id, "l": {"maxDevices": 10}}, token=world.operator_token, tenant="management")
    results = await asyncio.gather(*(_child(api, ent, {"maxDevices": 6}) for _ in range(4)))
    assert sorted("ok" if r.body["data"] else r.code for r in results) == ["LIMIT_EXCEEDED"] * 3 + ["ok"]


async def test_one_device_slot_left_admits_exactly_one_of_many(api: Api, world: World) -> None:
    t = await world.tenant()
    await api.gql(UPDATE, {"id": t.id, "l": {"maxDevices": 3}}, token=world.operator_token, tenant="management")
    for i in range(2):
        await api.gql(f'mutation {{ createDevice(input: {{name: "d{i}"}}) {{ id }} }}', token=t.token, tenant=t.id)
    results = await asyncio.gather(*(
        api.gql(f'mutation {{ createDevice(input: {{name: "race{i}"}}) {{ id }} }}', token=t.token, tenant=t.id)
        for i in range(8)))
    outcomes = sorted("ok" if r.body["data"] else r.code for r in results)
    assert outcomes == ["LIMIT_EXCEEDED"] * 7 + ["ok"]
    assert all(r.errors[0]["extensions"]["limit"] == "maxDevices" for r in results if r.errors)
    count = await api.gql("{ devices { totalCount } }", token=t.token, tenant=t.id)
    assert count.data["devices"]["totalCount"] == 3


async def test_subtenant_and_user_limits(api: Api, world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    await api.gql(UPDATE, {"id": ent.id, "l": {"maxSubtenants": 1}}, token=world.operator_token, tenant="management")
    assert (await _child(api, ent, None)).data
    second = await _child(api, ent, None)
    assert second.code == "LIMIT_EXCEEDED"
    assert second.errors[0]["extensions"]["limit"] == "maxSubtenants"
    no_users = await api.create_subtenant(world.operator_token, "management", domain=unique("nu"), company="C",
                                          adminEmail=ent.admin_email, limits={"maxUsers": 0})
    assert no_users.code == "LIMIT_EXCEEDED"


async def test_rate_limits_answer_429_with_retry_after_and_spare_other_tenants(
    http: httpx.AsyncClient, api: Api, world: World
) -> None:
    busy, quiet = await world.tenant(), await world.tenant()
    await api.gql(UPDATE, {"id": busy.id, "l": {"requestsPerSecond": 1, "requestBurst": 3}},
                  token=world.operator_token, tenant="management")
    responses = []
    for _ in range(6):
        responses.append(await http.post("/graphql", json={"query": "{ tenant { id } }"},
                                          headers={"authorization": f"Bearer {busy.token}", "x-tenant-id": busy.id}))
    statuses = [r.status_code for r in responses]
    assert statuses[:3] == [200, 200, 200]
    assert 429 in statuses[3:]
    limited = next(r for r in responses if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    error = limited.json()["errors"][0]
    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert error["extensions"]["limit"] == "requestsPerSecond"
    for _ in range(6):
        assert (await api.gql("{ tenant { id } }", token=quiet.token, tenant=quiet.id)).status == 200


async def test_admins_are_warned_once_per_crossing(api: Api, world: World, platform: Platform) -> None:
    t = await world.tenant()
    await api.gql(UPDATE, {"id": t.id, "l": {"maxDevices": 5}}, token=world.operator_token, tenant="management")

    async def warnings() -> tuple[int, int]:
        async with platform.db.owner.connect() as conn:
            mails = (await conn.execute(text("SELECT count(*) FROM tenantry.outbox WHERE tenant_id = :t"),
                                        {"t": t.id})).scalar_one()
            audits = (await conn.execute(text("SELECT count(*) FROM tenantry.audit_log WHERE tenant_id = :t AND "
                                              "action = 'limit.warning'"), {"t": t.id})).scalar_one()
        return int(mails), int(audits)

    ids = []
    for i in range(5):
        created = await api.gql(f'mutation {{ createDevice(input: {{name: "d{i}"}}) {{ id }} }}', token=t.token,
                                tenant=t.id)
        ids.append(created.data["createDevice"]["id"])
        expected = (0, 0) if i < 3 else (1, 1)  # the 4th device reaches 80 % of 5
        assert await warnings() == expected, i
    for device in ids[:3]:
        await api.gql("mutation($d: ID!) { deleteDevice(id: $d) }", {"d": device}, token=t.token, tenant=t.id)
    await take_snapshots(platform.db.app, today=datetime.now(UTC).date(), tenant_ids=[t.id])  # re-arms
    for i in range(2):
        await api.gql(f'mutation {{ createDevice(input: {{name: "again{i}"}}) {{ id }} }}', token=t.token,
                      tenant=t.id)
    assert await warnings() == (2, 2)


async def test_storage_limit_stops_data_writes(api: Api, world: World, platform: Platform) -> None:
    t = await world.tenant()
    device = (await api.gql('mutation { createDevice(input: {name: "d"}) { id } }', token=t.token,
                            tenant=t.id)).data["createDevice"]["id"]
    await take_snapshots(platform.db.app, today=datetime.now(UTC).date(), tenant_ids=[t.id])
    await api.gql(UPDATE, {"id": t.id, "l": {"storageBytes": 1000}}, token=world.operator_token, tenant="management")
    write = await api.gql('mutation($d: ID!) { createMeasurements(input: [{deviceId: $d, time: "2026-01-01T00:00:00Z",'
                          ' type: "c", series: "s", value: 1}]) }', {"d": device}, token=t.token, tenant=t.id)
    assert write.code == "LIMIT_EXCEEDED"
    assert write.errors[0]["extensions"]["limit"] == "storageBytes"


async def test_limits_hold_under_concurrent_calls_across_two_workers(
        api: Api, world: World, platform: Platform, settings: Settings, tmp_path: Path) -> None:
    """12 calls at once for each limit through `serve --workers 2`, each on its own connection (so
    both processes take part): exactly the limit is reached, the others LIMIT_EXCEEDED (and a
    tenant's requestsPerSecond is one bucket for both processes). maxUsers:
    12 invitees accepting (it ended at 15, 3, 21, 7 and 14 members before the tenant row was locked
    for the count); maxDevices: 12 createDevice; maxSubtenants: 12 createSubtenant."""
    t = await world.tenant(limits={"maxUsers": 3, "maxDevices": 3})  # its first admin is one of the 3 users
    ent = await world.tenant(kind="ENTERPRISE", limits={"maxSubtenants": 3})
    busy = await world.tenant()
    await api.gql(UPDATE, {"id": busy.id, "l": {"requestsPerSecond": 1, "requestBurst": 4}},
                  token=world.operator_token, tenant="management")
    invitees = []
    for _ in range(12):
        email = f"{unique('inv')}@limit.test"
        assert (await api.gql(INVITE, {"e": email, "r": "READER"}, token=t.token, tenant=t.id)).data
        async with platform.db.owner.connect() as conn:
            await conn.execute(text("INSERT INTO tenantry.users (email, password_hash) VALUES (:e, :h)"),
                               {"e": email, "h": await platform.passwords.hash(PASSWORD)})
        invitees.append((await api.token(email, PASSWORD), await _latest_token(platform, email)))
    port = _free_port()
    process = await _serve(settings, port, tmp_path / "serve.log", TENANTRY_WORKERS="2")
    try:
        await _until_listening(port, process)

        async def call(query: str, variables: dict[str, Any], token: str, tenant: str | None) -> str:
            """The outcome, retried as a client does while the answer is UNAVAILABLE (nothing done:
            on a slow backend one tenant's twelve creates wait for its share of the slots)."""
            headers = {"authorization": f"Bearer {token}", **({"x-tenant-id": tenant} if tenant else {})}
            while True:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                    body = (await client.post("/graphql", headers=headers,
                                              json={"query": query, "variables": variables})).json()
                code = None if "errors" not in body else str(body["errors"][0]["extensions"]["code"])
                if code != "UNAVAILABLE":
                    return code or "ok"
                await asyncio.sleep(0.5)

        accepted = await asyncio.gather(*(call("mutation($t: String!) { acceptInvitation(token: $t) { role } }",
                                               {"t": invitation}, token, None) for token, invitation in invitees))
        devices = await asyncio.gather(*(call('mutation { createDevice(input: {name: "d"}) { id } }', {},
                                              t.token, t.id) for _ in range(12)))
        subtenants = await asyncio.gather(*(call(
            "mutation($d: String!, $e: String!) { createSubtenant(input: {domain: $d, company: \"C\", "
            "adminEmail: $e}) { id } }", {"d": unique("race"), "e": ent.admin_email}, ent.token, ent.id)
            for _ in range(12)))
        started = time.monotonic()  # 16 requests at once of a tenant allowed 1/s with a burst of 4
        rated = await asyncio.gather(*(call("{ tenant { id } }", {}, busy.token, busy.id) for _ in range(16)))
        elapsed = time.monotonic() - started
    finally:
        process.terminate()
        await process.wait()
        print((tmp_path / "serve.log").read_text(errors="replace")[-20000:])  # shown when an assertion fails
    # One bucket for both processes: the burst, and what refilled meanwhile (each process's own
    # bucket let 8 through).
    assert 4 <= rated.count("ok") <= 4 + int(elapsed) + 1, (rated, elapsed)
    assert set(rated) <= {"ok", "RATE_LIMITED"}
    assert sorted(accepted) == ["LIMIT_EXCEEDED"] * 10 + ["ok"] * 2, accepted
    assert sorted(devices) == ["LIMIT_EXCEEDED"] * 9 + ["ok"] * 3, devices
    assert sorted(subtenants) == ["LIMIT_EXCEEDED"] * 9 + ["ok"] * 3, subtenants
    async with platform.db.owner.connect() as conn:
        members = (await conn.execute(text("SELECT count(*) FROM tenantry.memberships WHERE tenant_id = :t"),
                                      {"t": t.id})).scalar_one()
        children = (await conn.execute(text("SELECT count(*) FROM tenantry.tenants WHERE parent_id = :t"),
                                       {"t": ent.id})).scalar_one()
    assert (members, children) == (3, 3)
    assert (await api.gql("{ devices { totalCount } }", token=t.token, tenant=t.id)).data["devices"]["totalCount"] == 3


async def test_a_tenant_can_neither_read_nor_refill_the_shared_rate_buckets(api: Api, world: World,
                                                                            platform: Platform) -> None:
    """The buckets are the management plane's: under its own role a tenant reaches no bucket (its
    own included), and one tenant's requests never draw from another's."""
    a, b = await world.tenant(), await world.tenant()
    for t in (a, b):
        await api.gql(UPDATE, {"id": t.id, "l": {"requestsPerSecond": 1, "requestBurst": 2}},
                      token=world.operator_token, tenant="management")
    for _ in range(3):
        await api.gql("{ tenant { id } }", token=a.token, tenant=a.id)
    assert (await api.gql("{ tenant { id } }", token=a.token, tenant=a.id)).code == "RATE_LIMITED"
    assert (await api.gql("{ tenant { id } }", token=b.token, tenant=b.id)).data["tenant"]["id"] == b.id
    for sql in ("SELECT * FROM tenantry.rate_buckets",
                f"UPDATE tenantry.rate_buckets SET tokens = 1000 WHERE key = 'tenant:{a.id}'",
                "DELETE FROM tenantry.rate_buckets"):
        await assert_denied(platform, a.id, sql)
