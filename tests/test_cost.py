"""Bounded cost per request: an operation's estimated cost is checked before anything runs, on
HTTP, SSE and WebSocket alike (issue 27); what a dashboard asks passes, a query of nested pages
that could return hundreds of millions of objects is refused with its cost and the limit."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from app.graphql.engine.cost import CostModel
from app.graphql.schema import build_schema
from app.runtime.platform import Platform
from tests.conftest import World
from tests.test_realtime import Raw

NESTED = "alarms(first: 100) { id } children { alarms(first: 100) { id } children { alarms(first: 100) { id } } }"
HEAVY = "{ " + " ".join(f"a{i}: devices(first: 100) {{ edges {{ node {{ {NESTED} }} }} }}" for i in range(8)) + " }"
DASHBOARD = ("{ me { user { id } } devices(first: 20) { totalCount edges { node { id name "
             "alarms(first: 5) { id text } } } } }")
SIZED = ("query($n: Int!) { devices(first: $n) { edges { node { id alarms(first: $n) { id } "
         "children { alarms(first: $n) { id } } } } } }")


def _model(limit: int = 500_000) -> CostModel:
    return CostModel(build_schema()._schema, limit=limit, page_cap=500, list_estimate=100, max_tokens=4000)


def test_the_estimate_counts_objects_a_response_can_hold() -> None:
    model = _model()
    assert model.check("{ devices(first: 100) { edges { node { id name } } } }", None, None) == 201
    assert model.check("{ devices { totalCount } }", None, None) == 1  # no items asked: one connection
    assert model.check("{ devices { edges { node { id } } } }", None, None) == 101  # no `first`: 50, as served
    assert model.check(DASHBOARD, None, None) == 2 + 41 + 20 * 5
    assert model.check("{ __schema { types { name fields { name args { name } } } } }", None, None) == 0
    assert model.check(SIZED, None, {"n": 5}) == 1 + 5 + 5 + 5 * 5 + 5 * 100 + 5 * 100 * 5  # children: 100 each
    unbounded = _model(limit=10**9)
    assert unbounded.check(SIZED, None, {"n": 10_000}) == unbounded.check(SIZED, None, {"n": 500})  # capped


async def test_an_expensive_operation_is_refused_before_anything_runs(http: httpx.AsyncClient, world: World,
                                                                     platform: Platform) -> None:
    t = await world.tenant()
    headers = {"authorization": f"Bearer {t.token}", "x-tenant-id": t.id}
    lookups = platform.registry.lookups
    for accept, status in (("application/graphql-response+json", 400), ("application/json", 200)):
        response = await http.post("/graphql", json={"query": HEAVY}, headers={**headers, "accept": accept})
        assert response.status_code == status
        error = response.json()["errors"][0]
        assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX"
        assert error["extensions"]["limit"] == platform.settings.max_query_cost
        assert error["extensions"]["cost"] > 100_000_000
        assert "data" not in response.json()
    assert platform.registry.lookups == lookups  # not even routed
    # Page sizes from variables count as given.
    small = await http.post("/graphql", json={"query": SIZED, "variables": {"n": 5}}, headers=headers)
    assert small.json()["data"]["devices"]["edges"] == []
    big = await http.post("/graphql", json={"query": SIZED, "variables": {"n": 500}}, headers=headers)
    assert big.json()["errors"][0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    dashboard = await http.post("/graphql", json={"query": DASHBOARD}, headers=headers)
    assert dashboard.json()["data"]["devices"]["totalCount"] == 0


async def test_subscriptions_and_sse_are_held_to_the_same_limit(server: str, http: httpx.AsyncClient,
                                                               world: World) -> None:
    t = await world.tenant()
    async with Raw.connect(server, {"Authorization": f"Bearer {t.token}", "X-Tenant-ID": t.id}) as raw:
        assert (await raw.receive())["type"] == "connection_ack"
        await raw.send({"id": "q", "type": "subscribe", "payload": {"query": HEAVY}})
        refused = await raw.receive()
        assert (refused["id"], refused["type"]) == ("q", "error")
        assert refused["payload"][0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    async with http.stream("POST", "/graphql", json={"query": HEAVY}, headers={
            "authorization": f"Bearer {t.token}", "x-tenant-id": t.id, "accept": "text/event-stream"}) as stream:
        body = b"".join([chunk async for chunk in stream.aiter_bytes()])
    assert b"QUERY_TOO_COMPLEX" in body
    assert body.endswith(b"event: complete\ndata:\n\n")


async def test_the_estimated_cost_is_counted_in_the_tenants_usage(http: httpx.AsyncClient, world: World,
                                                                  platform: Platform) -> None:
    t = await world.tenant()
    headers = {"authorization": f"Bearer {t.token}", "x-tenant-id": t.id}
    await http.post("/graphql", json={"query": "{ devices(first: 100) { edges { node { id name } } } }"},
                    headers=headers)  # 201
    await http.post("/graphql", json={"query": SIZED, "variables": {"n": 5}}, headers=headers)  # 3036
    await platform.meter.flush()
    today = datetime.now(UTC).date().isoformat()  # the meter's day (UTC)
    usage = await http.post("/graphql", json={"query": "query($d: Date!) { usage(from: $d, to: $d) { queryCost } }",
                                              "variables": {"d": today}}, headers=headers)
    days = usage.json()["data"]["usage"]
    assert sum(int(d["queryCost"]) for d in days) == 201 + 3036
