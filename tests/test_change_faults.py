"""kill -9 of the server and of PostgreSQL while a subscriber resumes and a webhook receiver counts:
after recovery both hold every committed change exactly once by position, and nothing uncommitted.

Real processes on a data directory of their own (its own embedded PostgreSQL): `tenantry serve`,
killed with SIGKILL and started again; PostgreSQL's postmaster killed with SIGKILL, then brought
back (crash recovery) by the next server start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import websockets

from tests.test_webhooks import receiving

BIN = Path(sys.executable).parent / "tenantry"
ADMIN, PASSWORD = "ops@faults.test", "a-long-operator-passphrase"


def _port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


class Server:
    def __init__(self, tmp: Path) -> None:
        self.port = _port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
        self.env.update({"TENANTRY_DATA_DIR": str(tmp / "data"),
                         "TENANTRY_SECRET_KEY": "fault-secret-key-0123456789abcdef", "TENANTRY_PORT": str(self.port),
                         "TENANTRY_SPARE_SCHEMAS": "0",
                         "TENANTRY_LOG_LEVEL": "ERROR", "TENANTRY_ADMIN_EMAIL": ADMIN,
                         "TENANTRY_ADMIN_PASSWORD": PASSWORD, "TENANTRY_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
                         "TENANTRY_RETENTION_INTERVAL": "0"})
        self.log = (tmp / "server.log").open("ab")
        self.process: asyncio.subprocess.Process | None = None
        self.pgdata = tmp / "data" / "pg"

    async def run(self, *args: str) -> None:
        done = await asyncio.create_subprocess_exec(str(BIN), *args, env=self.env, stdout=self.log, stderr=self.log)
        assert await done.wait() == 0

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(str(BIN), "serve", env=self.env, stdout=self.log,
                                                            stderr=self.log)
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as client:
            for _ in range(600):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise AssertionError("the server did not come up")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    def kill_postgres(self) -> None:
        pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)

    def crash_postgres(self) -> None:
        """Every PostgreSQL process SIGKILLed at once, as a crash of the machine would stop them:
        none writes another byte (killing the postmaster alone, its backends finish what they do)."""
        postmaster = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        children = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _parent(d) == postmaster]
        for pid in [postmaster, *children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        """`serve` killed if it still runs, and its PostgreSQL stopped (SIGQUIT: immediate shutdown).
        A SIGKILLed `serve` never stops the embedded PostgreSQL it started: without this each run
        left two servers behind."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            os.kill(int((self.pgdata / "postmaster.pid").read_text().split()[0]), signal.SIGQUIT)
        self.log.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _parent(proc: Path) -> int | None:
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    made = Server(tmp_path)
    yield made
    made.close()


async def _gql(client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None, *,
               token: str | None = None, tenant: str | None = None) -> Any:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if tenant:
        headers["x-tenant-id"] = tenant
    response = await client.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)
    body = response.json()
    if body.get("errors"):
        raise RuntimeError(body["errors"])
    return body["data"]


async def _log(client: httpx.AsyncClient, token: str, tenant: str) -> tuple[list[str], set[str]]:
    """Every alarm change in the tenant's log (its positions) and the alarm types they carry."""
    entries = await _entries(client, token, tenant)
    return [position for position, _ in entries], {kind for _, kind in entries}


