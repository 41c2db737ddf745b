"""Realtime: many alarm dashboards on push (subscriptions) against the same dashboards polling.

    python -m bench.realtime [--subscribers 1000] [--tenants 100] [--rate 1000] [--seconds 10]

One run, one machine: an embedded PostgreSQL, `tenantry serve` in its own process (one worker),
TENANTS tenants with one device each, SUBSCRIBERS WebSocket connections (graphql-transport-ws),
spread evenly over the tenants, each subscribed to `alarms { kind alarm { id type … } }`.
A writer raises RATE alarms a second, round-robin over the tenants, for SECONDS: every 10 ms one
round trip runs the tick's alarms, each in its tenant's role and appended to its change log as the app
appends it (app.runtime.announcements: in the writing transaction), then COMMIT. Printed:
- delivery latency from COMMIT returning in the writer to the message parsed in the client
  (p50/p99/max), events raised and messages delivered a second, messages lost;
- server memory per idle subscription (RSS after the subscribers connected, minus before, / N)
  and the server's CPU a delivered message;
- the polling baseline, in the same run: `alarms(filter: {status: [ACTIVE]}, first: 20)` under
  wrk (32 keep-alive connections), its server CPU a request, and what SUBSCRIBERS dashboards
  polling every second would cost (requests/s and cores) against what push cost.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import httpx
import orjson
import psutil
import websockets
from websockets.asyncio.client import ClientConnection

from app.access.acting import tenant_switch
from app.db.notify import wake_sql
from app.services.data import alarms as alarm_service
from bench.common import ADMIN_EMAIL, ADMIN_PASSWORD, bench_platform, local_id, pct
from bench.concurrency import Request as WrkRequest
from bench.concurrency import _script, _wrk
from bench.peer import _pg_cpu, _pg_delta

ALARMS = "subscription { alarms { kind alarm { id type deviceId severity count status } } }"
COLUMNS = ", ".join(c.name for c in alarm_service.COLUMNS)  # the record the app announces
POLL = "{ alarms(filter: {status: [ACTIVE]}, first: 20) { edges { node { id type deviceId severity count status } } } }"


def _tick_sql(batch: list[tuple[str, int, int]]) -> str:
    """One round trip: each alarm inserted under its tenant's role and appended to the tenant's change
    log as app.runtime.announcements appends it (the record, at the next position under the head's
    row lock), the tenants' readers woken, then COMMIT."""
    steps = ["BEGIN"]
    for tenant, device, seq in batch:
        steps.append(tenant_switch(tenant))
        steps.append(
            f"WITH a AS (INSERT INTO alarms (device_id, type, severity, text) VALUES ({device}, 'b{seq}', 'MAJOR', "
            f"'bench') RETURNING {COLUMNS}), h AS (UPDATE change_head SET last = last + 1 WHERE id = 1 RETURNING last) "
            f"INSERT INTO changes (position, logged_at, kind, op, device_id, body) "
            f"SELECT h.last, clock_timestamp(), 'alarm', 'RAISED', a.device_id, to_jsonb(a) FROM a, h")
    steps.append(wake_sql(t for t, _d, _s in batch))
    steps.append("COMMIT")
    return "; ".join(steps)


class Subscriber:
    def __init__(self, ws: ClientConnection, commits: dict[int, float], latencies: list[float],
                 seqs: list[int]) -> None:
        self.ws = ws
        self.commits = commits
        # Floats and ints in plain lists: nothing for this process's garbage collector to traverse
        # (a list of 100,000 tuples made it pause its own clients for 100-400 ms).
        self.latencies = latencies
        self.seqs = seqs
        self.received = 0

    async def run(self) -> None:
        async for raw in self.ws:
            now = time.time()
            message = orjson.loads(raw)
            if message.get("type") != "next":
                continue
            seq = int(message["payload"]["data"]["alarms"]["alarm"]["type"][1:])
            committed = self.commits.get(seq)
            if committed is not None:
                self.latencies.append(now - committed)
                self.seqs.append(seq)
            self.received += 1


async def _subscribe(port: int, token: str, tenant: str) -> ClientConnection:
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/graphql", subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                                  max_queue=None, ping_interval=None)
    await ws.send(orjson.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}",
                                                                        "X-Tenant-ID": tenant}}).decode())
    ack = orjson.loads(await ws.recv())
    if ack.get("type") != "connection_ack":
        raise SystemExit(f"not acknowledged: {ack}")
    await ws.send(orjson.dumps({"id": "1", "type": "subscribe", "payload": {"query": ALARMS}}).decode())
    return ws


