"""Routing overhead and GraphQL overhead for one device read.

    python -m bench.routing [N]

1. The same SELECT of one device by id, routed (BEGIN + set_config(search_path, role) in
   one round trip, then the query, then COMMIT, as the app role) vs unrouted (BEGIN, the
   schema-qualified query, COMMIT, as the owner). Goal: routed/unrouted <= 1.10x.
2. GraphQL `device(id)` through the full app (JWT check, routing, membership from the
   cached registry, Strawberry) vs a plain Starlette endpoint running the same routed SELECT
   on the same pool and returning the same JSON. Goal: GraphQL throughput >= 0.70x plain.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson
from sqlalchemy import MetaData, bindparam, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.access.acting import tenant_transaction
from app.db.transaction import transaction
from app.models.tenant import devices
from app.runtime.platform import Platform
from app.services.inventory.devices import DEVICE_COLUMNS
from bench.common import ADMIN_EMAIL, ADMIN_PASSWORD, bench_platform, generic_path, interleaved, median, timed
from bench.common import local_id as _local

BY_ID = select(*DEVICE_COLUMNS).where(devices.c.id == bindparam("id"))
DEVICE = "query($id: ID!) { device(id: $id) { id name type owner fragments createdAt updatedAt } }"


def plain_routes(platform: Platform) -> list[Any]:
    async def plain_device(request: Request) -> Response:
        tenant_id = request.headers["x-tenant-id"]
        tx = tenant_transaction(platform.db.app, tenant_id)
        try:
            row = (await tx.execute(BY_ID, {"id": _local(request.path_params["id"])})).first()
        finally:
            await tx.finish(commit=True)
        assert row is not None
        body = {"data": {"device": {"id": str(row.id), "name": row.name, "type": row.type, "owner": row.owner,
                                    "fragments": row.fragments, "createdAt": row.created_at.isoformat(),
                                    "updatedAt": row.updated_at.isoformat()}}}
        return Response(orjson.dumps(body), media_type="application/json")

    return [Route("/plain/device/{id}", plain_device)]


async def main(n: int) -> None:
    async with bench_platform(plain_routes) as b:
        token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, "management")
        tenant = (await b.gql('mutation { createSubtenant(input: {domain: "route", company: "R", adminEmail: "'
                              + ADMIN_EMAIL + '"}) { id } }', token=token, tenant="management"))
        tenant_id = tenant["createSubtenant"]["id"]
        tenant_token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, tenant_id)
        created = await b.gql('mutation { createDevice(input: {name: "bench", type: "t", fragments: {a: 1}}) '
                              "{ id } }", token=tenant_token, tenant=tenant_id)
        device_id = created["createDevice"]["id"]
        db = b.platform.db
        # The same table, schema-qualified, so both sides build and run the same statement.
        qualified_devices = devices.to_metadata(MetaData(), schema=f"t_{tenant_id}")
        qualified = select(*(qualified_devices.c[c.name] for c in DEVICE_COLUMNS)).where(
            qualified_devices.c.id == bindparam("id"))

        async def routed() -> None:
            tx = tenant_transaction(db.app, tenant_id)
            (await tx.execute(BY_ID, {"id": _local(device_id)})).one()
            await tx.finish(commit=True)

        async def unrouted() -> None:
            async with transaction(db.owner) as tx:
                (await tx.execute(qualified, {"id": _local(device_id)})).one()

        headers = {"authorization": f"Bearer {tenant_token}", "x-tenant-id": tenant_id,
                   "accept": "application/graphql-response+json"}
        payload = {"query": DEVICE, "variables": {"id": str(device_id)}}

        async def via_graphql() -> None:
            response = await b.client.post("/graphql", json=payload, headers=headers)
            assert response.status_code == 200
            assert response.headers["tenantry-read-path"] == "compiled"
            assert "errors" not in response.json()

        async def via_generic() -> None:  # the same app with the compiled path off
            with generic_path(b.app):
                response = await b.client.post("/graphql", json=payload, headers=headers)
            assert "errors" not in response.json()

        async def via_plain() -> None:
            response = await b.client.get(f"/plain/device/{device_id}", headers=headers)
            assert response.status_code == 200

        for fn in (routed, unrouted, via_graphql, via_generic, via_plain):
            await timed(fn, 50)  # warm-up
        samples = await interleaved({"routed": routed, "unrouted": unrouted}, n)
        samples |= await interleaved({"graphql": via_graphql, "generic": via_generic, "plain": via_plain}, n)

    m = {k: median(v) * 1e6 for k, v in samples.items()}
    print(f"device SELECT routed   p50 {m['routed']:.0f} us")
    print(f"device SELECT unrouted p50 {m['unrouted']:.0f} us")
    print(f"routed/unrouted: {m['routed'] / m['unrouted']:.2f}x   (goal <= 1.10x)")
    print(f"GraphQL device(id) p50 {m['graphql']:.0f} us = {1e6 / m['graphql']:.0f} req/s (compiled)")
    print(f"GraphQL device(id) p50 {m['generic']:.0f} us = {1e6 / m['generic']:.0f} req/s (generic)")
    print(f"plain Starlette    p50 {m['plain']:.0f} us = {1e6 / m['plain']:.0f} req/s")
    print(f"GraphQL/plain throughput: {m['plain'] / m['graphql']:.2f}x compiled, {m['plain'] / m['generic']:.2f}x "
          "generic   (goal >= 0.70x; one request at a time, bench.peer measures under load)")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
