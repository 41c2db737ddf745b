"""Concurrent load: GraphQL `device(id)` under wrk with many keep-alive connections, default settings.

    python -m bench.concurrency [SECONDS]

uvicorn serves the real app (default pool: 10 + 5 connections) on 127.0.0.1; wrk sends
`device(id)` rotating over four tenants, at 32 and then 64 connections, for SECONDS each
(default 8, several times the registry cache's 1 s lifetime). Baseline, same run: the plain
Starlette endpoint of bench/routing.py (the same routed SELECT on the same pool, orjson) at 32
connections. Printed per run: requests/s and the ratio to plain, the slowest 250 ms window as
a share of the average (0 means the server stalled), answers that were not 200 or carried
INTERNAL, and this process's CPU per request (PostgreSQL's is not included). Sequential
benchmarks hide the CPU a request costs; here every request competes for the same core.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from bench.common import ADMIN_EMAIL, ADMIN_PASSWORD, bench_platform, served
from bench.routing import DEVICE, plain_routes

WINDOW = 0.25

LUA = """
local requests, n = {}, 0
%(requests)s
local counters = {}
function setup(thread) table.insert(counters, thread) end
function init(args) internal = 0; failed = 0; errors = 0 end
request = function()
  n = n + 1
  local r = requests[(n %% #requests) + 1]
  return wrk.format(r[1], r[2], r[3], r[4])
end
response = function(status, headers, body)
  if status ~= 200 then failed = failed + 1 end
  if string.find(body, '"INTERNAL"', 1, true) then internal = internal + 1 end
  if string.find(body, '"errors"', 1, true) then errors = errors + 1 end
end
done = function(summary, latency, requests)
  local i, f, e = 0, 0, 0
  for _, t in ipairs(counters) do i = i + t:get("internal"); f = f + t:get("failed"); e = e + t:get("errors") end
  io.write(string.format("TENANTRY internal=%%d failed=%%d errors=%%d\\n", i, f, e))
end
"""


class Completions:
    """ASGI wrapper recording when each response finished (for the per-window throughput)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.times: list[float] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            self.times.append(time.monotonic())


def _lua_string(value: str) -> str:
    return "[==[" + value + "]==]"


Request = tuple[str, str, dict[str, str], str | None]  # method, path, headers, body


def _script(requests: list[Request]) -> str:
    lines = []
    for method, path, headers, body in requests:
        header_table = "{" + ", ".join(f"[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items()) + "}"
        lua_body = _lua_string(body) if body is not None else "nil"
        lines.append(f"table.insert(requests, {{{_lua_string(method)}, {_lua_string(path)}, {header_table}, "
                     f"{lua_body}}})")
    return LUA % {"requests": "\n".join(lines)}


async def _wrk(port: int, script: str, connections: int, seconds: float) -> dict[str, Any]:
    """wrk's requests/s, its latency percentiles (p50…p99, seconds) and the script's counters."""
    path = Path(tempfile.mkdtemp(prefix="wrk-")) / "load.lua"
    path.write_text(script)
    try:
        proc = await asyncio.create_subprocess_exec(
            "wrk", "-t2", "--latency", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "40s", "-s", str(path),
            f"http://127.0.0.1:{port}/", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    text = out.decode()
    result: dict[str, Any] = {"raw": text + err.decode()}
    for line in text.splitlines():
        if line.startswith("Requests/sec:"):
            result["rps"] = float(line.split()[1])
        if line.startswith("TENANTRY"):
            result |= {k: int(v) for k, v in (p.split("=") for p in line.split()[1:])}
        parts = line.split()
        if len(parts) == 2 and parts[0] in {"50%", "75%", "90%", "99%"}:
            result["p" + parts[0][:-1]] = _seconds(parts[1])
        if "requests in" in line:
            result["requests"] = int(line.split()[0])
    if "internal" not in result:  # the script did not run: these numbers would measure errors
        sys.exit("wrk's script failed:\n" + result["raw"])
    return result


def _seconds(value: str) -> float:
    for unit, scale in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0), ("m", 60.0)):
        if value.endswith(unit):
            return float(value[:-len(unit)]) * scale
    return float(value)


async def main(seconds: float) -> None:
    if shutil.which("wrk") is None:
        sys.exit("bench.concurrency needs wrk (apt-get install wrk)")
    async with bench_platform(plain_routes) as b:
        token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, "management")
        graphql: list[Request] = []
        plain: list[Request] = []
        for i in range(4):
            created = await b.gql(f'mutation {{ createSubtenant(input: {{domain: "load{i}", company: "L", '
                                  f'adminEmail: "{ADMIN_EMAIL}"}}) {{ id }} }}', token=token, tenant="management")
            tenant = created["createSubtenant"]["id"]
            tenant_token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, tenant)
            device = (await b.gql('mutation { createDevice(input: {name: "bench", type: "t", fragments: {a: 1}}) '
                                  "{ id } }", token=tenant_token, tenant=tenant))["createDevice"]["id"]
            headers: dict[str, str] = {"Authorization": f"Bearer {tenant_token}", "X-Tenant-ID": tenant,
                       "Content-Type": "application/json", "Accept": "application/graphql-response+json"}
            body = orjson.dumps({"query": DEVICE, "variables": {"id": device}}).decode()
            graphql.append(("POST", "/graphql", headers, body))
            plain.append(("GET", f"/plain/device/{device}", {"X-Tenant-ID": tenant}, None))

        app = Completions(b.app)
        results = {}
        async with served(app) as port:
            await _wrk(port, _script(graphql), 32, 2)  # warm-up: pool connections, caches
            for name, script, connections in (("plain", plain, 32), ("graphql-32", graphql, 32),
                                              ("graphql-64", graphql, 64)):
                app.times.clear()
                cpu = resource.getrusage(resource.RUSAGE_SELF)
                start = time.monotonic()
                result = await _wrk(port, _script(script), connections, seconds)
                used = resource.getrusage(resource.RUSAGE_SELF)
                result["cpu_ms"] = ((used.ru_utime - cpu.ru_utime) + (used.ru_stime - cpu.ru_stime)) * 1e3
                windows = Counter(int((t - start) / WINDOW) for t in app.times if t - start < seconds)
                counts = [windows[w] for w in range(int(seconds / WINDOW))]
                result["min_window_share"] = min(counts) / (sum(counts) / len(counts)) if sum(counts) else 0.0
                results[name] = result

    if "-v" in sys.argv:
        for r in results.values():
            print(r["raw"])
    base = results["plain"]["rps"]
    for name, r in results.items():
        answered = r.get("requests", 0) or 1
        print(f"{name:11s} {r.get('rps', 0):7.0f} req/s  {r.get('rps', 0) / base:4.2f}x plain  "
              f"slowest {WINDOW * 1000:.0f} ms window {r['min_window_share']:4.2f} of average  "
              f"not-200 {r.get('failed', '?')}  INTERNAL {r.get('internal', '?')}  "
              f"server CPU {r['cpu_ms'] / answered:.2f} ms/request")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "-v"]
    asyncio.run(main(float(args[0]) if args else 8.0))