def _own_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def _tree(pid: int) -> list[psutil.Process]:
    """The server and its worker processes (`--workers N`)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _rss(pid: int) -> int:
    return sum(int(p.memory_info().rss) for p in _tree(pid))


def _cpu(pid: int) -> float:
    return sum(float(t.user + t.system) for t in (p.cpu_times() for p in _tree(pid)))


async def main(subscribers: int, tenants: int, rate: int, seconds: float, workers: int) -> None:
    async with bench_platform(pool_size=20) as b:
        platform = b.platform
        settings = platform.settings
        operator = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, "management")
        print(f"setting up {tenants} tenants …", flush=True)
        setup: list[tuple[str, str, int]] = []  # (tenant, admin token, device)
        for i in range(tenants):
            email = f"rt{i}@bench.test"
            made = await b.gql("mutation($d: String!, $e: String!) { createSubtenant(input: {domain: $d, company: $d, "
                               "adminEmail: $e, adminPassword: \"bench-password-1\"}) { id } }",
                               {"d": f"rt-{i}", "e": email}, token=operator, tenant="management")
            tenant = made["createSubtenant"]["id"]
            token = await b.token(email, ADMIN_PASSWORD, tenant)
            device = await b.gql('mutation { createDevice(input: {name: "d"}) { id } }', token=token, tenant=tenant)
            setup.append((tenant, token, local_id(device["createDevice"]["id"])))
        url = str(settings.database_url)
        env = {**os.environ, "TENANTRY_DATABASE_URL": url, "TENANTRY_DATA_DIR": str(settings.data_dir),
               "TENANTRY_SECRET_KEY": str(settings.secret_key), "TENANTRY_PORT": "0", "TENANTRY_LOG_LEVEL": "WARNING",
               "TENANTRY_SPARE_SCHEMAS": "0", "TENANTRY_POOL_SIZE": "20",
               "TENANTRY_SUBSCRIPTIONS_PER_TENANT": str(subscribers), "TENANTRY_WORKERS": str(workers)}
        port = _free_port()
        env["TENANTRY_PORT"] = str(port)
        command = [str(Path(sys.executable).parent / "tenantry"), "serve"]
        if os.environ.get("TENANTRY_BENCH_PROFILE"):  # cProfile of the server, written when it stops
            command = [sys.executable, "-m", "cProfile", "-o", os.environ["TENANTRY_BENCH_PROFILE"], *command]
        server = await asyncio.create_subprocess_exec(*command, env=env)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for _ in range(600):
                    try:
                        if (await client.get("/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
            await _measure(port, server.pid, setup, subscribers, rate, seconds, url, settings.resolved_secret_key())
        finally:
            server.terminate()
            await server.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _measure(port: int, pid: int, setup: list[tuple[str, str, int]], subscribers: int, rate: int,
                   seconds: float, database_url: str, secret: str) -> None:
    import psycopg

    # --- the polling baseline ---------------------------------------------------------------------------
    tenant, token, _device = setup[0]
    headers = {"Authorization": f"Bearer {token}", "X-Tenant-ID": tenant, "Content-Type": "application/json",
               "Accept": "application/graphql-response+json"}
    poll: list[WrkRequest] = [("POST", "/graphql", headers, orjson.dumps({"query": POLL}).decode())]
    await _wrk(port, _script(poll), 32, 1)
    cpu0, pg0 = _cpu(pid), _pg_cpu()
    polled = await _wrk(port, _script(poll), 32, 5)
    served = max(1, int(polled.get("requests", 0)))
    poll_cpu = (_cpu(pid) - cpu0) / served
    poll_pg = _pg_delta(pg0) / served

    # --- subscribers ---------------------------------------------------------------------------------
    idle_rss = _rss(pid)
    commits: dict[int, float] = {}
    latencies: list[float] = []  # seconds from an alarm's commit to a client
    seqs: list[int] = []  # which alarm
    connections: list[Subscriber] = []
    gate = asyncio.Semaphore(50)

    async def connect(n: int) -> None:
        tenant, token, _ = setup[n % len(setup)]
        async with gate:
            ws = await _subscribe(port, token, tenant)
        connections.append(Subscriber(ws, commits, latencies, seqs))

    print(f"connecting {subscribers} subscribers …", flush=True)
    await asyncio.gather(*(connect(n) for n in range(subscribers)))
    readers = [asyncio.create_task(s.run()) for s in connections]
    await asyncio.sleep(6.0)  # steady state: every subscribe handled, the server idle, its collector settled (hub)
    gc.collect()
    gc.disable()  # the clients measure the server: their own collector's pauses (100-150 ms) are not its latency
    per_subscription = (_rss(pid) - idle_rss) / subscribers

    # --- push at RATE alarms a second ----------------------------------------------------------------------
    writer = await psycopg.AsyncConnection.connect(database_url.replace("postgresql+psycopg", "postgresql"),
                                                   autocommit=True)
    per_tick = max(1, rate // 100)
    ticks = int(seconds * 100)
    seq = 0
    cpu0, pg0, own0 = _cpu(pid), _pg_cpu(), _own_cpu()
    started = time.perf_counter()
    for tick in range(ticks):
        batch = []
        for _ in range(per_tick):
            tenant, _token, device = setup[seq % len(setup)]
            batch.append((tenant, device, seq))
            seq += 1
        await writer.execute(_tick_sql(batch).encode())
        now = time.time()
        for _t, _d, s in batch:
            commits[s] = now
        delay = started + (tick + 1) / 100 - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    elapsed = time.perf_counter() - started
    expected = seq * (subscribers // len(setup))
    for _ in range(100):  # let the last deliveries arrive
        if sum(s.received for s in connections) >= expected:
            break
        await asyncio.sleep(0.05)
    gc.enable()
    push_cpu = _cpu(pid) - cpu0
    push_pg = _pg_delta(pg0)
    clients_cpu = _own_cpu() - own0
    delivered = sum(c.received for c in connections)
    await writer.close()
    for task in readers:
        task.cancel()
    for subscriber in connections:
        await subscriber.ws.close()

    ms = [x * 1000 for x in latencies]
    later = [x * 1000 for s, x in zip(seqs, latencies, strict=True) if s >= seq // 10]  # after the first tenth
    print(f"\n{subscribers} subscribers over {len(setup)} tenants, {seq} alarms in {elapsed:.1f} s "
          f"({seq / elapsed:.0f} raised/s)")
    print(f"  delivered {delivered} of {expected} messages ({delivered / elapsed:.0f}/s), lost {expected - delivered}")
    if ms:
        print(f"  latency commit→client: p50 {pct(ms, 0.5):.1f} ms, p99 {pct(ms, 0.99):.1f} ms, max {max(ms):.1f} ms; "
              f"after the first tenth of the run: p50 {pct(later, 0.5):.1f} ms, p99 {pct(later, 0.99):.1f} ms")
        worst = sorted(zip(seqs, latencies, strict=True), key=lambda sx: -sx[1])[:3]
        print("  slowest: " + ", ".join(f"alarm {s} ({s * 100 // max(1, seq)} % into the run) {x * 1000:.0f} ms"
                                        for s, x in worst))
    print(f"  server memory per idle subscription: {per_subscription / 1024:.1f} KB")
    print(f"  push: server CPU {push_cpu / elapsed:.2f} cores, PostgreSQL {push_pg / elapsed:.2f} cores "
          f"({push_cpu / max(1, delivered) * 1e6:.0f} us server CPU a delivered message); this process "
          f"(writer and {subscribers} clients) {clients_cpu / elapsed:.2f} cores")
    need = subscribers * (poll_cpu + poll_pg)
    print(f"  polling baseline: {served / 5:.0f} req/s under wrk -c32, server {poll_cpu * 1e3:.2f} ms + PostgreSQL "
          f"{poll_pg * 1e3:.2f} ms CPU a request")
    print(f"  {subscribers} dashboards polling every 1 s: {subscribers} req/s, {need:.2f} cores "
          f"(push above: {(push_cpu + push_pg) / elapsed:.2f} cores at {seq / elapsed:.0f} alarms/s), "
          f"staleness up to 1 s (mean 500 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--rate", type=int, default=1000, help="alarms raised a second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench.realtime needs wrk for its polling baseline (apt-get install wrk)")
    asyncio.run(main(args.subscribers, args.tenants, args.rate, args.seconds, args.workers))
