"""Many tenants on one server: what grows with N, and how fast `tenantry migrate` rolls out.

    python -m bench.scale [N] [--parallel K]

One embedded PostgreSQL. N tenants are provisioned in-process through GraphQL (`createSubtenant`, no spare
pool: every tenant pays its DDL, the worst case), and printed:
- provisioning time a tenant: p50/p95 of each tenth of the run, so growth with N shows (issue 14: 29 ms at
  the start and 238 ms at 10,000 before provisioning stopped granting ON ALL TABLES);
- the database's size and catalog rows per tenant (`pg_class`, `pg_attribute`);
- a new tenant migration (a column and an index, written into a scratch copy of the migration chains)
  applied by `tenantry migrate` to all N: total time, tenants a second, and the longest one tenant's
  transaction took (its lock time: what a request to it could wait);
- a usage snapshot of all tenants, `tenants list` (the registry query), and a routed read in each of 1,000
  tenants through one pooled connection: PostgreSQL backend memory before and after (catalog caches grow
  with every tenant schema a connection touches), and this process's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import psutil
from sqlalchemy import select, text

from app.access.acting import tenant_switch
from app.db.engines import make_engine
from app.db.transaction import SCHEMAS_PER_CONNECTION, is_citus
from app.models.management import tenants
from app.services.tenants.provisioning import fill_spares
from app.services.usage.statistics import take_snapshots
from app.tenancy import alembic_chains
from app.tenancy.migrate import migrate_tenants
from bench.common import ADMIN_EMAIL, ADMIN_PASSWORD, bench_platform, median, pct

RUN = secrets.token_hex(3)  # domains stay unique on a server kept between runs (TENANTRY_BENCH_DATABASE_URL)
CREATE = "mutation($i: CreateSubtenantInput!) { createSubtenant(input: $i) { id } }"
NEW_MIGRATION = '''"""Bench only: a column and an index, as a typical expand step.

