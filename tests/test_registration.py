"""Bulk registration: an upload becomes a job with an outcome per row, idempotent by external id, within
maxDevices exactly, all-or-nothing or per row, and the tenant's own (through GraphQL and in SQL)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from app.db.naming import tenant_schema
from app.runtime.platform import Platform
from tests.conftest import Api, TenantHandle, World, assert_denied
from tests.test_limits import UPDATE

REGISTER = """mutation($f: DeviceRegistrationFormat!, $c: String!, $m: DeviceRegistrationMode!) {
    registerDevices(input: {format: $f, content: $c, mode: $m}) { id status total } }"""
JOB = """query($id: ID!) { deviceRegistrationJob(id: $id) { status total processed created existing failed error
    rows(first: 500) { edges { node { line name externalId outcome deviceId message } } } } }"""


async def _register(api: Api, t: TenantHandle, content: str, mode: str = "PER_ROW", fmt: str = "CSV") -> Any:
    return await api.gql(REGISTER, {"f": fmt, "c": content, "m": mode}, token=t.token, tenant=t.id)


async def _finished(api: Api, t: TenantHandle, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = (await api.gql(JOB, {"id": job_id}, token=t.token, tenant=t.id)).data["deviceRegistrationJob"]
        if job["status"] in ("SUCCEEDED", "FAILED"):
            job["rows"] = [e["node"] for e in job["rows"]["edges"]]
            return dict(job)
        await asyncio.sleep(0.05)
    raise AssertionError("the job did not finish")


async def _devices(api: Api, t: TenantHandle) -> int:
    return int((await api.gql("{ devices { totalCount } }", token=t.token, tenant=t.id)).data["devices"]["totalCount"])


async def _group(api: Api, t: TenantHandle) -> str:
    created = await api.gql('mutation { createGroup(name: "floor 1") { id } }', token=t.token, tenant=t.id)
    return str(created.data["createGroup"]["id"])


async def test_per_row_registers_the_good_rows_and_says_why_not_for_the_others(api: Api, world: World) -> None:
    t = await world.tenant()
    group = await _group(api, t)
    earlier = await api.gql('mutation { createDevice(input: {name: "old", externalId: "SN-0"}) { id } }',
                            token=t.token, tenant=t.id)
    content = (f"name,type,externalId,groupId\nmeter 1,meter,SN-1,{group}\nmeter 2,meter,SN-2,\n"
               f"meter 3,,,\n,meter,SN-4,\nagain,meter,SN-1,\nold one,meter,SN-0,\nlost,meter,SN-7,bogus\n")
    submitted = (await _register(api, t, content)).data["registerDevices"]
    assert (submitted["status"], submitted["total"]) == ("QUEUED", 7)
    job = await _finished(api, t, submitted["id"])
    assert (job["status"], job["processed"], job["created"], job["existing"], job["failed"]) == \
        ("SUCCEEDED", 7, 3, 1, 3)
    outcomes = {r["line"]: (r["outcome"], r["message"]) for r in job["rows"]}
    assert [outcomes[line][0] for line in range(2, 9)] == \
        ["CREATED", "CREATED", "CREATED", "FAILED", "FAILED", "EXISTING", "FAILED"]
    assert "name" in outcomes[5][1]
    assert "line 2" in outcomes[6][1]
    assert "group" in outcomes[8][1]
    old = next(r for r in job["rows"] if r["line"] == 7)
    assert old["deviceId"] == earlier.data["createDevice"]["id"]
    # The devices are real: their external ids, groups and types, visible to GraphQL.
    first = next(r for r in job["rows"] if r["line"] == 2)["deviceId"]
    found = await api.gql("query($id: ID!) { node(id: $id) { ... on Device { name type externalIds { value } "
                          "groups { id } } } }", {"id": first}, token=t.token, tenant=t.id)
    assert found.data["node"] == {"name": "meter 1", "type": "meter", "externalIds": [{"value": "SN-1"}],
                                  "groups": [{"id": group}]}

    # Submitted again: every row with an external id answers EXISTING with the same device; the one
    # without (line 4) has no key to be recognised by, and is created again.
    again = await _finished(api, t, (await _register(api, t, content)).data["registerDevices"]["id"])
    assert (again["created"], again["existing"], again["failed"]) == (1, 3, 3)
    assert next(r for r in again["rows"] if r["line"] == 2)["deviceId"] == first
    assert [r["line"] for r in again["rows"] if r["outcome"] == "CREATED"] == [4]
    assert await _devices(api, t) == 5


async def test_all_or_nothing_registers_nothing_when_one_row_is_bad(api: Api, world: World) -> None:
    t = await world.tenant()
    rows = [{"name": f"d{i}", "externalId": f"E{i}"} for i in range(1500)]
    rows[1200]["name"] = " "
    job = await _finished(api, t, (await _register(api, t, orjson.dumps(rows).decode(), "ALL_OR_NOTHING",
                                                   "JSON")).data["registerDevices"]["id"])
    assert job["status"] == "FAILED"
    assert "line 1201" in job["error"]
    assert await _devices(api, t) == 0
    assert {r["outcome"] for r in job["rows"]} == {"SKIPPED"}  # the first page: rows before the bad one
    del rows[1200]
    done = await _finished(api, t, (await _register(api, t, orjson.dumps(rows).decode(), "ALL_OR_NOTHING",
                                                    "JSON")).data["registerDevices"]["id"])
    assert (done["status"], done["created"]) == ("SUCCEEDED", 1499)
    assert await _devices(api, t) == 1499


async def test_max_devices_is_honoured_exactly(api: Api, world: World) -> None:
    t = await world.tenant()
    assert (await api.gql(UPDATE, {"id": t.id, "l": {"maxDevices": 5}}, token=world.operator_token,
                          tenant="management")).data
    await api.gql('mutation { createDevice(input: {name: "first"}) { id } }', token=t.token, tenant=t.id)
    content = "name\n" + "".join(f"d{i}\n" for i in range(8))
    submitted = await _register(api, t, content, "ALL_OR_NOTHING")
    refused = await _finished(api, t, submitted.data["registerDevices"]["id"])
    assert refused["status"] == "FAILED"
    assert "maxDevices" in refused["error"]
    # Two per-row jobs at once: together they reach the limit, never pass it.
    jobs = [(await _register(api, t, content)).data["registerDevices"]["id"] for _ in range(2)]
    finished = [await _finished(api, t, j) for j in jobs]
    assert sum(j["created"] for j in finished) == 4
    assert all("LIMIT_EXCEEDED" in r["message"] for j in finished for r in j["rows"] if r["outcome"] == "FAILED")
    assert await _devices(api, t) == 5


async def test_an_upload_that_is_not_one_is_invalid_input_and_queues_nothing(api: Api, world: World) -> None:
    t = await world.tenant()
    for fmt, content, says in (("CSV", "", "empty"), ("CSV", "type\nx\n", "name"), ("CSV", "name,colour\na,b\n",
                                                                                      "colour"),
                               ("CSV", "name\n\"unclosed\n", None), ("CSV", "name,type\na,b,c\n", "line 2"),
                               ("JSON", "{", "JSON"), ("JSON", '{"name": "a"}', "list"), ("JSON", "[]", "no devices"),
                               ("JSON", '[{"name": 5}]', "string"), ("CSV", "name\n" + "a\n" * 100_001, "100,000")):
        refused = await _register(api, t, content, fmt=fmt)
        assert refused.code == "INVALID_INPUT", (content[:40], refused.body)
        if says:
            assert says in refused.errors[0]["message"], refused.errors[0]["message"]
    bad_mode = await api.gql(REGISTER.replace("$m: DeviceRegistrationMode!", "$m: String!"),
                             {"f": "CSV", "c": "name\na\n", "m": "SOMETIMES"}, token=t.token, tenant=t.id)
    assert bad_mode.code == "INVALID_INPUT"
    assert await _devices(api, t) == 0


async def test_a_job_is_the_tenants_own(api: Api, world: World, platform: Platform) -> None:
    a, b = await world.tenant(), await world.tenant()
    job_id = (await _register(api, a, "name,externalId\nx,S1\n")).data["registerDevices"]["id"]
    await _finished(api, a, job_id)
    assert (await api.gql(JOB, {"id": job_id}, token=b.token, tenant=b.id)).data["deviceRegistrationJob"] is None
    _, reader = await world.member(a, "READER")
    refused = await api.gql(REGISTER, {"f": "CSV", "c": "name\nx\n", "m": "PER_ROW"}, token=reader, tenant=a.id)
    assert refused.code == "FORBIDDEN"
    await assert_denied(platform, b.id, f"SELECT * FROM {tenant_schema(a.id)}.registration_rows")
