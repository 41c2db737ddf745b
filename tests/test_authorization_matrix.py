"""The authorisation matrix, through GraphQL and HTTP: every kind of caller by every class of
operation, in a STANDARD tenant T (child of an enterprise E, sibling S) → allowed or the code.

README.md's security section shows the same table; a rule change shows up here as a diff of
the whole table, not as one assertion deep in a test.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import text

from app.runtime.platform import Platform
from tests.conftest import PASSWORD, Api, TenantHandle, World, nowhere, unique
from tests.oidc_provider import FakeProvider
from tests.test_sso import _configure, _sign_in

OPERATIONS = ("mgmt read", "mgmt write", "data read", "data write", "people", "tokens", "sso", "copy", "migrate",
              "usage", "export", "options", "node", "placement", "changes", "webhooks", "shares")
A, F, S, U = "allow", "FORBIDDEN", "TENANT_SUSPENDED", "UNAUTHENTICATED"

# caller → expected outcome per operation, in the order of OPERATIONS.
EXPECTED: dict[str, tuple[str, ...]] = {
    "ADMIN": (A, A, A, A, A, A, A, A, A, A, A, A, A, F, A, A, A),
    "MANAGER": (A, F, A, A, F, F, F, A, A, F, F, F, A, F, A, F, F),
    "OPERATOR": (A, F, A, F, F, F, F, F, F, F, F, F, A, F, A, F, F),
    "READER": (A, F, A, F, F, F, F, F, F, F, F, F, A, F, A, F, F),
    "custom role (devices:read+write)": (A, F, A, A, F, F, F, A, F, F, F, F, A, F, A, F, F),
    # Creating a device outside its groups is refused; inside them it is allowed (tests/test_access.py).
    "group-scoped MANAGER": (A, F, A, F, F, F, F, F, F, F, F, F, A, F, A, F, F),
    "parent-level ADMIN, parentAccess MANAGEMENT_ONLY": (A, F, F, F, F, F, F, F, F, A, A, F, F, F, F, F, F),
    "parent-level ADMIN, parentAccess FULL": (A, F, A, A, A, F, F, A, A, A, A, F, A, F, A, A, A),
    "management ADMIN (no SUBTREE scope)": (F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F),
    # "mgmt write" is setParentAccess: only the tenant's own admins in person open its data to parents.
    # Copy and migration need a user's own access token.
    "API token (ADMIN's, all permissions)": (A, F, A, A, A, A, A, F, F, A, A, A, A, F, A, A, A),
    "API token whose creator is now READER": (A, F, A, F, F, F, F, F, F, F, F, F, A, F, A, F, F),
    "device token": (A, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F, F),
    "SSO user (T's provider: MANAGER)": (A, F, A, A, F, F, F, F, F, F, F, F, A, F, A, F, F),
    "inherited-SSO user (E's provider: ADMIN)": (A, F, F, F, F, F, F, F, F, A, A, F, F, F, F, F, F),
    "user of a suspended tenant": (S, S, S, S, S, S, S, S, S, S, S, S, S, S, S, S, S),
    # An access token dies with its login session, on every transport (it kept working until it expired).
    "ADMIN's access token after logout": (U, U, U, U, U, U, U, U, U, U, U, U, U, U, U, U, U),
}


@dataclass
class Caller:
    token: str
    tree: Tree


@dataclass
class Tree:
    enterprise: TenantHandle
    t: TenantHandle
    s: TenantHandle
    policy: str


async def _tree(api: Api, world: World, policy: str) -> Tree:
    ent = await world.tenant(kind="ENTERPRISE")
    t, s = await world.tenant(ent), await world.tenant(ent)
    for child in (t, s):
        await api.gql(f"mutation {{ setParentAccess(policy: {policy}) {{ parentAccess }} }}", token=child.token,
                      tenant=child.id)
    return Tree(ent, t, s, policy)


async def _user_in(platform: Platform, memberships: list[tuple[str, str, str]]) -> tuple[str, str]:
    """A new user with (tenant, role, scope) memberships, inserted directly; (user id, email)."""
    email = f"{unique('m')}@matrix.test"
    async with platform.db.owner.begin() as conn:
        user_id = (await conn.execute(text("INSERT INTO tenantry.users (email, password_hash) VALUES (:e, :h) "
                                           "RETURNING id"), {"e": email, "h": await platform.passwords.hash(PASSWORD)})
                   ).scalar_one()
        for tenant_id, role, scope in memberships:
            await conn.execute(text("INSERT INTO tenantry.memberships (user_id, tenant_id, role, scope) "
                                    "VALUES (:u, :t, :r, :s)"), {"u": user_id, "t": tenant_id, "r": role, "s": scope})
    return str(user_id), email


async def _callers(api: Api, world: World, platform: Platform, http: httpx.AsyncClient, idp: FakeProvider,
                   operator_token: str) -> dict[str, Caller]:
    closed, opened = await _tree(api, world, "MANAGEMENT_ONLY"), await _tree(api, world, "FULL")
    t, s = closed.t, closed.s
    callers: dict[str, Caller] = {"ADMIN": Caller(t.token, closed)}
    _, email = await _user_in(platform, [(t.id, "ADMIN", "TENANT"), (s.id, "ADMIN", "TENANT")])
    session = await api.login(email, PASSWORD, t.id)
    await api.gql("mutation($r: String!) { logout(refreshToken: $r) }", {"r": session["refreshToken"]})
    callers["ADMIN's access token after logout"] = Caller(session["accessToken"], closed)
    # The same user in T and S (copy and migration need both sides).
    for role in ("ADMIN", "MANAGER", "OPERATOR", "READER"):
        _, email = await _user_in(platform, [(t.id, role, "TENANT"), (s.id, role, "TENANT")])
        callers[role] = Caller(await api.token(email, PASSWORD, t.id), closed)
    for child in (t, s):
        await api.gql('mutation { createRole(name: "INVENTORY", permissions: ["devices:read", "devices:write"]) '
                      "{ name } }", token=child.token, tenant=child.id)
    _, email = await _user_in(platform, [(t.id, "INVENTORY", "TENANT"), (s.id, "INVENTORY", "TENANT")])
    callers["custom role (devices:read+write)"] = Caller(await api.token(email, PASSWORD, t.id), closed)
    scoped_id, email = await _user_in(platform, [(t.id, "MANAGER", "TENANT"), (s.id, "MANAGER", "TENANT")])
    for child in (t, s):
        group = (await api.gql('mutation { createGroup(name: "g") { id } }', token=child.token,
                               tenant=child.id)).data["createGroup"]["id"]
        await api.gql("mutation($u: ID!, $g: [ID!]) { setMemberGroups(userId: $u, groupIds: $g) { groupIds } }",
                      {"u": scoped_id, "g": [group]}, token=child.token, tenant=child.id)
    callers["group-scoped MANAGER"] = Caller(await api.token(email, PASSWORD, t.id), closed)
    for tree, name in ((closed, "parent-level ADMIN, parentAccess MANAGEMENT_ONLY"),
                       (opened, "parent-level ADMIN, parentAccess FULL")):
        _, email = await _user_in(platform, [(tree.enterprise.id, "ADMIN", "SUBTREE")])
        callers[name] = Caller(await api.token(email, PASSWORD, tree.enterprise.id), tree)
    callers["management ADMIN (no SUBTREE scope)"] = Caller(operator_token, closed)

    every = '["tenant:admin", "devices:read", "devices:write", "measurements:write", "events:write", ' \
            '"alarms:write", "operations:write"]'
    token = (await api.gql(f'mutation {{ createApiToken(name: "all", permissions: {every}) {{ token }} }}',
                           token=t.token, tenant=t.id)).data["createApiToken"]["token"]
    callers["API token (ADMIN's, all permissions)"] = Caller(token, closed)
    creator_id, email = await _user_in(platform, [(t.id, "ADMIN", "TENANT")])
    creator = await api.token(email, PASSWORD, t.id)
    token = (await api.gql(f'mutation {{ createApiToken(name: "all", permissions: {every}) {{ token }} }}',
                           token=creator, tenant=t.id)).data["createApiToken"]["token"]
    demoted = await api.gql('mutation($u: ID!) { setMemberRole(userId: $u, role: "READER") { role } }',
                            {"u": creator_id}, token=t.token, tenant=t.id)
    assert demoted.data["setMemberRole"]["role"] == "READER"
    callers["API token whose creator is now READER"] = Caller(token, closed)

    device = (await api.gql('mutation { createDevice(input: {name: "agent"}) { id } }', token=t.token,
                            tenant=t.id)).data["createDevice"]["id"]
    token = (await api.gql("mutation($d: ID!) { createDeviceToken(deviceId: $d) { token } }", {"d": device},
                           token=t.token, tenant=t.id)).data["createDeviceToken"]["token"]
    callers["device token"] = Caller(token, closed)

    await _configure(api, closed.enterprise.token, closed.enterprise.id, idp, inherit=True, defaultRole="ADMIN")
    await _configure(api, t.token, t.id, idp, defaultRole="MANAGER")
    idp.user = {"sub": unique("sso"), "email": f"{unique('sso')}@matrix.test"}
    signed = await _sign_in(http, t.id)
    assert signed.status_code == 200, signed.text
    callers["SSO user (T's provider: MANAGER)"] = Caller(signed.json()["accessToken"], closed)
    idp.user = {"sub": unique("sso"), "email": f"{unique('sso')}@matrix.test"}
    signed = await _sign_in(http, s.id)  # S has no provider of its own: E's is inherited
    assert signed.status_code == 200, signed.text
    callers["inherited-SSO user (E's provider: ADMIN)"] = Caller(signed.json()["accessToken"], closed)

    suspended = await world.tenant(closed.enterprise)
    sibling = await world.tenant(closed.enterprise)
    _, email = await _user_in(platform, [(suspended.id, "ADMIN", "TENANT"), (sibling.id, "ADMIN", "TENANT")])
    token = await api.token(email, PASSWORD, suspended.id)
    await api.gql("mutation($id: ID!) { suspendTenant(id: $id) { status } }", {"id": suspended.id},
                  token=closed.enterprise.token, tenant=closed.enterprise.id)
    callers["user of a suspended tenant"] = Caller(token, Tree(closed.enterprise, suspended, sibling, "FULL"))
    return callers


_seq = itertools.count()


def _outcome(body: dict[str, Any]) -> str:
    errors = body.get("errors") or []
    return str(errors[0]["extensions"]["code"]) if errors else A


def _operations(api: Api, http: httpx.AsyncClient) -> dict[str, Callable[[Caller], Awaitable[str]]]:
    async def gql(caller: Caller, query: str, variables: dict[str, Any] | None = None) -> str:
        return _outcome((await api.gql(query, variables, token=caller.token, tenant=caller.tree.t.id)).body)

    async def fresh_device(caller: Caller) -> str:
        tree = caller.tree
        created = await api.gql(f'mutation {{ createDevice(input: {{name: "d{next(_seq)}"}}) {{ id }} }}',
                                token=tree.t.token, tenant=tree.t.id)
        return str(created.data["createDevice"]["id"]) if "errors" not in created.body else nowhere(tree.t)

    async def copy(caller: Caller) -> str:
        device = await fresh_device(caller)
        return await gql(caller, """mutation($s: ID!, $t: ID!, $d: ID!) { copyData(input: {sourceTenantId: $s,
            targetTenantId: $t, deviceIds: [$d], include: [INVENTORY]}) { status } }""",
                         {"s": caller.tree.t.id, "t": caller.tree.s.id, "d": device})

    async def migrate(caller: Caller) -> str:
        device = await fresh_device(caller)
        return await gql(caller, """mutation($s: ID!, $t: ID!, $d: ID!) { migrateDevices(deviceIds: [$d],
            targetTenantId: $t, sourceTenantId: $s) { moved { name } } }""",
                         {"s": caller.tree.t.id, "t": caller.tree.s.id, "d": device})

    async def shares(caller: Caller) -> str:
        device = await fresh_device(caller)
        return await gql(caller, """mutation($t: ID!, $d: ID!) { proposeShare(input: {targetTenantId: $t,
            deviceIds: [$d], include: [ALARMS]}) { state } }""", {"t": caller.tree.s.id, "d": device})

    async def export(caller: Caller) -> str:
        response = await http.get("/export/usage.csv", params={"from": "2026-01-01", "to": "2026-01-02"},
                                  headers={"authorization": f"Bearer {caller.token}", "x-tenant-id": caller.tree.t.id})
        return A if response.status_code == 200 else _outcome(response.json())

    return {
        "mgmt read": lambda c: gql(c, "{ tenant { id } }"),
        "mgmt write": lambda c: gql(c, f"mutation {{ setParentAccess(policy: {c.tree.policy}) {{ parentAccess }} }}"),
        "data read": lambda c: gql(c, "{ devices { totalCount } }"),
        "data write": lambda c: gql(c, 'mutation { createDevice(input: {name: "w"}) { id } }'),
        "people": lambda c: gql(c, 'mutation($e: String!) { inviteMember(email: $e, role: "READER") { id } }',
                                {"e": f"{unique('inv')}@matrix.test"}),
        "tokens": lambda c: gql(c, 'mutation { createApiToken(name: "n", permissions: ["devices:read"]) { token } }'),
        "sso": lambda c: gql(c, """mutation { configureSingleSignOn(input: {issuer: "https://idp.example.com",
            clientId: "c", clientSecret: "s", roleMapping: {}}) { issuer } }"""),
        "copy": copy,
        "migrate": migrate,
        "usage": lambda c: gql(c, '{ usage(from: "2026-01-01", to: "2026-01-02") { deviceCount } }'),
        # By global id: the same rights as the typed reads (a node of T, looked up from T).
        "node": lambda c: gql(c, "query($i: ID!) { node(id: $i) { id } }", {"i": nowhere(c.tree.t)}),
        # Where T lives (Citus node, size): the operator's alone, never a tenant's callers.
        "placement": lambda c: gql(c, "{ tenant { placement { node } } }"),
        # The change log: reading T's device changes; a webhook of T; a standing share from T into S.
        "changes": lambda c: gql(c, "{ changes(types: [DEVICE]) { pageInfo { endCursor } } }"),
        "webhooks": lambda c: gql(c, 'mutation { createWebhook(input: {url: "http://127.0.0.1:9/", types: [DEVICE]}) '
                                     "{ secret } }"),
        "shares": shares,
        "export": export,
        "options": lambda c: gql(c, 'mutation { setTenantOption(input: {category: "m", key: "k", value: "v"}) '
                                    "{ isSet } }"),
    }


async def test_authorization_matrix(api: Api, world: World, platform: Platform, http: httpx.AsyncClient,
                                    provider: FakeProvider, operator_token: str) -> None:
    callers = await _callers(api, world, platform, http, provider, operator_token)
    operations = _operations(api, http)
    actual: dict[str, tuple[str, ...]] = {}
    for name in EXPECTED:
        actual[name] = tuple([await operations[op](callers[name]) for op in OPERATIONS])
    mismatches = {name: {op: (want, got) for op, want, got in zip(OPERATIONS, EXPECTED[name], actual[name],
                                                                   strict=True) if want != got}
                  for name in EXPECTED}
    assert {k: v for k, v in mismatches.items() if v} == {}
