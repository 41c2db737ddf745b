"""The change log's cost and speed, ratios within one run (the machine is noisy):

    python -m bench.changes [ROUNDS]

- ingest of 1,000-row `createMeasurements` batches with the log vs the same requests with the
  log's append left out (goal >= 0.9x), one at a time and eight in flight;
- single `raiseAlarm` requests, the same way (goal >= 0.85x);
- a subscription resuming 10,000 changes behind: time until it has caught up;
- webhook delivery, commit to a local receiver, p50/p99 at 100 and 1,000 changes/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import uvicorn
from sqlalchemy import text

from app.access.principal import Routed
from app.db.notify import append_sql, wake_sql
from app.realtime import webhooks as dispatch
from app.services import data_plane
from app.services.changes.webhooks import Outbound, webhook_box
from bench.common import ADMIN_EMAIL, ADMIN_PASSWORD, Bench, bench_platform, median, pct

BATCH = 1000
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@contextlib.contextmanager
def log_off() -> Iterator[None]:
    """The same requests without the log's append (what a write cost before the log)."""
    original = data_plane.Plane.announce

    async def nothing(self: data_plane.Plane, *args: Any, **kwargs: Any) -> None:
        return None

    data_plane.Plane.announce = nothing  # type: ignore[method-assign]
    try:
        yield
    finally:
        data_plane.Plane.announce = original  # type: ignore[method-assign]


async def _rate(fn: Callable[[int], Awaitable[None]], ks: list[int], in_flight: int) -> float:
    queue = list(ks)

    async def worker() -> None:
        while queue:
            await fn(queue.pop())

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return len(ks) / (time.perf_counter() - start)


async def _on_off(fn: Callable[[int], Awaitable[None]], rounds: int, per_round: int, in_flight: int) -> float:
    """Requests/s with the log over requests/s without it, alternating rounds."""
    on: list[float] = []
    off: list[float] = []
    k = 0
    for _ in range(rounds):
        on.append(await _rate(fn, list(range(k, k + per_round)), in_flight))
        k += per_round
        with log_off():
            off.append(await _rate(fn, list(range(k, k + per_round)), in_flight))
        k += per_round
    return median(on) / median(off)


async def _setup(b: Bench) -> tuple[str, str, list[str]]:
    token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, "management")
    created = await b.gql('mutation { createSubtenant(input: {domain: "changes", company: "C", adminEmail: "'
                          + ADMIN_EMAIL + '"}) { id } }', token=token, tenant="management")
    tenant_id = created["createSubtenant"]["id"]
    tenant_token = await b.token(ADMIN_EMAIL, ADMIN_PASSWORD, tenant_id)
    devices = [(await b.gql('mutation { createDevice(input: {name: "m"}) { id } }', token=tenant_token,
                            tenant=tenant_id))["createDevice"]["id"] for _ in range(10)]
    return tenant_id, tenant_token, devices


async def _writes(b: Bench, tenant_id: str, token: str, devices: list[str], rounds: int) -> None:
    headers = {"authorization": f"Bearer {token}", "x-tenant-id": tenant_id,
               "accept": "application/graphql-response+json", "content-type": "application/json"}
    ingest = "mutation($m: [MeasurementInput!]!) { createMeasurements(input: $m) }"

    async def batch(k: int) -> None:
        rows = [{"deviceId": devices[i % 10], "time": (T0 + timedelta(seconds=k * BATCH + i)).isoformat(),
                 "type": "c", "series": "t", "value": 20.0, "unit": "C"} for i in range(BATCH)]
        response = await b.client.post("/graphql", content=orjson.dumps({"query": ingest, "variables": {"m": rows}}),
                                       headers=headers)
        assert b'"createMeasurements":1000' in response.content, response.text

    alarm = orjson.dumps({"query": 'mutation($d: ID!) { raiseAlarm(input: {deviceId: $d, type: "x", '
                                   'severity: MINOR, text: "t"}) { id } }', "variables": {"d": devices[0]}})

    async def raise_one(k: int) -> None:
        response = await b.client.post("/graphql", content=alarm, headers=headers)
        assert b'"raiseAlarm"' in response.content, response.text

    await batch(10_000_000)
    for name, fn, per_round in (("ingest of 1,000-row batches", batch, 6), ("single alarms", raise_one, 60)):
        seq = await _on_off(fn, rounds, per_round, 1)
        par = await _on_off(fn, rounds, per_round, 8)
        print(f"{name}: log on / off = {seq:.2f}x one at a time, {par:.2f}x eight in flight")


