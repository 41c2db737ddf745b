"""copyData throughput: 1,000,000 measurements between two tenants vs a raw INSERT…SELECT.

    python -m bench.copy [ROWS]

The baseline is one INSERT…SELECT across the two schemas as the owner (no role switching, no
trip through the application, no origin bookkeeping): the fastest the database itself moves
these rows. Goal: copyData >= 0.8x of it and >= 100,000 rows/s.
"""

from __future__ import annotations

import asyncio
import sys
import time

from sqlalchemy import text

from app.access.scope import Scope
from app.services.audit.records import SYSTEM
from app.services.sharing import copying
from bench.common import ADMIN_EMAIL, ADMIN_PASSWORD, bench_platform, median


async def main(rows: int) -> None:
    async with bench_platform() as b:
        token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, "management")
        ids = []
        for name in ("copy-src", "copy-dst"):
            created = await b.gql('mutation($d: String!) { createSubtenant(input: {domain: $d, company: "C", '
                                  'adminEmail: "' + ADMIN_EMAIL + '"}) { id } }', {"d": name}, token=token,
                                  tenant="management")
            ids.append(created["createSubtenant"]["id"])
        src, dst = ids
        owner = b.platform.db.owner
        async with owner.connect() as conn:
            await conn.execute(text(
                f"INSERT INTO t_{src}.devices (name) SELECT 'd' || g FROM generate_series(1, 10) g"))
            await conn.execute(text(
                f"INSERT INTO t_{src}.measurements (device_id, time, type, series, value, unit) "
                f"SELECT 1 + g % 10, '2026-01-01'::timestamptz + g * interval '1 second', 'climate', 'temperature', "
                f"g * 0.01, 'C' FROM generate_series(1, :n) g"), {"n": rows})
            await conn.commit()
            await conn.exec_driver_sql(f"ANALYZE t_{src}.measurements")
        device_ids = tuple(range(1, 11))
        inventory = copying.CopySpec(source_tenant=src, target_tenant=dst, device_ids=device_ids)
        await copying.run_copy(b.platform.db.app, inventory, source_scope=Scope(), actor=SYSTEM)
        data = copying.CopySpec(source_tenant=src, target_tenant=dst, device_ids=device_ids, include=("MEASUREMENTS",))

        async def clear() -> None:
            async with owner.connect() as conn:
                await conn.exec_driver_sql(f"TRUNCATE t_{dst}.measurements")
                await conn.commit()

        async def raw() -> float:
            start = time.perf_counter()
            async with owner.connect() as conn:
                await conn.execute(text(
                    f"INSERT INTO t_{dst}.measurements (device_id, time, type, series, value, unit) "
                    f"SELECT p.target_id, m.time, m.type, m.series, m.value, m.unit FROM t_{src}.measurements m "
                    f"JOIN t_{dst}.provenance p ON p.source_tenant = :s AND p.kind = 'device' "
                    f"AND p.source_id = m.device_id"), {"s": src})
                await conn.commit()
            return time.perf_counter() - start

        async def copy() -> float:
            start = time.perf_counter()
            counts = await copying.run_copy(b.platform.db.app, data, source_scope=Scope(), actor=SYSTEM)
            assert counts.measurements == rows, counts
            return time.perf_counter() - start

        raw_times, copy_times = [], []
        for _ in range(2):  # alternating, so drift hits both alike
            await clear()
            raw_times.append(await raw())
            await clear()
            copy_times.append(await copy())
        await clear()

    r, c = median(raw_times), median(copy_times)
    print(f"raw INSERT...SELECT across schemas: {rows / r:,.0f} rows/s ({r:.2f} s for {rows:,})")
    print(f"copyData (COPY out/in, role switching): {rows / c:,.0f} rows/s ({c:.2f} s)")
    print(f"copyData/raw: {r / c:.2f}x   (goal >= 0.8x and >= 100,000 rows/s)")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
