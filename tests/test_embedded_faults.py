"""The embedded PostgreSQL is supervised: `tenantry serve` notices it has gone and starts it again
(with backoff), reports a full disk as such, and /readyz says which. Real processes, real signals,
and a real full disk (a small tmpfs; skipped, saying why, where mounting one is not allowed)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_stops import ROOT, TENANTRY, _free_port, _run, _until_listening

ADMIN, PASSWORD = "admin@embedded.test", "embedded-pass-1"
LOGIN = f'mutation {{ login(email: "{ADMIN}", password: "{PASSWORD}", tenantId: "management") {{ accessToken }} }}'
CREATE = 'mutation { createSubtenant(input: {domain: "%s", company: "C", adminEmail: "%s"}) { id } }'


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
    return env | {"PYTHONPATH": str(ROOT), "TENANTRY_DATA_DIR": str(data_dir), "TENANTRY_ADMIN_EMAIL": ADMIN,
                  "TENANTRY_ADMIN_PASSWORD": PASSWORD, "TENANTRY_SECRET_KEY": "embedded-faults-secret-key-0123456789",
                  "TENANTRY_SPARE_SCHEMAS": "0"}


class Served:
    def __init__(self, port: int, process: asyncio.subprocess.Process, log: Path) -> None:
        self.port, self.process, self.log = port, process, log
        self.url = f"http://127.0.0.1:{port}"

    async def gql(self, query: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(f"{self.url}/graphql", json={"query": query}, headers=headers)
        return response.status_code, response.json()

    async def ready(self) -> tuple[int, dict[str, Any]]:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.get(f"{self.url}/readyz")
        return response.status_code, response.json()

    async def token(self) -> str:
        status, body = await self.gql(LOGIN)
        assert status == 200, body
        return str(body["data"]["login"]["accessToken"])


async def _serve(data_dir: Path) -> Served:
    env = _env(data_dir)
    assert await _run("migrate", env=env) == 0
    assert await _run("bootstrap", env=env) == 0
    port, log = _free_port(), data_dir / "serve.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(*TENANTRY, "serve", cwd=ROOT, stdout=out, stderr=out,
                                                       env=env | {"TENANTRY_PORT": str(port)})
    await _until_listening(port, process)
    return Served(port, process, log)


async def _stop(served: Served) -> None:
    if served.process.returncode is None:
        served.process.terminate()
        await asyncio.wait_for(served.process.wait(), timeout=30)


async def _until(condition: Any, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if await condition():
            return time.monotonic() - started
        await asyncio.sleep(0.25)
    raise AssertionError(f"not within {seconds} s")


def _postmaster(data_dir: Path) -> int:
    return int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])


async def test_serve_starts_the_embedded_database_again_after_it_is_killed() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="tnt-sup-", dir="/tmp"))
    served = await _serve(data_dir)
    try:
        token = await served.token()
        os.kill(_postmaster(data_dir), signal.SIGKILL)
        answers: list[tuple[int, dict[str, Any]]] = []

        async def back() -> bool:
            answers.append(await served.gql("{ tenant { id } }", token))
            return answers[-1][0] == 200

        took = await _until(back, 90)
        assert (await served.ready())[0] == 200
        failed = [body for status, body in answers if status != 200]
        # While it was down, every answer was a retryable UNAVAILABLE (never INTERNAL, never a hang).
        assert all(b["errors"][0]["extensions"]["code"] == "UNAVAILABLE" for b in failed), failed[:3]
        print(f"answering again {took:.1f} s after the postmaster's SIGKILL ({len(failed)} answers 503 meanwhile)")
        # PostgreSQL accepts connections before pgserver's start call returns to the supervisor, so a
        # request can succeed a moment before the supervisor logs that it restarted the database.

        async def logged() -> bool:
            return "running again" in served.log.read_text()

        await _until(logged, 30)
    finally:
        await _stop(served)
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def _small_disk(megabytes: int) -> Iterator[Path]:
    mount = Path(tempfile.mkdtemp(prefix="tnt-full-", dir="/tmp"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip(f"a full disk needs a small filesystem, and mounting a tmpfs failed: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


async def test_a_full_disk_is_reported_as_such_and_service_resumes_once_space_is_freed() -> None:
    with _small_disk(400) as disk:
        data_dir = disk / "data"
        served = await _serve(data_dir)
        ballast = disk / "ballast"
        try:
            token = await served.token()
            free = shutil.disk_usage(disk).free
            with ballast.open("wb") as fh:
                os.posix_fallocate(fh.fileno(), 0, free - 256 * 1024)
            answers: list[tuple[int, dict[str, Any]]] = []

            async def refused() -> bool:
                answers.append(await served.gql(CREATE % (f"full{len(answers)}", ADMIN), token))
                return answers[-1][0] != 200

            await _until(refused, 60)
            status, body = answers[-1]
            assert status == 503, body
            error = body["errors"][0]
            assert error["extensions"]["code"] == "UNAVAILABLE"
            assert "disk" in error["message"], error  # said as it is, not "cannot be reached"
            ready = await served.ready()
            assert ready == (503, {**ready[1], "status": "unavailable", "database": "disk full"}), ready
            ballast.unlink()

            async def serving() -> bool:
                return (await served.gql(CREATE % (f"freed{time.monotonic_ns()}", ADMIN), token))[0] == 200

            took = await _until(serving, 120)
            assert (await served.ready())[0] == 200
            print(f"writing again {took:.1f} s after the space was freed")
        finally:
            ballast.unlink(missing_ok=True)
            await _stop(served)