def _alarm_entries(device: int, n: int) -> list[str]:
    now = datetime.now(UTC).isoformat()
    body = {"id": 1, "device_id": device, "type": "x", "severity": "MINOR", "status": "ACTIVE", "text": "t",
            "count": 1, "first_raised_at": now, "last_raised_at": now, "updated_at": now}
    return [orjson.dumps({"k": "alarm", "o": "RAISED", "d": device, "b": {**body, "id": i}}).decode()
            for i in range(n)]


async def _append(b: Bench, tenant_id: str, entries: list[str]) -> None:
    async with b.platform.db.owner.connect() as conn:
        await conn.exec_driver_sql("BEGIN")
        for statement in append_sql(tenant_id, entries):
            await conn.exec_driver_sql(statement.replace("%", "%%"))
        await conn.exec_driver_sql(wake_sql([tenant_id]))
        await conn.exec_driver_sql("COMMIT")


async def _resume(b: Bench, tenant_id: str, token: str, device: int) -> None:
    hub = b.app.state.realtime
    hub.start()
    routed, expires = await b.platform.gate.recheck(authorization=f"Bearer {token}", tenant_header=tenant_id)
    assert isinstance(routed, Routed)
    async with b.platform.db.owner.connect() as conn:
        start = int((await conn.execute(text(f"SELECT last FROM t_{tenant_id}.change_head"))).scalar_one())
    for _ in range(10):
        await _append(b, tenant_id, _alarm_entries(device, 1000))
    session = hub.session(authorization=f"Bearer {token}", tenant_header=tenant_id, routed=routed,
                          expires_at=expires, on_end=lambda reason: None)
    began = time.perf_counter()
    subscription = await session.open("1", kind="alarm", needs=(), data=True, select=lambda d: d,
                                      after=f"{tenant_id}:{start}")
    for _ in range(10_000):
        await subscription.__anext__()
    spent = time.perf_counter() - began
    session.end("done")
    print(f"resume 10,000 changes behind: caught up in {spent:.2f} s ({10_000 / spent:,.0f} changes/s)")


class _Receiver:
    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = dict(scope["headers"])
        self.arrived.setdefault(headers[b"webhook-id"].decode(), time.perf_counter())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def _webhooks(b: Bench, tenant_id: str, token: str, device: int) -> None:
    receiver = _Receiver()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(receiver, lifespan="off", log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    s = b.platform.settings
    dispatcher = dispatch.Dispatcher(engine=b.platform.db.app, box=webhook_box(s.resolved_secret_key()),
                                     outbound=Outbound.of(["127.0.0.0/8"]), timeout=5.0, retry_hours=24)
    hub = b.app.state.realtime
    hub.on_change.append(dispatcher.wake)
    hub.start()
    running = asyncio.create_task(dispatcher.run())
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    with _allow_loopback(b):
        await b.gql('mutation($u: String!) { createWebhook(input: {url: $u, types: [ALARM]}) { secret } }',
                    {"u": url}, token=token, tenant=tenant_id)
    for rate in (100, 1000):
        committed: dict[str, float] = {}
        async with b.platform.db.owner.connect() as conn:
            head = int((await conn.execute(text(f"SELECT last FROM t_{tenant_id}.change_head"))).scalar_one())
        n, per_tick = rate * 5, max(1, rate // 50)  # five seconds, in ticks of 20 ms
        for tick in range(n // per_tick):
            began = time.perf_counter()
            await _append(b, tenant_id, _alarm_entries(device, per_tick))
            now = time.perf_counter()
            for i in range(per_tick):
                committed[f"{tenant_id}:{head + tick * per_tick + i + 1}"] = now
            await asyncio.sleep(max(0.0, 0.02 - (time.perf_counter() - began)))
        for _ in range(600):
            if all(k in receiver.arrived for k in committed):
                break
            await asyncio.sleep(0.05)
        latencies = [(receiver.arrived[k] - t) * 1000 for k, t in committed.items() if k in receiver.arrived]
        print(f"webhooks at {rate}/s: {len(latencies)}/{len(committed)} delivered, commit to receiver p50 "
              f"{pct(latencies, 0.5):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms")
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    server.should_exit = True
    await serving


@contextlib.contextmanager
def _allow_loopback(b: Bench) -> Iterator[None]:
    """The bench's receiver is on loopback: allowed for the createWebhook call, as an operator would."""
    from app.graphql.types import changes as graphql_changes
    original = graphql_changes.outbound
    graphql_changes.outbound = lambda settings: Outbound.of(["127.0.0.0/8"])
    try:
        yield
    finally:
        graphql_changes.outbound = original


async def main(rounds: int) -> None:
    async with bench_platform(pool_size=16) as b:
        tenant_id, token, devices = await _setup(b)
        from bench.common import local_id
        device = local_id(devices[0])
        await _writes(b, tenant_id, token, devices, rounds)
        await _resume(b, tenant_id, token, device)
        await _webhooks(b, tenant_id, token, device)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
