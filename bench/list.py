"""Listing devices: `devices(first: 100)` through GraphQL (compiled and generic) vs a plain endpoint.

    python -m bench.list [N]

Also the console's dashboard (`me` + a devices page with alarms) and the same with roots that are
executed beside the compiled ones, each against the generic path.

The plain endpoint runs the same routed keyset query on the same pool and returns the same
JSON (no auth, no GraphQL); the ratio is what the GraphQL layer costs on a wide list.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.access.acting import tenant_transaction
from app.access.scope import UNRESTRICTED
from app.runtime.platform import Platform
from app.services.inventory.devices import list_devices
from bench.common import ADMIN_EMAIL, ADMIN_PASSWORD, Bench, bench_platform, generic_path, interleaved, median

QUERY = "{ devices(first: 100) { edges { cursor node { id name type owner fragments createdAt updatedAt } } " \
        "pageInfo { hasNextPage endCursor } } }"
# A dashboard's page: every relation of a device (the services' relation statements, nested by the
# compiler as correlated subqueries, batched by the loaders on the generic path).
NESTED = "{ devices(first: 20) { edges { node { id name parent { id } children { id name } groups { name } " \
         "externalIds { value } alarms(first: 5) { id type count } } } } }"

# The console's first question (`me` on the management plane, a page of devices with their
# alarms in the tenant's schema): both compiled, one statement each in one round trip. MIXED adds
# roots with no translation, executed beside the compiled ones.
DASHBOARD = ("{ me { user { id email } memberships { role scope tenant { id domain kind } } } "
             "devices(first: 20) { totalCount edges { node { id name availability alarms(first: 5) "
             "{ id severity status } } } pageInfo { hasNextPage endCursor } } }")
MIXED = DASHBOARD[:-1] + " roles { name } tenant { id limits { maxDevices deviceCount } } }"


def plain_routes(platform: Platform) -> list[Any]:
    async def plain_devices(request: Request) -> Response:
        tx = tenant_transaction(platform.db.app, request.headers["x-tenant-id"])
        try:
            page = await list_devices(tx, UNRESTRICTED, first=100, after=None, cap=500)
        finally:
            await tx.finish(commit=True)
        edges = [{"cursor": c, "node": {"id": str(d.id), "name": d.name, "type": d.type, "owner": d.owner,
                                        "fragments": d.fragments, "createdAt": d.created_at.isoformat(),
                                        "updatedAt": d.updated_at.isoformat()}}
                 for c, d in zip(page.cursors, page.items, strict=True)]
        body = {"data": {"devices": {"edges": edges, "pageInfo": {
            "hasNextPage": page.has_next_page, "endCursor": page.cursors[-1] if page.cursors else None}}}}
        return Response(orjson.dumps(body), media_type="application/json")

    return [Route("/plain/devices", plain_devices)]


async def main(n: int) -> None:
    async with bench_platform(plain_routes) as b:
        token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, "management")
        created = await b.gql('mutation { createSubtenant(input: {domain: "list", company: "L", adminEmail: "'
                              + ADMIN_EMAIL + '"}) { id } }', token=token, tenant="management")
        tenant_id = created["createSubtenant"]["id"]
        tenant_token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, tenant_id)
        for i in range(150):
            await b.gql("mutation($n: String!) { createDevice(input: {name: $n, type: \"meter\", "
                        'fragments: {fw: "1.2.3", battery: 87}}) { id } }', {"n": f"device-{i}"},
                        token=tenant_token, tenant=tenant_id)
        await _relations(b, tenant_token, tenant_id)
        headers = {"authorization": f"Bearer {tenant_token}", "x-tenant-id": tenant_id,
                   "accept": "application/graphql-response+json", "content-type": "application/json"}
        body = orjson.dumps({"query": QUERY})

        async def via_graphql() -> None:
            response = await b.client.post("/graphql", content=body, headers=headers)
            assert response.headers["tenantry-read-path"] == "compiled"
            assert len(orjson.loads(response.content)["data"]["devices"]["edges"]) == 100

        async def via_generic() -> None:  # the same app with the compiled path off
            with generic_path(b.app):
                response = await b.client.post("/graphql", content=body, headers=headers)
            assert len(orjson.loads(response.content)["data"]["devices"]["edges"]) == 100

        async def via_plain() -> None:
            response = await b.client.get("/plain/devices", headers=headers)
            assert len(orjson.loads(response.content)["data"]["devices"]["edges"]) == 100

        nested = orjson.dumps({"query": NESTED})

        async def nested_compiled() -> None:
            response = await b.client.post("/graphql", content=nested, headers=headers)
            assert response.headers["tenantry-read-path"] == "compiled", response.text

        async def nested_generic() -> None:
            with generic_path(b.app):
                response = await b.client.post("/graphql", content=nested, headers=headers)
            assert "errors" not in orjson.loads(response.content)

        runs: dict[str, Callable[[], Awaitable[object]]] = {
            "graphql": via_graphql, "generic": via_generic, "plain": via_plain, "nested compiled": nested_compiled,
            "nested generic": nested_generic}
        for name, query, path in (("dashboard", DASHBOARD, "compiled"), ("mixed", MIXED, "partly compiled")):
            runs[f"{name} compiled"], runs[f"{name} generic"] = _both(b, headers, query, path)
        for fn in runs.values():
            for _ in range(20):
                await fn()
        samples = await interleaved(runs, n)

    g, x, p = (median(samples[k]) * 1000 for k in ("graphql", "generic", "plain"))
    print(f"devices(first: 100) compiled  p50 {g:.2f} ms ({1000 / g:.0f} req/s)")
    print(f"devices(first: 100) generic   p50 {x:.2f} ms ({1000 / x:.0f} req/s)")
    print(f"plain Starlette endpoint      p50 {p:.2f} ms ({1000 / p:.0f} req/s)")
    print(f"compiled/plain throughput: {p / g:.2f}x   generic/plain: {p / x:.2f}x   (one request at a time; "
          "bench.peer measures under load)")
    c, r = (median(samples[k]) * 1000 for k in ("nested compiled", "nested generic"))
    print(f"devices(first: 20) with every relation: compiled p50 {c:.2f} ms, generic {r:.2f} ms, "
          f"compiled/generic throughput {r / c:.2f}x")
    for name in ("dashboard", "mixed"):
        c, r = (median(samples[f"{name} {k}"]) * 1000 for k in ("compiled", "generic"))
        print(f"{name}: compiled p50 {c:.2f} ms, generic {r:.2f} ms, compiled/generic throughput {r / c:.2f}x")


def _both(b: Bench, headers: dict[str, str], query: str,
          path: str) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[object]]]:
    body = orjson.dumps({"query": query})

    async def compiled() -> None:
        response = await b.client.post("/graphql", content=body, headers=headers)
        assert response.headers["tenantry-read-path"] == path, response.text

    async def generic() -> None:
        with generic_path(b.app):
            response = await b.client.post("/graphql", content=body, headers=headers)
        assert "errors" not in orjson.loads(response.content)

    return compiled, generic


async def _relations(b: Bench, token: str, tenant_id: str) -> None:
    """Some devices with a child, a group, an external id and alarms (the NESTED page's relations)."""
    page = await b.gql("{ devices(first: 20) { edges { node { id } } } }", token=token, tenant=tenant_id)
    ids = [e["node"]["id"] for e in page["devices"]["edges"]]
    group = (await b.gql('mutation { createGroup(name: "g") { id } }', token=token, tenant=tenant_id))["createGroup"]
    await b.gql("mutation($g: ID!, $d: [ID!]!) { addDevicesToGroup(groupId: $g, deviceIds: $d) }",
                {"g": group["id"], "d": ids[::2]}, token=token, tenant=tenant_id)
    for i, device in enumerate(ids[:10]):
        await b.gql("mutation($d: ID!, $v: String!) { addExternalId(deviceId: $d, value: $v) { value } }",
                    {"d": device, "v": f"SN-{i}"}, token=token, tenant=tenant_id)
        await b.gql('mutation($p: ID!) { createDevice(input: {name: "child", parentId: $p}) { id } }', {"p": device},
                    token=token, tenant=tenant_id)
        for kind in ("overheat", "battery", "door"):
            await b.gql('mutation($d: ID!, $t: String!) { raiseAlarm(input: {deviceId: $d, type: $t, severity: MAJOR, '
                        'text: "x"}) { id } }', {"d": device, "t": kind}, token=token, tenant=tenant_id)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 500))
