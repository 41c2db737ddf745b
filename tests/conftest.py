"""Fixtures: one embedded PostgreSQL for the run, the real ASGI app, and a small GraphQL client.

Each test makes its own tenants (unique domains), so tests share the server without
sharing state. Nothing here replaces a real part: the database is PostgreSQL, requests go
through the Starlette app, tokens are real JWTs.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from starlette.applications import Starlette

from app.access.acting import tenant_transaction
from app.db.embedded import embedded_database_url
from app.db.engines import app_role_password
from app.ids import encode
from app.main import create_app
from app.realtime.hub import Hub
from app.runtime.platform import Platform
from app.services.tenants.bootstrap import bootstrap
from app.settings import Settings
from app.tenancy.migrate import migrate_management
from tests.oidc_provider import FakeProvider

ADMIN_EMAIL = "root@tenantry.test"
ADMIN_PASSWORD = "operator-pass-1"
PASSWORD = "tenant-pass-123"


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    # Short path: PostgreSQL's unix socket path must stay under ~100 bytes.
    path = Path(tempfile.mkdtemp(prefix="tnt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(data_dir: Path) -> Settings:
    url = os.environ.get("TENANTRY_TEST_DATABASE_URL") or embedded_database_url(data_dir)
    return Settings(
        database_url=url,
        data_dir=data_dir,
        secret_key="test-secret-key-that-is-long-enough-for-hs256",
        admin_email=ADMIN_EMAIL,
        admin_password=ADMIN_PASSWORD,
        cors_origins=("https://app.example.com",),
        # Webhook tests deliver to receivers on loopback; every other private range stays refused.
        webhook_allowed_networks=("127.0.0.0/8",),
        # On Citus (make test-citus) tenant roles log in to the workers.
        tenant_roles_login=os.environ.get("TENANTRY_TENANT_ROLES_LOGIN", "") in {"1", "true"},
        # Cheap argon2 keeps the suite fast; production uses the defaults.
        argon2_time_cost=1,
        argon2_memory_kib=1024,
    )


@pytest.fixture(scope="session")
async def platform(settings: Settings) -> AsyncIterator[Platform]:
    live = Platform.create(settings)
    await migrate_management(live.db.owner, settings, app_role_password(settings))
    await bootstrap(live)
    yield live
    await live.close()


@pytest.fixture(scope="session")
def app(platform: Platform) -> Starlette:
    return create_app(platform=platform)


@pytest.fixture(scope="session")
def hub(app: Starlette) -> Hub:
    """The realtime hub of the app under test (owned by its subscription transport)."""
    hub: Hub = app.state.realtime
    return hub


@pytest.fixture(scope="session")
async def server(app: Starlette) -> AsyncIterator[str]:
    """The real ASGI app behind uvicorn on a loopback port (WebSockets need a real server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", ws="websockets-sansio",
                            ws_per_message_deflate=False)
    running = uvicorn.Server(config)
    task = asyncio.create_task(running.serve(sockets=[sock]))
    for _ in range(500):
        if running.started:
            break
        await asyncio.sleep(0.02)
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    running.should_exit = True
    await task


@pytest.fixture(scope="session")
async def http(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tenantry.test") as client:
        yield client


_ids = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_ids)}"


@dataclass
class Result:
    status: int
    body: dict[str, Any]

    @property
    def data(self) -> Any:
        assert "errors" not in self.body, self.body
        return self.body["data"]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self.body.get("errors") or [])

    @property
    def code(self) -> str:
        assert self.errors, self.body
        return str(self.errors[0]["extensions"]["code"])


