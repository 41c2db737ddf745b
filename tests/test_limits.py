"""Limits: pooled allocation from the parent, race-free enforcement, rate limiting, warnings."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import text

from app.runtime.platform import Platform
from app.services.usage.statistics import take_snapshots
from tests.conftest import Api, TenantHandle, World, unique

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
