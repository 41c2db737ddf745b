"""Measurement ingest: `createMeasurements` batches of 1,000 through GraphQL vs a plain COPY.

    python -m bench.ingest [BATCHES]

The baseline writes the same rows with psycopg's COPY into the same table on its own
connection (as the owner: no routing, no validation, no GraphQL). Goal: >= 50,000 rows/s
through GraphQL. Both run in this process on the event loop `tenantry serve` runs (uvloop:
`bench.common.run_as_served`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
import orjson

from bench.common import Bench, bench_platform, local_id, run_as_served

BATCH = 1000
T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def main(batches: int) -> None:
    async with bench_platform() as b:
        tenant_id, tenant_token = await b.subtenant("ingest")
        devices = [(await b.gql('mutation { createDevice(input: {name: "m"}) { id } }', token=tenant_token,
                                tenant=tenant_id))["createDevice"]["id"] for _ in range(10)]
        headers = {"authorization": f"Bearer {tenant_token}", "x-tenant-id": tenant_id,
                   "accept": "application/graphql-response+json", "content-type": "application/json"}
        query = "mutation($m: [MeasurementInput!]!) { createMeasurements(input: $m) }"

        def rows(k: int) -> list[dict[str, object]]:
            return [{"deviceId": devices[i % 10], "time": (T0 + timedelta(seconds=k * BATCH + i)).isoformat(),
                     "type": "climate", "series": "temperature", "value": 20.0 + (i % 50) / 10, "unit": "C"}
                    for i in range(BATCH)]

        # Encoded up front: the client's JSON encoding is not the server's cost.
        payloads = [orjson.dumps({"query": query, "variables": {"m": rows(k)}}) for k in range(batches)]
        copies = [[(local_id(str(r["deviceId"])), datetime.fromisoformat(str(r["time"])), r["type"], r["series"],
                    r["value"], r["unit"]) for r in rows(k)] for k in range(batches)]

        async def via_graphql(k: int) -> None:
            response = await b.client.post("/graphql", content=payloads[k], headers=headers)
            assert orjson.loads(response.content)["data"]["createMeasurements"] == BATCH, response.text

        async def via_copy(k: int) -> None:
            async with b.platform.db.owner.connect() as conn:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                assert driver is not None
                async with driver.transaction(), driver.cursor() as cur, cur.copy(
                        f"COPY t_{tenant_id}.measurements (device_id, time, type, series, value, unit) FROM STDIN"
                ) as copy:
                    for row in copies[k]:
                        await copy.write_row(row)

        await via_graphql(0)
        await via_copy(0)
        spent = {"graphql": 0.0, "copy": 0.0}
        half = batches // 2
        for k in range(1, half):  # one at a time, interleaved, so machine noise hits both alike
            start = time.perf_counter()
            await via_graphql(k)
            spent["graphql"] += time.perf_counter() - start
            start = time.perf_counter()
            await via_copy(k)
            spent["copy"] += time.perf_counter() - start

        # Four batches in flight, as an ingest pipeline sends them: PostgreSQL's work on one
        # batch overlaps the server's Python work on the next (two cores).
        async def concurrently(fn: Callable[[int], Awaitable[None]], ks: list[int]) -> float:
            queue = list(ks)

            async def worker() -> None:
                while queue:
                    await fn(queue.pop())

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(4)))
            return time.perf_counter() - start

        rest = list(range(half, batches))
        parallel = {"graphql": await concurrently(via_graphql, rest), "copy": await concurrently(via_copy, rest)}

        served = await _served_rate(b, tenant_id, tenant_token, payloads[:40])

    sequential_rows = (half - 1) * BATCH
    seq = {k: sequential_rows / v for k, v in spent.items()}
    par = {k: len(rest) * BATCH / v for k, v in parallel.items()}
    print(f"one batch at a time: GraphQL {seq['graphql']:,.0f} rows/s "
          f"({spent['graphql'] / (half - 1) * 1000:.1f} ms per {BATCH}), plain COPY {seq['copy']:,.0f} rows/s, "
          f"ratio {seq['graphql'] / seq['copy']:.2f}x")
    print(f"four in flight:      GraphQL {par['graphql']:,.0f} rows/s, plain COPY {par['copy']:,.0f} rows/s, "
          f"ratio {par['graphql'] / par['copy']:.2f}x")
    print(f"`tenantry serve --workers 2` over loopback HTTP, four in flight: GraphQL {served:,.0f} rows/s, "
          f"{served / par['copy']:.2f}x plain COPY   (goal: GraphQL >= 50,000 rows/s)")


async def _served_rate(b: Bench, tenant_id: str, token: str, payloads: list[bytes]) -> float:
    """The same batches through a real server process pair, as deployed (uvicorn, two workers)."""
    port = 18000 + os.getpid() % 1000
    env = {**os.environ, "TENANTRY_DATABASE_URL": str(b.platform.settings.database_url),
           "TENANTRY_SECRET_KEY": str(b.platform.settings.secret_key), "TENANTRY_RETENTION_INTERVAL": "0",
           "TENANTRY_DATA_DIR": str(b.platform.settings.data_dir), "TENANTRY_LOG_FORMAT": "json"}
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "serve", "--workers", "2", "--port", str(port),
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for _ in range(300):
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            headers = {"authorization": f"Bearer {token}", "x-tenant-id": tenant_id,
                       "content-type": "application/json", "accept": "application/graphql-response+json"}
            for body in payloads[:4]:  # warm both workers
                (await client.post("/graphql", content=body, headers=headers)).raise_for_status()
            queue = list(payloads[4:])

            async def worker() -> None:
                while queue:
                    response = await client.post("/graphql", content=queue.pop(), headers=headers)
                    assert orjson.loads(response.content)["data"]["createMeasurements"] == BATCH

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(4)))
            return (len(payloads) - 4) * BATCH / (time.perf_counter() - start)
    finally:
        server.terminate()
        await server.wait()


if __name__ == "__main__":
    run_as_served(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50))
