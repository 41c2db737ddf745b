"""Bulk registration: `registerDevices` of N devices (with external ids) until the job SUCCEEDED, vs
`createDevice` one at a time, vs a plain COPY of the same devices as the owner, in one run.

    python -m bench.registration [N]
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson

from bench.common import ADMIN_EMAIL, ADMIN_PASSWORD, Bench, bench_platform

ONE_BY_ONE = 500  # createDevice calls timed (a full N that way would take minutes)


async def main(n: int) -> None:
    async with bench_platform(max_body_bytes=64 * 1024 * 1024) as b:
        token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, "management")
        tenants = []
        for domain in ("bulk", "single"):
            created = await b.gql(f'mutation {{ createSubtenant(input: {{domain: "{domain}", company: "B", '
                                  f'adminEmail: "{ADMIN_EMAIL}"}}) {{ id }} }}', token=token, tenant="management")
            tenant = created["createSubtenant"]["id"]
            tenants.append((tenant, await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, tenant)))
        (bulk, bulk_token), (single, single_token) = tenants
        content = "name,type,externalId\n" + "".join(f"meter {i},meter,SN-{i:07d}\n" for i in range(n))
        start = time.perf_counter()
        job = (await b.gql("mutation($c: String!) { registerDevices(input: {format: CSV, content: $c, mode: PER_ROW}) "
                           "{ id } }", {"c": content}, token=bulk_token, tenant=bulk))["registerDevices"]["id"]
        while True:
            found = (await b.gql("query($id: ID!) { deviceRegistrationJob(id: $id) { status created error } }",
                                 {"id": job}, token=bulk_token, tenant=bulk))["deviceRegistrationJob"]
            if found["status"] in ("SUCCEEDED", "FAILED"):
                break
            await asyncio.sleep(0.05)
        registered = time.perf_counter() - start
        assert found["created"] == n, found

        start = time.perf_counter()
        for i in range(ONE_BY_ONE):
            await b.gql("mutation($n: String!, $e: String!) { createDevice(input: {name: $n, externalId: $e}) { id } }",
                        {"n": f"meter {i}", "e": f"SN-{i:07d}"}, token=single_token, tenant=single)
        one_rate = ONE_BY_ONE / (time.perf_counter() - start)

        copy_rate = await _copy(b, single, n)
    rate = n / registered
    print(f"registerDevices, {n:,} devices with external ids (PER_ROW): {registered:.1f} s, {rate:,.0f} devices/s")
    print(f"createDevice one at a time: {one_rate:,.0f} devices/s; bulk is {rate / one_rate:.1f}x that")
    print(f"plain COPY of devices as the owner (no checks, no external ids, no log): {copy_rate:,.0f} devices/s; "
          f"bulk is {rate / copy_rate:.2f}x that")


async def _copy(b: Bench, tenant: str, n: int) -> float:
    start = time.perf_counter()
    async with b.platform.db.owner.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        async with driver.transaction(), driver.cursor() as cur, cur.copy(
                f"COPY t_{tenant}.devices (name, type, fragments) FROM STDIN") as copy:
            for i in range(n):
                await copy.write_row((f"copied {i}", "meter", orjson.dumps({}).decode()))
    return n / (time.perf_counter() - start)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
