"""Usage at scale: 10,000 tenants x 30 days, and what metering costs per request.

    python -m bench.usage [TENANTS]

1. Seeds TENANTS registry rows under the management tenant and 30 days of usage each.
2. Times `subtenantUsage` for the management tenant over those 30 days (goal <= 1 s) and
   the streamed CSV export of the same range.
3. Requests/s of the same routed query with and without metering, interleaved in one run
   (goal: metered >= 0.97x unmetered).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import orjson
from sqlalchemy import text

from app.main import create_app
from bench.common import ADMIN_EMAIL, ADMIN_PASSWORD, bench_platform, interleaved, median

SEED = """
INSERT INTO tenantry.tenants (id, domain, company, kind, status, parent_id, path, depth, template, custom_properties)
SELECT 't' || (100000000 + g), 'bench-' || g, 'Bench ' || g, 'STANDARD', 'ACTIVE', 'management',
       ARRAY['management', 't' || (100000000 + g)], 1, 'standard', jsonb_build_object('plan', 'p' || (g % 3))
  FROM generate_series(1, :n) g;
INSERT INTO tenantry.usage_daily (tenant_id, day, request_count, device_request_count, measurements_created_count,
                                  events_created_count, alarms_created_count, inventories_created_count,
                                  device_count, device_with_children_count, storage_size, user_count)
SELECT 't' || (100000000 + g), :start + d, 1000 + g % 97, 500, 20000 + d, 100, 5, 2, 40 + d % 5, 45,
       1048576 * (g % 50), 3
  FROM generate_series(1, :n) g, generate_series(0, 29) d;
"""


async def main(n: int) -> None:
    async with bench_platform() as b:
        today = datetime.now(UTC).date()
        start = today - timedelta(days=29)
        async with b.platform.db.owner.connect() as conn:
            for statement in SEED.strip().split(";\n"):
                await conn.execute(text(statement), {"n": n, "start": start})
            await conn.exec_driver_sql("ANALYZE tenantry.tenants; ANALYZE tenantry.usage_daily")
        token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, "management")
        headers = {"authorization": f"Bearer {token}", "x-tenant-id": "management",
                   "accept": "application/graphql-response+json", "content-type": "application/json"}
        query = orjson.dumps({"query": """query($f: Date!, $t: Date!) { subtenantUsage(from: $f, to: $t) {
            tenantId tenantDomain tenantCompany parentTenantId status creationTime requestCount deviceRequestCount
            measurementsCreatedCount eventsCreatedCount alarmsCreatedCount inventoriesCreatedCount
            totalResourceCreateAndUpdateCount deviceCount deviceWithChildrenCount storageSize userCount
            subtenantCount peakDeviceCount peakStorageSize customProperties } }""",
                              "variables": {"f": start.isoformat(), "t": today.isoformat()}})

        summary_times = []
        for _ in range(5):
            began = time.perf_counter()
            response = await b.client.post("/graphql", content=query, headers=headers)
            summary_times.append(time.perf_counter() - began)
            rows = len(orjson.loads(response.content)["data"]["subtenantUsage"])
        export_times = []
        for _ in range(3):
            began = time.perf_counter()
            exported = await b.client.get("/export/usage.csv", params={"from": start.isoformat(),
                                                                       "to": today.isoformat()}, headers=headers)
            export_times.append(time.perf_counter() - began)
            lines = exported.text.count("\n")

        # Metering on vs off: the same app twice, differing only in that setting.
        unmetered_platform = dataclasses.replace(b.platform, settings=b.platform.settings.with_(metering=False))
        unmetered = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(platform=unmetered_platform)),
                                      base_url="http://bench")
        probe = orjson.dumps({"query": "{ tenant { id domain } }"})

        async def metered_call() -> None:
            assert (await b.client.post("/graphql", content=probe, headers=headers)).status_code == 200

        async def unmetered_call() -> None:
            assert (await unmetered.post("/graphql", content=probe, headers=headers)).status_code == 200

        await interleaved({"metered": metered_call, "unmetered": unmetered_call}, 200)
        samples = await interleaved({"metered": metered_call, "unmetered": unmetered_call}, 3000)
        await unmetered.aclose()

    print(f"subtenantUsage, {rows:,} tenants x 30 days: p50 {median(summary_times) * 1000:.0f} ms "
          f"(min {min(summary_times) * 1000:.0f})   (goal <= 1000 ms)")
    print(f"CSV export of the same ({lines - 1:,} rows by day): p50 {median(export_times) * 1000:.0f} ms")
    m, u = median(samples["metered"]), median(samples["unmetered"])
    print(f"requests/s metered {1 / m:,.0f} vs unmetered {1 / u:,.0f}: {u / m:.3f}x   (goal >= 0.97x)")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000))