class Api:
    """A GraphQL client for the real app, remembering nothing between calls."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def gql(self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None,
                  tenant: str | None = None, operation: str | None = None) -> Result:
        headers = {"accept": "application/graphql-response+json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        if tenant:
            headers["x-tenant-id"] = tenant
        body = {"query": query, "variables": variables or {}, **({"operationName": operation} if operation else {})}
        response = await self.http.post("/graphql", json=body, headers=headers)
        return Result(response.status_code, response.json())

    async def login(self, email: str, password: str, tenant: str | None = None) -> dict[str, Any]:
        result = await self.gql(
            """mutation($e: String!, $p: String!, $t: ID) { login(email: $e, password: $p, tenantId: $t) {
                 accessToken refreshToken expiresIn user { id email } tenant { id domain } } }""",
            {"e": email, "p": password, "t": tenant},
        )
        return result.data["login"]  # type: ignore[no-any-return]

    async def token(self, email: str, password: str, tenant: str | None = None) -> str:
        return str((await self.login(email, password, tenant))["accessToken"])

    async def create_subtenant(self, token: str, tenant: str, **fields: Any) -> Result:
        return await self.gql(
            """mutation($i: CreateSubtenantInput!) { createSubtenant(input: $i) {
                 id domain company kind status depth allowCreateTenants parentId schemaVersion } }""",
            {"i": fields}, token=token, tenant=tenant,
        )


@dataclass
class TenantHandle:
    id: str
    domain: str
    admin_email: str
    token: str


class World:
    """Builds tenant trees through the API, each tenant with its own admin."""

    def __init__(self, api: Api, operator_token: str, platform: Platform) -> None:
        self.api = api
        self.operator_token = operator_token
        self.platform = platform

    async def member(self, tenant: TenantHandle, role: str, group_ids: list[str] | None = None) -> tuple[str, str]:
        """A new user with `role` in the tenant (inserted directly: invitations are another issue's);
        restricted to groups through the real mutation. Returns (user id, access token)."""
        email = f"{unique(role.lower())}@member.test"
        async with self.platform.db.owner.connect() as conn:
            user_id = (await conn.execute(text(
                "INSERT INTO tenantry.users (email, password_hash) VALUES (:e, :h) RETURNING id"),
                {"e": email, "h": await self.platform.passwords.hash(PASSWORD)})).scalar_one()
            await conn.execute(text("INSERT INTO tenantry.memberships (user_id, tenant_id, role) VALUES (:u, :t, :r)"),
                               {"u": user_id, "t": tenant.id, "r": role})
        if group_ids is not None:
            result = await self.api.gql("mutation($u: ID!, $g: [ID!]) { setMemberGroups(userId: $u, groupIds: $g) "
                                        "{ groupIds } }", {"u": str(user_id), "g": group_ids},
                                        token=tenant.token, tenant=tenant.id)
            assert sorted(result.data["setMemberGroups"]["groupIds"]) == sorted(group_ids)
        return str(user_id), await self.api.token(email, PASSWORD, tenant.id)

    async def subtree_admin(self, ancestor: TenantHandle) -> tuple[str, str]:
        """A new user with a SUBTREE ADMIN membership on `ancestor` (parent-level access to its
        descendants); returns (user id, access token logged into the ancestor)."""
        email = f"{unique('subtree')}@member.test"
        async with self.platform.db.owner.begin() as conn:
            user_id = (await conn.execute(text(
                "INSERT INTO tenantry.users (email, password_hash) VALUES (:e, :h) RETURNING id"),
                {"e": email, "h": await self.platform.passwords.hash(PASSWORD)})).scalar_one()
            await conn.execute(text("INSERT INTO tenantry.memberships (user_id, tenant_id, role, scope) "
                                    "VALUES (:u, :t, 'ADMIN', 'SUBTREE')"), {"u": user_id, "t": ancestor.id})
        return str(user_id), await self.api.token(email, PASSWORD, ancestor.id)

    async def tenant(self, parent: TenantHandle | None = None, *, kind: str = "STANDARD",
                     **fields: Any) -> TenantHandle:
        domain = unique(kind.lower()[:3])
        email = f"admin@{domain}.test"
        token = parent.token if parent else self.operator_token
        parent_id = parent.id if parent else "management"
        fields = {"company": f"Co {domain}", **fields}
        result = await self.api.create_subtenant(token, parent_id, domain=domain, kind=kind, adminEmail=email,
                                                 adminPassword=PASSWORD, **fields)
        tenant_id = result.data["createSubtenant"]["id"]
        return TenantHandle(tenant_id, domain, email, await self.api.token(email, PASSWORD, tenant_id))


async def assert_denied(platform: Platform, tenant_id: str, sql: str) -> None:
    """`sql` run under the tenant's role (routed transaction) fails with permission denied."""
    tx = tenant_transaction(platform.db.app, tenant_id)
    try:
        with pytest.raises(ProgrammingError, match="permission denied"):
            await tx.execute(text(sql))
    finally:
        await tx.finish(commit=False)


@pytest.fixture(scope="session")
def api(http: httpx.AsyncClient) -> Api:
    return Api(http)


@pytest.fixture(scope="session")
async def operator_token(api: Api) -> str:
    return await api.token(ADMIN_EMAIL, ADMIN_PASSWORD, "management")


@pytest.fixture
def world(api: Api, operator_token: str, platform: Platform) -> World:
    return World(api, operator_token, platform)


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    """A real OpenID provider on loopback (tests/oidc_provider.py) for single sign-on tests."""
    idp = FakeProvider()
    await idp.start()
    yield idp
    await idp.stop()


def nowhere(tenant: TenantHandle | str, type_name: str = "Device") -> str:
    """A well-formed global id of `type_name` in the tenant that names no row."""
    return encode(type_name, tenant if isinstance(tenant, str) else tenant.id, 999_999_999)