async def _entries(client: httpx.AsyncClient, token: str, tenant: str) -> list[tuple[str, str]]:
    """Every alarm change in the tenant's log: its position and the alarm's type."""
    query = """query($a: ChangePosition) { changes(types: [ALARM], first: 500, after: $a) {
      edges { cursor node { data } } pageInfo { hasNextPage endCursor } } }"""
    out: list[tuple[str, str]] = []
    after = None
    while True:
        page = (await _gql(client, query, {"a": after}, token=token, tenant=tenant))["changes"]
        out += [(e["cursor"], e["node"]["data"]["type"]) for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            return out
        after = page["pageInfo"]["endCursor"]


LOGIN = "mutation($e: String!, $p: String!, $t: ID) { login(email: $e, password: $p, tenantId: $t) { accessToken } }"


async def _subscriber(server: Server, token: str, tenant: str, start: str, seen: list[tuple[str, str]],
                      stop: asyncio.Event) -> None:
    """Subscribes; on any loss reconnects with `after:` the last position it saw. Keeps each event's
    alarm type with its position: a position a crash took back and gave to another change would
    otherwise look the same."""
    query = "subscription($a: ChangePosition) { alarms(after: $a) { position alarm { type } } }"
    while not stop.is_set():
        with contextlib.suppress(OSError, websockets.WebSocketException, TimeoutError, KeyError):
            async with websockets.connect(f"ws://127.0.0.1:{server.port}/graphql",
                                          subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
                await ws.send(orjson.dumps({"type": "connection_init", "payload": {
                    "Authorization": f"Bearer {token}", "X-Tenant-ID": tenant}}).decode())
                await asyncio.wait_for(ws.recv(), 5)
                await ws.send(orjson.dumps({"id": "1", "type": "subscribe", "payload": {
                    "query": query, "variables": {"a": seen[-1][0] if seen else start}}}).decode())
                while not stop.is_set():
                    message = orjson.loads(await asyncio.wait_for(ws.recv(), 1))
                    if message.get("type") == "next":
                        event = message["payload"]["data"]["alarms"]
                        seen.append((event["position"], event["alarm"]["type"]))
        await asyncio.sleep(0.1)


async def _tenant_with_device(client: httpx.AsyncClient, domain: str) -> tuple[str, str, str]:
    """A new subtenant of the operator's, its admin's token and one device in it."""
    operator = (await _gql(client, LOGIN, {"e": ADMIN, "p": PASSWORD, "t": "management"}))["login"]["accessToken"]
    tenant = (await _gql(client, f'mutation {{ createSubtenant(input: {{domain: "{domain}", company: "F", '
                                 f'adminEmail: "{ADMIN}"}}) {{ id }} }}', token=operator,
                         tenant="management"))["createSubtenant"]["id"]
    token = (await _gql(client, LOGIN, {"e": ADMIN, "p": PASSWORD, "t": tenant}))["login"]["accessToken"]
    device = (await _gql(client, 'mutation { createDevice(input: {name: "d"}) { id } }', token=token,
                         tenant=tenant))["createDevice"]["id"]
    return tenant, token, device


async def _drained(server: Server, reading: asyncio.Future[None], stop_reading: asyncio.Event,
                   caught_up: Callable[[], bool]) -> None:
    """Give the readers up to 15 s to catch up, then stop them and the server."""
    for _ in range(300):
        if caught_up():
            break
        await asyncio.sleep(0.05)
    stop_reading.set()
    await reading
    server.kill()
    await server.process.wait()  # type: ignore[union-attr]


async def _writer(server: Server, token: str, tenant: str, device: str, acknowledged: list[str],
                  stop: asyncio.Event, prefix: str = "w") -> None:
    raise_ = 'mutation($d: ID!, $t: String!) { raiseAlarm(input: {deviceId: $d, type: $t, severity: MINOR, ' \
             'text: "x"}) { id } }'
    n = 0
    async with httpx.AsyncClient(base_url=server.url, timeout=3) as client:
        while not stop.is_set():
            n += 1
            with contextlib.suppress(httpx.HTTPError, RuntimeError, ValueError):
                await _gql(client, raise_, {"d": device, "t": f"{prefix}{n}"}, token=token, tenant=tenant)
                acknowledged.append(f"{prefix}{n}")
            await asyncio.sleep(0.01)


async def test_kill_9_of_server_and_postgres_leaves_every_committed_change_once_with_both_readers(
        server: Server) -> None:
    await server.run("migrate")
    await server.run("bootstrap")
    await server.start()
    async with receiving() as (receiver, url), httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        tenant, token, device = await _tenant_with_device(client, "faults")
        await _gql(client, 'mutation($u: String!) { createWebhook(input: {url: $u, types: [ALARM]}) { secret } }',
                   {"u": url}, token=token, tenant=tenant)
        seen: list[tuple[str, str]] = []
        acknowledged: list[str] = []
        stop_writing, stop_reading = asyncio.Event(), asyncio.Event()
        start = (await _gql(client, "{ changes { pageInfo { endCursor } } }", token=token,
                            tenant=tenant))["changes"]["pageInfo"]["endCursor"]  # before any alarm
        reading = asyncio.ensure_future(_subscriber(server, token, tenant, start, seen, stop_reading))
        writing = asyncio.ensure_future(_writer(server, token, tenant, device, acknowledged, stop_writing))
        await asyncio.sleep(1.5)
        server.kill()  # the server, mid-stream
        await server.process.wait()  # type: ignore[union-attr]
        await server.start()
        await asyncio.sleep(1.5)
        server.kill_postgres()  # then PostgreSQL, under the running server
        await asyncio.sleep(0.5)
        server.kill()
        await server.process.wait()  # type: ignore[union-attr]
        await server.start()  # PostgreSQL comes back through crash recovery
        await asyncio.sleep(1.5)
        stop_writing.set()
        await writing
        committed, written = await _log(client, token, tenant)
        await _drained(server, reading, stop_reading, lambda: [p for p, _ in seen[-1:]] == committed[-1:]
                       and set(committed) <= set(receiver.ids()))
    server.log.close()
    assert len(committed) > 50
    assert set(acknowledged) <= written  # every acknowledged write is in the log (and more may be: unknown outcomes)
    assert [p for p, _ in seen] == committed  # the subscriber: each committed change once, in order, both crashes
    assert list(dict.fromkeys(receiver.ids())) == committed  # the receiver, after dedupe by webhook-id


async def _steady_subscriber(server: Server, token: str, tenant: str, query: str, variables: dict[str, Any],
                             out: list[dict[str, Any]], stop: asyncio.Event) -> str:
    """ONE subscription that never resubscribes: every `next` payload, until the server completes it
    ("complete"), closes the socket ("closed <code>"), or the test stops ("stopped")."""
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/graphql",
                                  subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(orjson.dumps({"type": "connection_init", "payload": {
            "Authorization": f"Bearer {token}", "X-Tenant-ID": tenant}}).decode())
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connection_ack"
        await ws.send(orjson.dumps({"id": "1", "type": "subscribe",
                                    "payload": {"query": query, "variables": variables}}).decode())
        while not stop.is_set():
            try:
                message = orjson.loads(await asyncio.wait_for(ws.recv(), 0.5))
            except TimeoutError:
                continue
            except websockets.ConnectionClosed as closed:
                return f"closed {closed.code}"
            if message.get("type") == "next":
                out.append(message["payload"].get("data") or message["payload"])  # data, or the errors
            elif message.get("type") == "complete":
                return "complete"
    return "stopped"


async def test_a_database_restart_under_a_running_server_loses_no_subscriber_event_and_fails_copies_promptly(
        server: Server) -> None:
    """PostgreSQL's postmaster SIGKILLed under a running `tenantry serve` (which starts it again): a
    subscriber that stays connected receives every alarm committed before, during and after, once
    and in order (it missed 17-93 and was told nothing); a copy job caught by the restart is FAILED
    within seconds saying the database was lost, and its subscription completes with it."""
    server.env["TENANTRY_COPY_INLINE_ROWS"] = "0"  # every copy is a background job
    await server.run("migrate")
    await server.run("bootstrap")
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        operator = (await _gql(client, LOGIN, {"e": ADMIN, "p": PASSWORD, "t": "management"}))["login"]["accessToken"]
        ids = []
        for domain in ("restart-src", "restart-tgt"):
            ids.append((await _gql(client, f'mutation {{ createSubtenant(input: {{domain: "{domain}", company: "R", '
                                           f'adminEmail: "{ADMIN}"}}) {{ id }} }}', token=operator,
                                   tenant="management"))["createSubtenant"]["id"])
        tenant, target = ids
        token = (await _gql(client, LOGIN, {"e": ADMIN, "p": PASSWORD, "t": tenant}))["login"]["accessToken"]
        target_token = (await _gql(client, LOGIN, {"e": ADMIN, "p": PASSWORD, "t": target}))["login"]["accessToken"]
        device = (await _gql(client, 'mutation { createDevice(input: {name: "d"}) { id } }', token=token,
                             tenant=tenant))["createDevice"]["id"]
        start = (await _gql(client, "{ changes { pageInfo { endCursor } } }", token=token,
                            tenant=tenant))["changes"]["pageInfo"]["endCursor"]
        stop_writing, stop_reading = asyncio.Event(), asyncio.Event()
        alarms: list[dict[str, Any]] = []
        reading = asyncio.ensure_future(_steady_subscriber(
            server, token, tenant, "subscription($a: ChangePosition) { alarms(after: $a) { position } }",
            {"a": start}, alarms, stop_reading))
        acknowledged: list[str] = []
        writing = asyncio.ensure_future(_writer(server, token, tenant, device, acknowledged, stop_writing))
        # A copy job held up behind a lock on its target (an operator's session), when PostgreSQL dies.
        pgdata = server.pgdata
        socket_dir = (pgdata / "postmaster.pid").read_text().splitlines()[4]
        holder = await psycopg.AsyncConnection.connect(f"postgresql://postgres@/postgres?host={socket_dir}")
        await holder.execute(f"LOCK TABLE t_{target}.devices IN ACCESS EXCLUSIVE MODE")
        job = (await _gql(client, 'mutation($i: CopyDataInput!) { copyData(input: $i) { id status } }',
                          {"i": {"sourceTenantId": tenant, "targetTenantId": target, "deviceIds": [device]}},
                          token=token, tenant=tenant))["copyData"]
        job_events: list[dict[str, Any]] = []
        following = asyncio.ensure_future(_steady_subscriber(
            server, target_token, target, "subscription($j: ID!) { copyJob(id: $j) { status error } }",
            {"j": job["id"]}, job_events, stop_reading))
        await asyncio.sleep(1.5)
        server.kill_postgres()
        killed = asyncio.get_running_loop().time()
        with contextlib.suppress(psycopg.Error):
            await holder.close()
        ended = await asyncio.wait_for(following, 60)
        failed_after = asyncio.get_running_loop().time() - killed
        await asyncio.sleep(2.0)  # writes after the restart, too
        stop_writing.set()
        await writing
        committed, _ = await _log(client, token, tenant)
        for _ in range(300):
            if [a.get("alarms", {}).get("position") for a in alarms][-1:] == committed[-1:]:
                break
            await asyncio.sleep(0.05)
        stop_reading.set()
        how_reading_ended = await reading
        server.kill()
        await server.process.wait()  # type: ignore[union-attr]
    server.log.close()
    assert how_reading_ended == "stopped"  # never closed: the one subscription rode it out
    assert len(committed) > 20
    assert [a.get("alarms", a) for a in alarms if "alarms" not in a] == []
    assert [a["alarms"]["position"] for a in alarms] == committed  # each committed alarm once, in order
    assert ended == "complete"
    assert job_events[-1]["copyJob"]["status"] == "FAILED"
    assert "database connection was lost" in job_events[-1]["copyJob"]["error"]
    print(f"copy job FAILED and its subscription complete {failed_after:.1f} s after the kill; "
          f"{len(committed)} alarms, none missed")


async def test_kill_9_of_postgres_under_one_tenants_concurrent_writers_loses_no_acknowledged_or_delivered_change(
        server: Server) -> None:
    """Sixteen writers of one tenant, whose commits the server groups (app.db.wakes: each is
    flushed by a later flush, and answered only then), and a subscriber, when PostgreSQL's
    postmaster is SIGKILLed: after crash recovery every acknowledged alarm is in the log, and the
    subscriber received exactly the log — no change that the crash took back, none twice, none
    missed, each position with the alarm it holds."""
    await server.run("migrate")
    await server.run("bootstrap")
    with (server.pgdata / "postgresql.conf").open("a") as conf:
        # PostgreSQL's own WAL writer then leaves unflushed commits unwritten for seconds: only the
        # server's flushes keep what it acknowledges and delivers from being lost with the crash.
        conf.write("wal_writer_delay = 10s\nwal_writer_flush_after = 1GB\n")
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        tenant, token, device = await _tenant_with_device(client, "grouped")
        start = (await _gql(client, "{ changes { pageInfo { endCursor } } }", token=token,
                            tenant=tenant))["changes"]["pageInfo"]["endCursor"]
        seen: list[tuple[str, str]] = []
        acknowledged: list[str] = []
        stop_writing, stop_reading = asyncio.Event(), asyncio.Event()
        reading = asyncio.ensure_future(_subscriber(server, token, tenant, start, seen, stop_reading))
        writers = [asyncio.ensure_future(_writer(server, token, tenant, device, acknowledged, stop_writing,
                                                 prefix=f"w{k}-")) for k in range(16)]
        await asyncio.sleep(2.0)
        server.crash_postgres()  # the server starts it again: crash recovery
        await asyncio.sleep(3.0)
        stop_writing.set()
        await asyncio.gather(*writers)
        committed = await _entries(client, token, tenant)
        await _drained(server, reading, stop_reading, lambda: seen[-1:] == committed[-1:])
    server.log.close()
    assert len(committed) > 200
    assert set(acknowledged) <= {kind for _, kind in committed}  # nothing acknowledged was lost
    assert seen == committed  # nothing delivered that the crash took back; each change once, in order
    print(f"{len(acknowledged)} alarms acknowledged, {len(committed)} in the log after the crash, all delivered once")
