"""Provisioning latency: N subtenants through GraphQL vs the raw DDL in a transaction.

    python -m bench.provision [N]
    python -m bench.provision --burst 100 [--rounds 3] [--base SPARES]

`--burst B`: a parent's automation onboarding B subtenants back to back while the server's pool keeper
runs (its default pool of TENANTRY_SPARE_SCHEMAS, refilled as spares are taken and sized by recent
demand), ROUNDS bursts a few seconds apart; p50/p99 of each burst, and of the same burst with no pool.

The first admin is an existing user (by email), so the deliberate cost of hashing a new
password is not counted as provisioning. Measured twice: with the server's warm pool of
spare schemas (the normal case: provisioning renames a ready schema and role), and without
(the DDL runs inside the request). The baseline runs the same role/schema/DDL/grant
statements in one owner transaction, without the registry, seed, membership or audit.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import func, select

from app.db.naming import new_tenant_id, tenant_schema
from app.db.transaction import transaction
from app.models.management import spare_schemas
from app.services.tenants.provisioning import fill_spares, keep_spares
from app.tenancy.ddl import tenant_ddl
from app.tenancy.grants import grants_sql
from bench.common import ADMIN_EMAIL, ADMIN_PASSWORD, Bench, bench_platform, median, pct, timed

RUN = secrets.token_hex(3)  # domains stay unique on a server kept between runs (TENANTRY_BENCH_DATABASE_URL)
CREATE = """mutation($i: CreateSubtenantInput!) { createSubtenant(input: $i) { id } }"""


async def creator(b: Bench, label: str) -> Callable[[], Awaitable[None]]:
    """Back-to-back `createSubtenant` as the operator, each a new domain; the first admin is the
    operator (an existing user), so no password is hashed."""
    token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, "management")
    counter = iter(range(10**9))

    async def create() -> None:
        i = next(counter)
        await b.gql(CREATE, {"i": {"domain": f"{label}-{RUN}-{i}", "company": f"{label} {i}",
                                   "adminEmail": ADMIN_EMAIL}}, token=token, tenant="management")

    return create


async def main(n: int) -> None:
    async with bench_platform() as b:
        via_graphql = await creator(b, "bench")

        async def raw_ddl() -> None:
            name = tenant_schema(new_tenant_id())
            async with transaction(b.platform.db.owner) as tx:
                await tx.exec_driver_sql(f"CREATE ROLE {name} NOLOGIN NOINHERIT")
                await tx.exec_driver_sql(f"CREATE SCHEMA {name}")
                await tx.exec_driver_sql(f"SELECT set_config('search_path', '{name}', true)")
                await tx.exec_ddl(tenant_ddl().sql)  # one statement per call on Citus, as provisioning does
                await tx.exec_ddl(grants_sql(name, name, b.platform.settings.app_role))

        await timed(via_graphql, 3)  # warm-up: caches, pools
        await timed(raw_ddl, 3)
        # Cold: no spare schemas, the DDL runs inside the request (interleaved with the raw DDL).
        cold: list[float] = []
        raw_samples: list[float] = []
        for _ in range(5):
            cold += await timed(via_graphql, n // 10)
            raw_samples += await timed(raw_ddl, n // 10)
        # Warm: the server's pool keeper had time to prepare spares; provisioning takes one as it is.
        settings = b.platform.settings
        await fill_spares(b.platform.db.owner, count=n, app_role=settings.app_role,
                          tenant_roles_login=settings.tenant_roles_login)
        warm = await timed(via_graphql, n)

    w50, w95 = median(warm) * 1000, pct(warm, 0.95) * 1000
    c50, c95 = median(cold) * 1000, pct(cold, 0.95) * 1000
    r50 = median(raw_samples) * 1000
    print(f"provision via GraphQL, warm pool ({len(warm)} tenants): p50 {w50:.1f} ms  p95 {w95:.1f} ms"
          "   (goal: p50 <= 30 ms)")
    print(f"provision via GraphQL, no spares ({len(cold)} tenants): p50 {c50:.1f} ms  p95 {c95:.1f} ms")
    print(f"raw DDL in a transaction ({len(raw_samples)} schemas): p50 {r50:.1f} ms")
    print(f"ratio to raw DDL p50: warm {w50 / r50:.2f}x, no spares {c50 / r50:.2f}x")


async def burst(size: int, rounds: int, base: int | None) -> None:
    overrides: dict[str, Any] = {"spare_schemas": base} if base is not None else {}
    async with bench_platform(**overrides) as b:
        settings = b.platform.settings
        create = await creator(b, "burst")

        await timed(create, 3)  # warm-up: caches, pools
        no_pool = await timed(create, size)
        keeper = asyncio.create_task(keep_spares(b.platform.db.owner, count=settings.spare_schemas,
                                                 app_role=settings.app_role,
                                                 tenant_roles_login=settings.tenant_roles_login))
        try:
            await asyncio.sleep(3)  # the keeper fills its base pool, as after a quiet period
            for _ in range(600):  # a big base pool takes longer to fill (Citus: ~0.4 s a spare)
                if await _spares(b) >= settings.spare_schemas:
                    break
                await asyncio.sleep(1)
            print(f"{size} creates back to back, no spare pool: p50 {median(no_pool) * 1000:.1f} ms, "
                  f"p99 {pct(no_pool, 0.99) * 1000:.1f} ms")
            for round_ in range(rounds):
                samples = await timed(create, size)
                print(f"burst {round_ + 1} of {size} with the pool keeper (base {settings.spare_schemas}): "
                      f"p50 {median(samples) * 1000:.1f} ms, p99 {pct(samples, 0.99) * 1000:.1f} ms "
                      "  (goal: p50 <= 30 ms, p99 <= 100 ms)")
                await asyncio.sleep(8)  # the automation's next batch, a few seconds later
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper


async def _spares(b: Bench) -> int:
    async with b.platform.db.owner.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(spare_schemas))).scalar_one())


if __name__ == "__main__":
    if "--burst" in sys.argv:
        at = sys.argv.index("--burst")
        rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3
        base = int(sys.argv[sys.argv.index("--base") + 1]) if "--base" in sys.argv else None
        asyncio.run(burst(int(sys.argv[at + 1]), rounds, base))
    else:
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100))
