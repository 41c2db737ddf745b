"""Shared setup for the benchmarks: a throwaway embedded PostgreSQL, the real app, timing helpers.

Benchmarks print ratios against a baseline measured in the same run (never thresholds):
these machines are noisy, so only same-run comparisons mean anything.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from starlette.applications import Starlette

from app.db.embedded import embedded_database_url
from app.db.engines import app_role_password
from app.ids import decode
from app.logs import configure_logging
from app.main import create_app
from app.runtime.platform import Platform
from app.services.tenants.bootstrap import bootstrap
from app.settings import Settings
from app.tenancy.migrate import migrate_management

T = TypeVar("T")

ADMIN_EMAIL = "bench@tenantry.test"
ADMIN_PASSWORD = "bench-password-1"


@dataclass
class Bench:
    platform: Platform
    app: Starlette
    client: httpx.AsyncClient

    async def gql(self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None,
                  tenant: str | None = None) -> dict[str, Any]:
        headers = {"accept": "application/graphql-response+json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        if tenant:
            headers["x-tenant-id"] = tenant
        response = await self.client.post("/graphql", json={"query": query, "variables": variables or {}},
                                          headers=headers)
        body: dict[str, Any] = response.json()
        if body.get("errors"):
            raise RuntimeError(body["errors"])
        return body["data"]  # type: ignore[no-any-return]

    async def token(self, email: str, password: str, tenant: str | None = None) -> str:
        data = await self.gql("mutation($e: String!, $p: String!, $t: ID) { login(email: $e, password: $p, "
                              "tenantId: $t) { accessToken } }", {"e": email, "p": password, "t": tenant})
        return str(data["login"]["accessToken"])

    async def subtenant(self, domain: str) -> tuple[str, str]:
        """A new STANDARD tenant under the operator, the bench admin its admin: its id and the admin's token."""
        operator = await self.token(ADMIN_EMAIL, ADMIN_PASSWORD, "management")
        created = await self.gql('mutation($d: String!, $e: String!) { createSubtenant(input: {domain: $d, '
                                 'company: $d, adminEmail: $e}) { id } }', {"d": domain, "e": ADMIN_EMAIL},
                                 token=operator, tenant="management")
        tenant = str(created["createSubtenant"]["id"])
        return tenant, await self.token(ADMIN_EMAIL, ADMIN_PASSWORD, tenant)


@contextmanager
def generic_path(app: Starlette) -> Iterator[None]:
    """The same app with the compiled read path off (what TENANTRY_COMPILED_READS=0 serves)."""
    endpoint = app.state.graphql
    planner, endpoint.planner = endpoint.planner, None
    try:
        yield
    finally:
        endpoint.planner = planner


@asynccontextmanager
async def bench_platform(extra_routes: Callable[[Platform], list[Any]] | None = None,
                         **overrides: Any) -> AsyncIterator[Bench]:
    """A throwaway platform with the real app; `overrides` are Settings fields (pool_size=32)."""
    configure_logging("console")
    data_dir = Path(tempfile.mkdtemp(prefix="tnb-", dir="/tmp"))
    try:
        # TENANTRY_BENCH_DATABASE_URL: measure on another server (e.g. a Citus coordinator, with
        # TENANTRY_TENANT_ROLES_LOGIN=1) instead of a throwaway embedded one.
        url = os.environ.get("TENANTRY_BENCH_DATABASE_URL") or embedded_database_url(data_dir)
        login = os.environ.get("TENANTRY_TENANT_ROLES_LOGIN", "") in {"1", "true"}
        settings = Settings(database_url=url, data_dir=data_dir, secret_key="bench-secret-key-bench-secret-key-0123",
                            admin_email=ADMIN_EMAIL, admin_password=ADMIN_PASSWORD,
                            **{"tenant_roles_login": login, **overrides})
        platform = Platform.create(settings)
        await migrate_management(platform.db.owner, settings, app_role_password(settings))
        await bootstrap(platform)
        app = create_app(platform=platform)
        for route in (extra_routes(platform) if extra_routes else []):
            app.router.routes.append(route)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            yield Bench(platform, app, client)
        await platform.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def run_as_served(main: Coroutine[Any, Any, T]) -> T:
    """`main` on the event loop `tenantry serve` runs (uvicorn's loop="auto": uvloop where it is
    installed, asyncio's own elsewhere), so a server measured in process costs what it costs served."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[int]:
    """`app` served by uvicorn on a free port of 127.0.0.1 while the block runs (for wrk); the port."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                                           access_log=False))
    serving = asyncio.create_task(server.serve())
    for _ in range(1000):  # bounded: uvicorn sets `started` once it listens
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        await serving


async def timed(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    """Wall-clock seconds of each of n sequential calls."""
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - start)
    return samples


async def interleaved(fns: dict[str, Callable[[], Awaitable[object]]], n: int) -> dict[str, list[float]]:
    """n samples of each function, alternating call by call, so drift in a noisy machine
    (other tenants of the host, CPU frequency) hits every side alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(n):
        for name, fn in fns.items():
            start = time.perf_counter()
            await fn()
            samples[name].append(time.perf_counter() - start)
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def local_id(global_id: str) -> int:
    """The row number behind a global id (app.ids): what a plain endpoint or a peer server keys by."""
    decoded = decode(global_id)
    if decoded is None:
        raise ValueError(f"not a global id: {global_id!r}")
    return decoded[2]
