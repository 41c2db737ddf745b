"""Isolation of capacity: another tenant's p99 while one tenant's table is locked.

    python -m bench.capacity [SECONDS]

uvicorn serves the real app (default settings: pool 10 + 5, 13 in-flight slots, a third of them
per tenant, lock_timeout 3 s) on 127.0.0.1. wrk drives `devices { totalCount }` for tenant B at
4 keep-alive connections for SECONDS (default 8): first alone (the baseline, same run), then
while another session holds ACCESS EXCLUSIVE on tenant A's devices table and 20 more connections
send A's requests. The same pair runs again with per-tenant shares and timeouts off (what the
server did before them). Printed: B's p99 and its ratio to idle (goal: at most 2x), B's answers
that were not 200, and what A was told.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from typing import Any

import orjson
import psycopg

from app.db.naming import tenant_schema
from bench.common import ADMIN_EMAIL, ADMIN_PASSWORD, bench_platform, served
from bench.concurrency import Request, _script, _wrk

COUNT = orjson.dumps({"query": "{ devices { totalCount } }"}).decode()


async def _tenant(b: Any, token: str, domain: str) -> tuple[str, list[Request]]:
    created = await b.gql(f'mutation {{ createSubtenant(input: {{domain: "{domain}", company: "C", '
                          f'adminEmail: "{ADMIN_EMAIL}"}}) {{ id }} }}', token=token, tenant="management")
    tenant = created["createSubtenant"]["id"]
    tenant_token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, tenant)
    headers = {"Authorization": f"Bearer {tenant_token}", "X-Tenant-ID": tenant,
               "Content-Type": "application/json", "Accept": "application/graphql-response+json"}
    return tenant, [("POST", "/graphql", headers, COUNT)]


async def main(seconds: float) -> None:
    if shutil.which("wrk") is None:
        sys.exit("bench.capacity needs wrk (apt-get install wrk)")
    async with bench_platform() as b:
        token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, "management")
        stuck, stuck_requests = await _tenant(b, token, "stuck")
        _, other_requests = await _tenant(b, token, "other")
        gate = b.platform.gate
        shares = {"on": (gate.in_flight.share, gate.limits), "off": (gate.in_flight.limit, "")}
        url = str(b.platform.settings.database_url).replace("+psycopg", "", 1)
        rows = []
        flood_rows = []
        async with served(b.app) as port:
            await _wrk(port, _script(other_requests), 4, 2)  # warm-up: pool connections, caches
            for mode, (share, limits) in shares.items():
                gate.in_flight.share, gate.limits = share, limits
                idle = await _wrk(port, _script(other_requests), 4, seconds)
                async with await psycopg.AsyncConnection.connect(url) as lock:
                    await lock.execute(f"LOCK TABLE {tenant_schema(stuck)}.devices IN ACCESS EXCLUSIVE MODE")
                    busy, told = await asyncio.gather(_wrk(port, _script(other_requests), 4, seconds),
                                                      _wrk(port, _script(stuck_requests), 20, seconds))
                    await lock.rollback()
                await asyncio.sleep(1)  # A's last requests drain before the next run
                rows.append((mode, idle, busy, told))
            gate.in_flight.share, gate.limits = shares["on"]
            limiter, settings = gate.rate_limiter, b.platform.settings
            for mode, rate, cap in (("on", limiter.anonymous_rate, settings.max_anonymous_document_bytes),
                                    ("off", 0.0, 0)):
                limiter.anonymous_rate = rate
                b.platform.settings = settings.with_(max_anonymous_document_bytes=cap)
                idle = await _wrk(port, _script(other_requests), 4, seconds)
                busy, flood = await asyncio.gather(_wrk(port, _script(other_requests), 4, seconds),
                                                   _wrk(port, _script(_junk(mode)), 8, seconds))
                flood_rows.append((mode, idle, busy, flood))
            b.platform.settings = settings
    for mode, idle, busy, told in rows:
        print(f"shares+timeouts {mode:3s}  B p99 idle {idle['p99'] * 1e3:7.1f} ms  beside locked A "
              f"{busy['p99'] * 1e3:7.1f} ms  {busy['p99'] / idle['p99']:5.2f}x idle  B not-200 {busy['failed']} "
              f"of {busy['requests']}  A not-200 {told['failed']} of {told['requests']}")

    for mode, idle, busy, flood in flood_rows:
        print(f"anonymous limit {mode:3s}  B {idle['rps']:6.0f} req/s alone, {busy['rps']:6.0f} beside 8 anonymous "
              f"connections sending 95 KB documents that do not parse ({busy['rps'] / idle['rps']:4.2f}x); "
              f"B p99 {idle['p99'] * 1e3:.1f} -> {busy['p99'] * 1e3:.1f} ms; the flood got {flood['requests']} answers")


def _junk(tag: str) -> list[Request]:
    """Anonymous requests, each a different document of 95 KB (under the size limit) that fails to
    parse at the token limit: what parsing costs when nothing refuses them earlier. New ones for
    each run, so none is answered from the parse cache."""
    headers = {"Content-Type": "application/json", "Accept": "application/graphql-response+json"}
    return [("POST", "/graphql", headers, orjson.dumps(
        {"query": "{ " + " ".join(f"{tag}_{n}_field_number_{i:05d}" for i in range(3300)) + " }}"}).decode())
        for n in range(150)]


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 8.0))