Revision ID: bench_scale
Revises: {down}
"""
from alembic import op
import sqlalchemy as sa

revision = "bench_scale"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("bench_note", sa.Text()))
    op.create_index("devices_bench_note_idx", "devices", ["bench_note"])


def downgrade() -> None:
    op.drop_index("devices_bench_note_idx", "devices")
    op.drop_column("devices", "bench_note")
'''


def _postgres_rss() -> dict[int, int]:
    out = {}
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in {"postgres", "postmaster"}:
            try:
                out[proc.pid] = proc.memory_full_info().uss
            except psutil.Error:
                continue
    return out


async def main(n: int, parallel: int) -> None:
    async with bench_platform(spare_schemas=0, pool_size=4) as b:
        platform = b.platform
        token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, "management")
        samples: list[float] = []
        started = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            await b.gql(CREATE, {"i": {"domain": f"scale-{RUN}-{i}", "company": f"Scale {i}",
                                       "adminEmail": ADMIN_EMAIL}}, token=token, tenant="management")
            samples.append(time.perf_counter() - t0)
            if (i + 1) % max(1, n // 10) == 0:
                print(f"  {i + 1} tenants, {time.perf_counter() - started:.0f} s", flush=True)
        tenth = max(1, n // 10)
        print(f"\nprovisioning {n} tenants (GraphQL createSubtenant, no spare pool), per tenth of the run:")
        for k in range(0, n, tenth):
            part = samples[k:k + tenth]
            print(f"  tenants {k + 1}-{k + len(part)}: p50 {median(part) * 1000:.1f} ms, "
                  f"p95 {pct(part, 0.95) * 1000:.1f} ms")

        async with platform.db.owner.connect() as conn:
            size = (await conn.execute(text("SELECT pg_database_size(current_database())"))).scalar_one()
            classes = (await conn.execute(text("SELECT count(*) FROM pg_class"))).scalar_one()
            attributes = (await conn.execute(text("SELECT count(*) FROM pg_attribute"))).scalar_one()
            kinds = (await conn.execute(text(
                "SELECT c.relkind, count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 't_management' OR c.oid IN (SELECT reltoastrelid FROM pg_class t "
                "JOIN pg_namespace tn ON tn.oid = t.relnamespace WHERE tn.nspname = 't_management') "
                "OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid IN (SELECT reltoastrelid FROM pg_class t "
                "JOIN pg_namespace tn ON tn.oid = t.relnamespace WHERE tn.nspname = 't_management')) "
                "GROUP BY 1 ORDER BY 1"))).all()
        print(f"database {size / 2**20:.0f} MB: {size / n / 1024:.0f} KB, {classes / n:.0f} pg_class rows and "
              f"{attributes / n:.0f} pg_attribute rows a tenant")
        names = {"r": "tables", "i": "indexes", "S": "sequences", "t": "TOAST tables"}
        print("  one tenant schema's relations: " + ", ".join(f"{c} {names.get(k, k)}" for k, c in kinds))

        # The normal path at N: the server's warm pool of spares. Meanwhile four clients read in 100
        # tenants: every role change makes each backend rebuild the app role's membership list at its
        # next SET ROLE (O(tenants)), so what provisioning does to roles shows in their latency.
        async with platform.db.owner.connect() as conn:
            readable = list((await conn.execute(text(
                "SELECT id FROM tenantry.tenants WHERE id <> 'management' LIMIT 100"))).scalars())

        async def reads_during(work: Callable[[], Awaitable[object]]) -> list[float]:
            stop, latencies = asyncio.Event(), []

            async def reader(k: int) -> None:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    await b.gql("{ devices { totalCount } }", token=token, tenant=readable[k % len(readable)])
                    latencies.append(time.perf_counter() - t0)
                    k += 4

            readers = [asyncio.create_task(reader(k)) for k in range(4)]
            await work()
            stop.set()
            await asyncio.gather(*readers)
            return latencies

        def refill() -> Awaitable[int]:
            return fill_spares(platform.db.owner, count=30, app_role=platform.settings.app_role,
                               tenant_roles_login=platform.settings.tenant_roles_login)

        made = iter(range(10**6))

        async def creates(samples: list[float]) -> None:
            for i in range(30):
                t0 = time.perf_counter()
                await b.gql(CREATE, {"i": {"domain": f"warm-{RUN}-{next(made)}", "company": f"Warm {i}",
                                           "adminEmail": ADMIN_EMAIL}}, token=token, tenant="management")
                samples.append(time.perf_counter() - t0)

        warm: list[float] = []
        await refill()
        await creates(warm)
        print(f"provisioning at {n} tenants from the warm pool (30 spares): p50 {median(warm) * 1000:.1f} ms, "
              f"p95 {pct(warm, 0.95) * 1000:.1f} ms")
        await refill()
        async def role_changes() -> None:
            """What taking a spare did before spares carried their tenant's id: a role renamed (here a
            throwaway role created and dropped), 30 times, 20 ms apart."""
            for _ in range(30):
                async with platform.db.owner.begin() as conn:
                    await conn.exec_driver_sql("CREATE ROLE bench_scale_probe NOLOGIN")
                async with platform.db.owner.begin() as conn:
                    await conn.exec_driver_sql("DROP ROLE bench_scale_probe")
                await asyncio.sleep(0.02)

        phases = {"idle": lambda: asyncio.sleep(3), "30 creates from the pool": lambda: creates([]),
                  "the keeper building 30 spares": refill, "30 role changes elsewhere": role_changes}
        for name, work in phases.items():
            seen = await reads_during(work)
            print(f"  reads in 100 tenants (4 clients) during {name}: p50 {median(seen) * 1000:.1f} ms, "
                  f"p99 {pct(seen, 0.99) * 1000:.1f} ms, max {max(seen) * 1000:.0f} ms ({len(seen)} reads)")

        # --- a new migration over every tenant -----------------------------------------------------------
        scratch = Path(tempfile.mkdtemp(prefix="tnt-chains-"))
        original = alembic_chains.MIGRATIONS_DIR
        try:
            shutil.copytree(original, scratch / "migrations")
            head = alembic_chains.head_revision("tenant")
            (scratch / "migrations" / "tenant" / "versions" / "bench_scale.py").write_text(
                NEW_MIGRATION.format(down=head))
            alembic_chains.MIGRATIONS_DIR = scratch / "migrations"
            durations: list[float] = []
            done = 0
            t0 = time.perf_counter()
            last = t0

            def progress(tenant_id: str, error: str | None) -> None:
                nonlocal done, last
                done += 1
                now = time.perf_counter()
                durations.append(now - last)
                last = now

            report = await migrate_tenants(platform.db.owner, app_role=platform.settings.app_role,
                                           parallel=parallel, progress=progress)
            took = time.perf_counter() - t0
        finally:
            alembic_chains.MIGRATIONS_DIR = original
            shutil.rmtree(scratch, ignore_errors=True)
        print(f"migrate (add a column and an index) over {len(report.migrated)} tenants, --parallel {parallel}: "
              f"{took:.1f} s, {len(report.migrated) / took:.0f} tenants/s, {len(report.failed)} failed")
        per_tenant = [d * parallel for d in durations[1:]]  # time between completions x workers ≈ one's transaction
        if per_tenant:
            print(f"  one tenant's transaction ≈ p50 {median(per_tenant) * 1000:.1f} ms, "
                  f"p99 {pct(per_tenant, 0.99) * 1000:.1f} ms")

        # --- snapshots, list, memory ---------------------------------------------------------------------------
        t0 = time.perf_counter()
        await take_snapshots(platform.db.app, today=datetime.now(UTC).date())
        print(f"usage snapshot of all tenants: {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        async with platform.db.app.connect() as conn:
            listed = (await conn.execute(select(tenants.c.id, tenants.c.domain, tenants.c.status)
                                         .order_by(tenants.c.id))).all()
        print(f"tenants list ({len(listed)} rows): {(time.perf_counter() - t0) * 1000:.0f} ms")
        if await is_citus(platform.db.app):
            # One coordinator backend acting as 1,000 tenant roles would open 1,000 worker connections.
            print("backend memory per tenant schema: measured on a single server only")
            return
        ids = [r.id for r in listed if r.id != "management"][:1000]
        # One connection, no schema limit: what a backend keeps per tenant schema it worked in.
        single = make_engine(platform.db.app.url.render_as_string(hide_password=False), pool_size=1, max_overflow=0)
        try:
            async with single.connect() as conn:
                pid = (await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
                before = psutil.Process(pid).memory_full_info().uss
                for tenant_id in ids:
                    await conn.exec_driver_sql(f"BEGIN; {tenant_switch(tenant_id)}")
                    await conn.exec_driver_sql("SELECT count(*) FROM devices")
                    await conn.exec_driver_sql("ROLLBACK")
                grown = psutil.Process(pid).memory_full_info().uss - before
        finally:
            await single.dispose()
        limit = platform.settings.schemas_per_connection or SCHEMAS_PER_CONNECTION
        print(f"a backend that read in {len(ids)} tenant schemas grew {grown / 2**20:.1f} MB "
              f"({grown / len(ids) / 1024:.1f} KB a schema): with TENANTRY_SCHEMAS_PER_CONNECTION={limit}, a pooled "
              f"backend stays within about {grown / len(ids) * limit / 2**20:.0f} MB of such caches; this process RSS "
              f"{psutil.Process().memory_info().rss / 2**20:.0f} MB")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", nargs="?", type=int, default=1000, help="tenants (default 1,000; issue 14 asks 10,000)")
    parser.add_argument("--parallel", type=int, default=4, help="tenantry migrate --parallel")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.parallel))
