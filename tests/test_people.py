"""People and access: members, delegation, invitations (48 h, clock injected), API tokens, audit, throttling."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from app.main import create_app
from app.runtime.platform import Platform
from tests.conftest import PASSWORD, Api, World, assert_denied, unique

MEMBERS = "{ members { edges { node { user { id email } role scope } } } }"
SET_ROLE = "mutation($u: ID!, $r: String!) { setMemberRole(userId: $u, role: $r) { role } }"
INVITE = "mutation($e: String!, $r: String!) { inviteMember(email: $e, role: $r) { id email role status expiresAt } }"
ACCEPT = "mutation($t: String!) { acceptInvitation(token: $t) { tenant { id } role user { email } } }"


async def _latest_token(platform: Platform, email: str) -> str:
    async with platform.db.owner.connect() as conn:
        body = (await conn.execute(text("SELECT body FROM tenantry.outbox WHERE lower(recipient) = lower(:e) "
                                        "ORDER BY id DESC LIMIT 1"), {"e": email})).scalar_one()
    match = re.search(r"(tinv_[A-Za-z0-9_-]+)", body)
    assert match, body
    return match.group(1)


async def _user(api: Api, platform: Platform, email: str) -> str:
    async with platform.db.owner.connect() as conn:
        await conn.execute(text("INSERT INTO tenantry.users (email, password_hash) VALUES (:e, :h)"),
                           {"e": email, "h": await platform.passwords.hash(PASSWORD)})
    return await api.token(email, PASSWORD)


async def test_members_and_the_last_admin(api: Api, world: World) -> None:
    t = await world.tenant()
    reader_id, _ = await world.member(t, "READER")
    listed = await api.gql(MEMBERS, token=t.token, tenant=t.id)
    roles = {e["node"]["user"]["email"]: e["node"]["role"] for e in listed.data["members"]["edges"]}
    assert roles[t.admin_email] == "ADMIN"
    assert "READER" in roles.values()
    me = await api.gql("{ me { user { id } } }", token=t.token)
    admin_id = me.data["me"]["user"]["id"]
    assert (await api.gql(SET_ROLE, {"u": admin_id, "r": "READER"}, token=t.token, tenant=t.id)).code == "CONFLICT"
    assert (await api.gql("mutation($u: ID!) { removeMember(userId: $u) }", {"u": admin_id}, token=t.token,
                          tenant=t.id)).code == "CONFLICT"
    promoted = await api.gql(SET_ROLE, {"u": reader_id, "r": "ADMIN"}, token=t.token, tenant=t.id)
    assert promoted.data["setMemberRole"]["role"] == "ADMIN"
    assert (await api.gql(SET_ROLE, {"u": reader_id, "r": "NO_SUCH_ROLE"}, token=t.token, tenant=t.id)).code == \
        "INVALID_INPUT"
    # With a second ADMIN the first may step down.
    assert (await api.gql(SET_ROLE, {"u": admin_id, "r": "MANAGER"}, token=t.token, tenant=t.id)).data
    removed = await api.gql("mutation($u: ID!) { removeMember(userId: $u) }", {"u": admin_id}, token=t.token,
                            tenant=t.id)
    assert removed.code == "FORBIDDEN"  # now a MANAGER: no tenant:admin any more, at the next request


async def test_delegation_grants_only_what_the_granter_holds(api: Api, world: World) -> None:
    t = await world.tenant()
    await api.gql('mutation { createRole(name: "PEOPLE_ADMIN", permissions: ["tenant:admin", "devices:read"]) '
                  "{ name } }", token=t.token, tenant=t.id)
    _, people_admin = await world.member(t, "PEOPLE_ADMIN")
    reader_id, _ = await world.member(t, "READER")
    for query, variables in (
        (INVITE, {"e": f"{unique('x')}@x.test", "r": "MANAGER"}),
        (SET_ROLE, {"u": reader_id, "r": "OPERATOR"}),
        ('mutation { createApiToken(name: "t", permissions: ["devices:write"]) { token } }', {}),
        ('mutation { createRole(name: "MORE", permissions: ["devices:write"]) { name } }', {}),
    ):
        assert (await api.gql(query, variables, token=people_admin, tenant=t.id)).code == "FORBIDDEN", query
    ok = await api.gql(INVITE, {"e": f"{unique('x')}@x.test", "r": "READER"}, token=people_admin, tenant=t.id)
    assert ok.data["inviteMember"]["role"] == "READER"


async def test_invitation_lifecycle(http: httpx.AsyncClient, api: Api, world: World, platform: Platform) -> None:
    t = await world.tenant()
    email = f"{unique('Invitee')}@Example.test"
    invited = await api.gql(INVITE, {"e": email, "r": "OPERATOR"}, token=t.token, tenant=t.id)
    assert invited.data["inviteMember"]["status"] == "PENDING"
    token = await _latest_token(platform, email)

    preview = await api.gql("query($t: String!) { invitation(token: $t) { tenantDomain role status } }", {"t": token})
    assert preview.data["invitation"] == {"tenantDomain": t.domain, "role": "OPERATOR", "status": "PENDING"}
    assert (await api.gql('{ invitation(token: "tinv_nope") { role } }')).data["invitation"] is None

    other = await _user(api, platform, f"{unique('other')}@x.test")
    assert (await api.gql(ACCEPT, {"t": token}, token=other)).code == "FORBIDDEN"
    invitee = await _user(api, platform, email.lower())  # emails match case-insensitively
    accepted = await api.gql(ACCEPT, {"t": token}, token=invitee)
    assert accepted.data["acceptInvitation"]["role"] == "OPERATOR"
    assert (await api.gql("{ tenant { id } }", token=invitee, tenant=t.id)).data["tenant"]["id"] == t.id
    assert (await api.gql(ACCEPT, {"t": token}, token=invitee)).code == "CONFLICT"  # single use

    # Expiry at 48 hours, with the clock moved instead of slept.
    late_email = f"{unique('late')}@x.test"
    await api.gql(INVITE, {"e": late_email, "r": "READER"}, token=t.token, tenant=t.id)
    late_token = await _latest_token(platform, late_email)
    late_user = await _user(api, platform, late_email)
    future = datetime.now(UTC) + timedelta(hours=48, minutes=1)
    later = create_app(platform=dataclasses.replace(platform, clock=lambda: future))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=later), base_url="http://t") as client:
        response = await client.post("/graphql", json={"query": ACCEPT, "variables": {"t": late_token}},
                                     headers={"authorization": f"Bearer {late_user}"})
        assert response.json()["errors"][0]["extensions"]["code"] == "INVALID_INPUT"
        assert "expired" in response.json()["errors"][0]["message"]
    just_in_time = create_app(platform=dataclasses.replace(
        platform, clock=lambda: datetime.now(UTC) + timedelta(hours=47, minutes=59)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=just_in_time), base_url="http://t") as client:
        response = await client.post("/graphql", json={"query": ACCEPT, "variables": {"t": late_token}},
                                     headers={"authorization": f"Bearer {late_user}"})
        assert response.json()["data"]["acceptInvitation"]["role"] == "READER"


async def test_invitations_can_be_listed_resent_and_revoked(api: Api, world: World, platform: Platform) -> None:
    t = await world.tenant()
    email = f"{unique('r')}@x.test"
    invitation_id = (await api.gql(INVITE, {"e": email, "r": "READER"}, token=t.token,
                                   tenant=t.id)).data["inviteMember"]["id"]
    first_token = await _latest_token(platform, email)
    pending = await api.gql("{ invitations { edges { node { id email } } } }", token=t.token, tenant=t.id)
    assert [e["node"]["id"] for e in pending.data["invitations"]["edges"]] == [invitation_id]
    await api.gql("mutation($id: ID!) { resendInvitation(id: $id) { id } }", {"id": invitation_id}, token=t.token,
                  tenant=t.id)
    second_token = await _latest_token(platform, email)
    assert second_token != first_token
    user = await _user(api, platform, email)
    assert (await api.gql(ACCEPT, {"t": first_token}, token=user)).code == "NOT_FOUND"  # replaced
    await api.gql("mutation($id: ID!) { revokeInvitation(id: $id) }", {"id": invitation_id}, token=t.token,
                  tenant=t.id)
    assert (await api.gql(ACCEPT, {"t": second_token}, token=user)).code == "CONFLICT"
    already = await api.gql(INVITE, {"e": t.admin_email, "r": "READER"}, token=t.token, tenant=t.id)
    assert already.code == "CONFLICT"


async def test_a_parents_automation_works_with_an_api_token(http: httpx.AsyncClient, api: Api,
                                                            world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    created = await api.gql('mutation { createApiToken(name: "billing bot", permissions: ["tenant:admin"]) '
                            "{ token apiToken { id name permissions lastUsedAt } } }", token=ent.token, tenant=ent.id)
    token = created.data["createApiToken"]["token"]
    assert token.startswith(f"tapi_{ent.id}_")
    provisioned = await api.create_subtenant(token, ent.id, domain=unique("bot"), company="By bot",
                                             adminEmail=ent.admin_email)
    assert provisioned.data["createSubtenant"]["id"]
    export = await http.get("/export/usage.csv", params={"from": "2026-01-01", "to": "2026-01-31"},
                            headers={"authorization": f"Bearer {token}"})
    assert export.status_code == 200
    # Only what it was given: no device data.
    assert (await api.gql("{ devices { totalCount } }", token=token)).code == "FORBIDDEN"
    listed = await api.gql("{ apiTokens { id lastUsedAt } }", token=ent.token, tenant=ent.id)
    assert listed.data["apiTokens"][0]["lastUsedAt"] is not None
    # Only in its own tenant, and revocation takes effect on the next request.
    other = await world.tenant()
    assert (await api.gql("{ tenant { id } }", token=token, tenant=other.id)).code == "FORBIDDEN"
    token_id = created.data["createApiToken"]["apiToken"]["id"]
    assert (await api.gql("mutation($id: ID!) { revokeApiToken(id: $id) }", {"id": token_id}, token=ent.token,
                          tenant=ent.id)).data["revokeApiToken"] is True
    assert (await api.gql("{ tenant { id } }", token=token)).code == "UNAUTHENTICATED"
    past = await api.gql('mutation { createApiToken(name: "old", permissions: ["devices:read"], '
                         'expiresAt: "2020-01-01T00:00:00Z") { token } }', token=ent.token, tenant=ent.id)
    assert past.code == "INVALID_INPUT"


async def test_audit_log_shows_the_subtree_management_plane(api: Api, world: World, platform: Platform) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(ent)
    await api.gql("mutation($id: ID!) { suspendTenant(id: $id) { id } }", {"id": child.id}, token=ent.token,
                  tenant=ent.id)
    log = await api.gql('{ auditLog(first: 50, filter: {action: "tenant."}) { edges { node { tenantId action actor '
                        "changes } } } }", token=ent.token, tenant=ent.id)
    actions = {(e["node"]["tenantId"], e["node"]["action"]) for e in log.data["auditLog"]["edges"]}
    assert (child.id, "tenant.suspended") in actions
    assert (child.id, "tenant.created") in actions
    suspended = next(e["node"] for e in log.data["auditLog"]["edges"] if e["node"]["action"] == "tenant.suspended")
    assert suspended["changes"] == [{"attribute": "status", "previous": "ACTIVE", "new": "SUSPENDED"}]
    assert suspended["actor"].startswith("user:")
    await api.gql("mutation($id: ID!) { activateTenant(id: $id) { id } }", {"id": child.id}, token=ent.token,
                  tenant=ent.id)
    upward = await api.gql("{ auditLog { edges { node { tenantId } } } }", token=child.token, tenant=child.id)
    assert {e["node"]["tenantId"] for e in upward.data["auditLog"]["edges"]} == {child.id}
    # Append-only: the application role may not rewrite history.
    async with platform.db.app.connect() as conn:
        for statement in ("UPDATE tenantry.audit_log SET action = 'x'", "DELETE FROM tenantry.audit_log"):
            with pytest.raises(ProgrammingError, match="permission denied"):
                await conn.execute(text(statement))
            await conn.rollback()


async def test_failed_logins_are_throttled_and_audited(api: Api, world: World, platform: Platform) -> None:
    t = await world.tenant()
    query = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }"
    for _ in range(10):
        assert (await api.gql(query, {"e": t.admin_email, "p": "wrong-password"})).code == "UNAUTHENTICATED"
    blocked = await api.gql(query, {"e": t.admin_email, "p": PASSWORD})  # even the right password, for now
    assert blocked.code == "RATE_LIMITED"
    assert blocked.errors[0]["extensions"]["limit"] == "loginAttempts"
    other = await world.tenant()
    assert (await api.gql(query, {"e": other.admin_email, "p": PASSWORD})).data["login"]["accessToken"]
    async with platform.db.owner.connect() as conn:
        failed = (await conn.execute(text("SELECT count(*) FROM tenantry.audit_log WHERE action = 'login.failed' "
                                          "AND target = :e"), {"e": t.admin_email})).scalar_one()
    assert failed == 10
    await platform.login_throttle.succeeded(t.admin_email, None)  # leave the shared throttle clean for other tests


async def test_parent_level_users_manage_descendants_and_reach_data_only_with_full_access(
    api: Api, world: World, platform: Platform
) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(ent)
    await api.gql('mutation { createDevice(input: {name: "child-device"}) { id } }', token=child.token,
                  tenant=child.id)
    support_id, support = await world.member(ent, "ADMIN")
    # A plain (TENANT) membership on the parent reaches nothing below it.
    assert (await api.gql("{ tenant { id } }", token=support, tenant=child.id)).code == "FORBIDDEN"
    scoped = await api.gql("mutation($u: ID!) { setMemberScope(userId: $u, scope: SUBTREE) { scope } }",
                           {"u": support_id}, token=ent.token, tenant=ent.id)
    assert scoped.data["setMemberScope"]["scope"] == "SUBTREE"

    # SUBTREE: the management plane of every descendant…
    assert (await api.gql("{ tenant { id parentAccess } }", token=support, tenant=child.id)).data["tenant"] == {
        "id": child.id, "parentAccess": "MANAGEMENT_ONLY"}
    assert (await api.gql("{ members { edges { node { role } } } }", token=support, tenant=child.id)).data
    # …but the data only once the descendant's own admins allow it.
    devices = "{ devices { edges { node { name } } } }"
    assert (await api.gql(devices, token=support, tenant=child.id)).code == "FORBIDDEN"
    assert (await api.gql("mutation { setParentAccess(policy: FULL) { parentAccess } }", token=support,
                          tenant=child.id)).code == "FORBIDDEN"  # not the parent's decision
    opened = await api.gql("mutation { setParentAccess(policy: FULL) { parentAccess } }", token=child.token,
                           tenant=child.id)
    assert opened.data["setParentAccess"]["parentAccess"] == "FULL"
    seen = await api.gql(devices, token=support, tenant=child.id)
    assert seen.data["devices"]["edges"] == [{"node": {"name": "child-device"}}]

    # Every such access is audited in the descendant.
    async with platform.db.owner.connect() as conn:
        audited = (await conn.execute(text("SELECT count(*) FROM tenantry.audit_log WHERE tenant_id = :t AND "
                                           "action = 'parent_access' AND actor_id = :u"),
                                      {"t": child.id, "u": support_id})).scalar_one()
    assert audited >= 4


async def test_data_plane_audit_stays_in_the_tenant(api: Api, world: World, platform: Platform) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(ent)
    device = (await api.gql('mutation { createDevice(input: {name: "d"}) { id } }', token=child.token,
                            tenant=child.id)).data["createDevice"]["id"]
    await api.gql('mutation($d: ID!) { raiseAlarm(input: {deviceId: $d, type: "t", severity: MAJOR, text: "x"}) '
                  "{ id } }", {"d": device}, token=child.token, tenant=child.id)
    own = await api.gql("{ auditLog(filter: {plane: DATA}) { edges { node { action target tenantId } } } }",
                        token=child.token, tenant=child.id)
    assert [e["node"]["action"] for e in own.data["auditLog"]["edges"]] == ["alarm.raised", "device.created"]
    parents_view = await api.gql("{ auditLog(first: 100) { edges { node { action } } } }", token=ent.token,
                                 tenant=ent.id)
    assert not {e["node"]["action"] for e in parents_view.data["auditLog"]["edges"]} & {"alarm.raised",
                                                                                       "device.created"}
    # The tenant role appends and reads, but cannot rewrite its audit log.
    for statement in ("UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log"):
        await assert_denied(platform, child.id, statement)


async def test_another_tenants_people_and_tokens_are_out_of_reach(api: Api, world: World,
                                                                  platform: Platform) -> None:
    a, b = await world.tenant(), await world.tenant()
    b_token = (await api.gql('mutation { createApiToken(name: "b", permissions: ["devices:read"]) '
                             "{ apiToken { id } } }", token=b.token, tenant=b.id)).data["createApiToken"]["apiToken"]
    b_invite = (await api.gql(INVITE, {"e": f"{unique('b')}@x.test", "r": "READER"}, token=b.token,
                              tenant=b.id)).data["inviteMember"]
    me_b = (await api.gql("{ me { user { id } } }", token=b.token)).data["me"]["user"]["id"]
    for query in (MEMBERS, "{ invitations { edges { node { id } } } }", "{ apiTokens { id } }",
                  "{ auditLog { edges { node { id } } } }"):
        assert (await api.gql(query, token=a.token, tenant=b.id)).code == "FORBIDDEN", query
    for mutation, variables in (
        ("mutation($id: ID!) { revokeApiToken(id: $id) }", {"id": b_token["id"]}),
        ("mutation($id: ID!) { revokeInvitation(id: $id) }", {"id": b_invite["id"]}),
        ("mutation($id: ID!) { resendInvitation(id: $id) { id } }", {"id": b_invite["id"]}),
        ("mutation($id: ID!) { removeMember(userId: $id) }", {"id": me_b}),
        ('mutation($id: ID!) { setMemberRole(userId: $id, role: "READER") { role } }', {"id": me_b}),
    ):
        assert (await api.gql(mutation, variables, token=a.token, tenant=a.id)).code == "NOT_FOUND", mutation
    still = await api.gql("{ apiTokens { id } invitations { edges { node { id } } } }", token=b.token, tenant=b.id)
    assert [t["id"] for t in still.data["apiTokens"]] == [b_token["id"]]
    assert [e["node"]["id"] for e in still.data["invitations"]["edges"]] == [b_invite["id"]]
