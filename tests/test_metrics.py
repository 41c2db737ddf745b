"""/metrics on prometheus_client: the exposition parses, latency and pool series are there, and
with `tenantry serve --workers 2` a scrape adds up every worker's samples."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from app.runtime.platform import Platform
from app.settings import Settings
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, Api, World

ROOT = Path(__file__).resolve().parent.parent


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_the_exposition_parses_with_latency_pool_and_job_series(http: httpx.AsyncClient, api: Api,
                                                                      world: World, operator_token: str) -> None:
    t = await world.tenant()
    await api.gql("query ListDevices { devices { totalCount } }", token=t.token, tenant=t.id)
    scraped = await http.get("/metrics", headers={"authorization": f"Bearer {operator_token}"})
    assert scraped.headers["content-type"].startswith("text/plain")
    samples = _samples(scraped.text)
    names = {name for name, _ in samples}
    for expected in ("tenantry_requests_total", "tenantry_request_duration_seconds_bucket",
                     "tenantry_requests_in_flight", "tenantry_requests_waiting", "tenantry_db_pool_checked_out",
                     "tenantry_db_pool_capacity",
                     "tenantry_spare_schemas", "tenantry_copy_jobs"):
        assert expected in names, expected
    assert samples[("tenantry_request_duration_seconds_count", (("operation", "ListDevices"), ("outcome", "ok")))] >= 1
    assert samples[("tenantry_requests_total", (("tenant", t.id),))] == 1


async def test_two_workers_add_up(settings: Settings, platform: Platform, world: World, tmp_path: Path) -> None:
    t = await world.tenant()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENANTRY_", "PROMETHEUS_"))}
    env |= {"PYTHONPATH": str(ROOT), "TENANTRY_DATABASE_URL": str(settings.database_url),
            "TENANTRY_SECRET_KEY": str(settings.secret_key), "TENANTRY_DATA_DIR": str(tmp_path),
            "TENANTRY_SPARE_SCHEMAS": "0", "TENANTRY_PORT": str(port), "TENANTRY_WORKERS": "2"}
    log = (tmp_path / "serve.log").open("wb")
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from app.entry import main; sys.exit(main())", "serve", cwd=ROOT, env=env,
        stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                async with httpx.AsyncClient() as client:
                    if (await client.get(f"{base}/healthz")).status_code == 200:
                        break
            except httpx.TransportError:
                await asyncio.sleep(0.1)
        sent = 40
        for _ in range(sent):  # a new connection each time: both workers accept from one socket
            async with httpx.AsyncClient() as client:
                answer = await client.post(f"{base}/graphql", json={"query": "{ tenant { id } }"},
                                           headers={"authorization": f"Bearer {t.token}", "x-tenant-id": t.id})
                assert answer.status_code == 200
        files = {p.name for p in (tmp_path / "prometheus").iterdir() if p.name.startswith("counter_")}
        assert len(files) >= 2, files  # samples from (at least) two worker processes
        async with httpx.AsyncClient() as client:
            login = await client.post(f"{base}/graphql", json={
                "query": "mutation($e: String!, $p: String!) { login(email: $e, password: $p, "
                         "tenantId: \"management\") { accessToken } }", "variables": {"e": ADMIN_EMAIL,
                                                                                       "p": ADMIN_PASSWORD}})
            token = login.json()["data"]["login"]["accessToken"]
            totals = []
            for _ in range(4):  # whichever worker answers, the sum is the same
                scraped = await client.get(f"{base}/metrics", headers={"authorization": f"Bearer {token}"})
                totals.append(_samples(scraped.text)[("tenantry_requests_total", (("tenant", t.id),))])
        assert totals == [sent] * 4
        # A worker killed with SIGKILL (no shutdown of its own): its live gauges leave the sums.
        victim = _workers(server.pid)[-1]
        victim.kill()
        victim.wait(10)
        for _ in range(300):  # uvicorn starts a new worker in its place
            if len([w for w in _workers(server.pid) if w.pid != victim.pid]) == 2:
                break
            await asyncio.sleep(0.1)
        for _ in range(sent):  # every live worker refreshes its gauges
            async with httpx.AsyncClient() as client:
                await client.post(f"{base}/graphql", json={"query": "{ tenant { id } }"},
                                  headers={"authorization": f"Bearer {t.token}", "x-tenant-id": t.id})
        async with httpx.AsyncClient() as client:
            scraped = await client.get(f"{base}/metrics", headers={"authorization": f"Bearer {token}"})
        samples = _samples(scraped.text)
        live = {int(p.name.rsplit("_", 1)[1][:-3]) for p in (tmp_path / "prometheus").iterdir()
                if p.name.startswith("gauge_livesum_")}
        assert victim.pid not in live
        per_worker = settings.pool_size + settings.pool_overflow
        # Only live workers count (a worker that served none of those requests may not have set it yet).
        assert per_worker <= samples[("tenantry_db_pool_capacity", ())] <= per_worker * len(live) <= per_worker * 2
        assert samples[("tenantry_requests_in_flight", ())] == 0
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), timeout=20)
        log.close()


def _workers(pid: int) -> list[psutil.Process]:
    """uvicorn's live worker processes (the serving process's children, but its resource tracker)."""
    workers = []
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.Error):
            if "spawn_main" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                workers.append(child)
    return workers
