"""A request works on ONE pooled connection: no use case opens a second one while its request holds
the first (under load that second wait is how a server stalls itself, app/access/acting.py).

The proof: a server whose pool has exactly one connection (no overflow, one request at a time)
serves every kind of mutation and the reads a console makes. A use case that asked the pool for a
second connection would wait for the first, which its own request holds, until the pool's wait
runs out, and answer UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.main import create_app
from app.runtime.platform import Platform
from app.settings import Settings
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, PASSWORD, unique
from tests.test_people import _latest_token


@pytest.fixture(scope="module")
async def one_connection(settings: Settings, platform: Platform) -> AsyncIterator[tuple[httpx.AsyncClient, Platform]]:
    narrow = settings.with_(pool_size=1, pool_wait_seconds=5.0, spare_schemas=0)
    live = Platform.create(narrow)
    assert live.db.app.pool.size() == 1  # type: ignore[attr-defined]
    assert (narrow.pool_overflow, narrow.max_in_flight) == (0, 1)
    transport = httpx.ASGITransport(app=create_app(platform=live))
    async with httpx.AsyncClient(transport=transport, base_url="http://tenantry.test") as client:
        yield client, live
    await live.close()


class Caller:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.token: str | None = None
        self.tenant: str | None = None

    async def ok(self, query: str, **variables: Any) -> Any:
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        if self.tenant:
            headers["x-tenant-id"] = self.tenant
        response = await self.http.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
        body = response.json()
        assert "errors" not in body, (query, body)
        assert response.status_code == 200
        return body["data"]

    async def login(self, email: str, password: str, tenant: str) -> dict[str, Any]:
        self.token = None
        data = await self.ok("mutation($e: String!, $p: String!, $t: ID) { login(email: $e, password: $p, tenantId: $t)"
                             " { accessToken refreshToken } }", e=email, p=password, t=tenant)
        self.token, self.tenant = data["login"]["accessToken"], tenant
        return data["login"]  # type: ignore[no-any-return]


async def test_a_pool_of_one_connection_serves_every_kind_of_mutation(
        one_connection: tuple[httpx.AsyncClient, Platform]) -> None:
    http, live = one_connection
    operator = Caller(http)
    await operator.login(ADMIN_EMAIL, ADMIN_PASSWORD, "management")
    failed = await http.post("/graphql", json={"query": 'mutation { login(email: "nobody@x.test", password: "wrong-'
                                                        'password") { accessToken } }'})
    assert failed.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"  # audited on the same connection

    async def tenant(kind: str, parent: Caller) -> tuple[str, str]:
        domain = unique("one")
        made = await parent.ok("mutation($i: CreateSubtenantInput!) { createSubtenant(input: $i) { id } }",
                               i={"domain": domain, "company": "One", "kind": kind, "adminEmail": f"a@{domain}.test",
                                  "adminPassword": PASSWORD})
        return made["createSubtenant"]["id"], f"a@{domain}.test"

    ent_id, _ = await tenant("ENTERPRISE", operator)
    source_id, source_admin = await tenant("STANDARD", operator)
    target_id, target_admin = await tenant("STANDARD", operator)
    spare_id, _ = await tenant("STANDARD", operator)
    for mutation in (f'updateTenant(id: "{source_id}", input: {{company: "One", limits: {{maxDevices: 50}}}}) {{ id }}',
                     f'suspendTenant(id: "{spare_id}") {{ status }}', f'activateTenant(id: "{spare_id}") {{ status }}',
                     f'setTenantKind(id: "{spare_id}", kind: ENTERPRISE) {{ kind }}',
                     f'moveTenant(id: "{spare_id}", newParentId: "{ent_id}") {{ id }}'):
        await operator.ok(f"mutation {{ {mutation} }}")

    admin = Caller(http)
    session = await admin.login(source_admin, PASSWORD, source_id)
    refreshed = await admin.ok("mutation($r: String!) { refreshToken(refreshToken: $r) { accessToken refreshToken } }",
                               r=session["refreshToken"])
    await admin.ok("mutation { setParentAccess(policy: FULL) { id } }")
    await admin.ok('mutation { setTenantOption(input: {category: "ui", key: "theme", value: "dark"}) { key } }')
    group = (await admin.ok('mutation { createGroup(name: "g") { id } }'))["createGroup"]["id"]
    device = (await admin.ok('mutation { createDevice(input: {name: "d", type: "t"}) { id } }'))["createDevice"]["id"]
    await admin.ok("mutation($g: ID!, $d: ID!) { addDevicesToGroup(groupId: $g, deviceIds: [$d]) }", g=group, d=device)
    await admin.ok('mutation($d: ID!) { createMeasurements(input: [{deviceId: $d, time: "2026-01-01T00:00:00Z", '
                   'type: "c", series: "t", value: 1.5}]) }', d=device)
    await admin.ok('mutation($d: ID!) { createEvent(input: {deviceId: $d, time: "2026-01-01T00:00:00Z", type: "e", '
                   'text: "x"}) { id } }', d=device)
    alarm = (await admin.ok('mutation($d: ID!) { raiseAlarm(input: {deviceId: $d, type: "a", severity: MAJOR, '
                            'text: "x"}) { id } }', d=device))["raiseAlarm"]["id"]
    await admin.ok("mutation($a: ID!) { updateAlarmStatus(id: $a, status: ACKNOWLEDGED) { id } }", a=alarm)
    await admin.ok('mutation($d: ID!) { createOperation(input: {deviceId: $d, description: "o"}) { id } }', d=device)
    await admin.ok("mutation($d: ID!) { createDeviceToken(deviceId: $d) { token } }", d=device)
    await admin.ok('mutation { createRole(name: "VIEWER", permissions: ["devices:read"]) { name } }')
    await admin.ok('mutation { inviteMember(email: "invited@one.test", role: "READER") { id } }')
    await admin.ok('mutation { createApiToken(name: "ci", permissions: ["devices:read"]) { token } }')
    await admin.ok('mutation { requestPasswordReset(email: "nobody@one.test") }')
    await admin.ok("{ me { user { email } memberships { role } } tenant { id limits { maxDevices } } "
                   "devices(first: 5) { edges { node { id alarms { id } } } } }")
    await admin.ok("mutation($r: String!) { logout(refreshToken: $r) }", r=refreshed["refreshToken"]["refreshToken"])

    target = Caller(http)
    await target.login(target_admin, PASSWORD, target_id)
    await target.ok("mutation($e: String!) { inviteMember(email: $e, role: \"ADMIN\") { id } }", e=source_admin)
    invitation = await _latest_token(live, source_admin)
    await admin.login(source_admin, PASSWORD, source_id)
    await admin.ok("mutation($t: String!) { acceptInvitation(token: $t) { role } }", t=invitation)
    await admin.ok(f'mutation($d: ID!) {{ copyData(input: {{sourceTenantId: "{source_id}", targetTenantId: '
                   f'"{target_id}", deviceIds: [$d], include: [INVENTORY, MEASUREMENTS]}}) {{ id }} }}', d=device)
    await admin.ok(f'mutation($d: ID!) {{ migrateDevices(deviceIds: [$d], targetTenantId: "{target_id}") '
                   "{ moved { targetId } } }", d=device)
    await target.ok("mutation($p: String!) { changePassword(currentPassword: $p, newPassword: \"another-pass-1\") }",
                    p=PASSWORD)
    await operator.ok(f'mutation {{ deleteTenant(id: "{spare_id}") }}')
    async with live.db.owner.connect() as conn:  # what the requests wrote was committed
        status = (await conn.execute(text("SELECT status FROM tenantry.tenants WHERE id = :i"), {"i": spare_id}))
        assert status.scalar_one() == "DELETED"
