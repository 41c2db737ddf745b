"""Moving subtenants, promoting and demoting tenants, and tenant options (with sealed secrets)."""

from __future__ import annotations

import csv
import io
import logging
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text

from app.access.acting import management_transaction
from app.runtime.platform import Platform
from app.services.tenants import options as tenant_options
from tests.conftest import Api, TenantHandle, World

MOVE = "mutation($id: ID!, $p: ID!) { moveTenant(id: $id, newParentId: $p) { id depth parent { id } } }"
KIND = "mutation($id: ID!, $k: TenantKind!) { setTenantKind(id: $id, kind: $k) { id kind allowCreateTenants } }"
SET = """mutation($c: String!, $k: String!, $v: String!, $i: Boolean!) {
  setTenantOption(input: {category: $c, key: $k, value: $v, inheritable: $i}) {
    category key value isSet inheritable } }"""
OPTIONS = "query($c: String) { tenantOptions(category: $c) { category key value isSet inheritable definedIn } }"


async def _subtree_member(api: Api, world: World, parent: TenantHandle) -> str:
    user_id, token = await world.member(parent, "ADMIN")
    await api.gql("mutation($u: ID!) { setMemberScope(userId: $u, scope: SUBTREE) { scope } }", {"u": user_id},
                  token=parent.token, tenant=parent.id)
    return token


async def _audited(platform: Platform, tenant_id: str, action: str) -> int:
    async with platform.db.owner.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM tenantry.audit_log WHERE tenant_id = :t AND "
                                            "action = :a"), {"t": tenant_id, "a": action})).scalar_one())


async def test_a_moved_subtree_belongs_to_its_new_parent_at_once(api: Api, world: World, platform: Platform,
                                                                 operator_token: str) -> None:
    old, new = await world.tenant(kind="ENTERPRISE"), await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(old, kind="ENTERPRISE")
    grandchild = await world.tenant(child)
    old_support, new_support = await _subtree_member(api, world, old), await _subtree_member(api, world, new)
    assert (await api.gql("{ tenant { id } }", token=old_support, tenant=grandchild.id)).data
    template = (await api.gql('mutation { createDeviceTemplate(input: {name: "meter", type: "m"}) { id } }',
                              token=old.token, tenant=old.id)).data["createDeviceTemplate"]["id"]
    await api.gql("mutation($t: ID!, $to: [ID!]!) { publishDeviceTemplate(id: $t, tenantIds: $to) { id } }",
                  {"t": template, "to": [child.id, grandchild.id]}, token=old.token, tenant=old.id)
    assert len((await api.gql("{ deviceTemplates { id } }", token=child.token, tenant=child.id))
               .data["deviceTemplates"]) == 1

    moved = await api.gql(MOVE, {"id": child.id, "p": new.id}, token=operator_token, tenant="management")
    assert moved.data["moveTenant"] == {"id": child.id, "depth": 2, "parent": {"id": new.id}}
    seen = await api.gql("query($id: ID!) { tenantById(id: $id) { depth parent { id } } }", {"id": grandchild.id},
                         token=new.token, tenant=new.id)
    assert seen.data["tenantById"] == {"depth": 3, "parent": {"id": child.id}}
    # The old parent and its parent-level members lose the subtree; the new one's gain it.
    assert (await api.gql("query($id: ID!) { tenantById(id: $id) { id } }", {"id": child.id}, token=old.token,
                          tenant=old.id)).data["tenantById"] is None
    assert (await api.gql("{ tenant { id } }", token=old_support, tenant=grandchild.id)).code == "FORBIDDEN"
    assert (await api.gql("{ tenant { id } }", token=new_support, tenant=grandchild.id)).data
    # What the old parent shared stops reaching the moved subtree, in the same transaction.
    for t in (child, grandchild):
        assert (await api.gql("{ deviceTemplates { id } }", token=t.token, tenant=t.id)).data["deviceTemplates"] == []
    for where in (old.id, new.id, child.id):
        assert await _audited(platform, where, "tenant.moved") == 1, where


async def test_moves_refuse_cycles_depth_unfit_parents_limits_and_outsiders(api: Api, world: World,
                                                                           operator_token: str) -> None:
    top = await world.tenant(kind="ENTERPRISE")
    middle = await world.tenant(top, kind="ENTERPRISE")
    leaf = await world.tenant(middle)
    other = await world.tenant(kind="ENTERPRISE")
    deep = await world.tenant(other, kind="ENTERPRISE")
    standard = await world.tenant()

    async def move(tenant: str, parent: str, token: str = operator_token, where: str = "management") -> str:
        result = await api.gql(MOVE, {"id": tenant, "p": parent}, token=token, tenant=where)
        return "ok" if "errors" not in result.body else result.code

    assert await move(top.id, leaf.id) == "INVALID_INPUT"  # under its own descendant
    assert await move(top.id, top.id) == "INVALID_INPUT"  # under itself
    assert await move(middle.id, deep.id) == "INVALID_INPUT"  # leaf would land at depth 4 (limit: 4 levels)
    assert await move(leaf.id, standard.id) == "FORBIDDEN"  # a STANDARD tenant has no subtenants
    await api.gql("mutation($id: ID!) { updateTenant(id: $id, input: {limits: {maxDevices: 5}}) { id } }",
                  {"id": other.id}, token=operator_token, tenant="management")
    assert await move(leaf.id, other.id) == "LIMIT_EXCEEDED"  # a limited pool needs an allocation
    # An ADMIN of the old parent only: the new parent is outside its subtree.
    assert await move(leaf.id, deep.id, top.token, top.id) == "NOT_FOUND"
    assert await move(leaf.id, top.id, middle.token, middle.id) == "NOT_FOUND"
    # An ADMIN of a common ancestor may move within its subtree.
    assert await move(leaf.id, top.id, top.token, top.id) == "ok"
    _, reader = await world.member(top, "READER")
    assert await move(leaf.id, middle.id, reader, top.id) == "FORBIDDEN"


async def test_the_usage_export_names_the_parent_of_each_period(http: httpx.AsyncClient, api: Api, world: World,
                                                               platform: Platform, operator_token: str) -> None:
    old, new = await world.tenant(kind="ENTERPRISE"), await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(old)
    today = datetime.now(UTC).date()
    yesterday = today - timedelta(days=1)
    async with platform.db.owner.begin() as conn:
        await conn.execute(text("INSERT INTO tenantry.usage_daily (tenant_id, day, request_count) VALUES "
                                "(:t, :a, 3)"), {"t": child.id, "a": yesterday})
    await api.gql(MOVE, {"id": child.id, "p": new.id}, token=operator_token, tenant="management")
    exported = await http.get("/export/usage.csv", params={"from": str(yesterday), "to": str(today)},
                              headers={"authorization": f"Bearer {operator_token}", "x-tenant-id": "management"})
    rows = [r for r in csv.DictReader(io.StringIO(exported.text)) if r["tenantId"] == child.id]
    assert [(r["period"], r["parentTenantId"], r["requestCount"]) for r in rows] == [
        (str(yesterday), old.id, "3"), (str(today), new.id, "0")]


async def test_promote_and_demote(api: Api, world: World, operator_token: str) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    standard = await world.tenant(ent)
    create = 'mutation { createSubtenant(input: {domain: "%s", company: "C", adminEmail: "x@y.test"}) { id } }'
    assert (await api.gql(create % "kid-a", token=standard.token, tenant=standard.id)).code == "FORBIDDEN"
    assert (await api.gql(KIND, {"id": standard.id, "k": "ENTERPRISE"}, token=standard.token,
                          tenant=standard.id)).code == "NOT_FOUND"  # not its own decision
    promoted = await api.gql(KIND, {"id": standard.id, "k": "ENTERPRISE"}, token=ent.token, tenant=ent.id)
    assert promoted.data["setTenantKind"] == {"id": standard.id, "kind": "ENTERPRISE", "allowCreateTenants": True}
    kid = await api.gql(create % f"kid-{standard.id}", token=standard.token, tenant=standard.id)
    kid_id = kid.data["createSubtenant"]["id"]
    assert (await api.gql(KIND, {"id": standard.id, "k": "STANDARD"}, token=ent.token,
                          tenant=ent.id)).code == "CONFLICT"  # a live subtenant
    await api.gql("mutation($id: ID!) { deleteTenant(id: $id) }", {"id": kid_id}, token=operator_token,
                  tenant="management")
    demoted = await api.gql(KIND, {"id": standard.id, "k": "STANDARD"}, token=ent.token, tenant=ent.id)
    assert demoted.data["setTenantKind"]["kind"] == "STANDARD"
    assert (await api.gql(KIND, {"id": standard.id, "k": "MANAGEMENT"}, token=operator_token,
                          tenant="management")).code == "INVALID_INPUT"


async def test_options_inherit_where_marked_and_stay_isolated(api: Api, world: World) -> None:
    parent = await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(parent)
    stranger = await world.tenant()
    for key, value, inheritable in (("region", "eu", True), ("plan", "gold", False), ("locale", "de", True)):
        assert (await api.gql(SET, {"c": "cfg", "k": key, "v": value, "i": inheritable}, token=parent.token,
                              tenant=parent.id)).data
    await api.gql(SET, {"c": "cfg", "k": "locale", "v": "fr", "i": False}, token=child.token, tenant=child.id)
    seen = (await api.gql(OPTIONS, {"c": "cfg"}, token=child.token, tenant=child.id)).data["tenantOptions"]
    assert {(o["key"], o["value"], o["definedIn"]) for o in seen} == {("region", "eu", parent.id),
                                                                      ("locale", "fr", child.id)}
    assert (await api.gql(OPTIONS, {}, token=stranger.token, tenant=stranger.id)).data["tenantOptions"] == []
    assert (await api.gql(OPTIONS, {}, token=stranger.token, tenant=parent.id)).code == "FORBIDDEN"
    _, reader = await world.member(child, "READER")
    assert (await api.gql(OPTIONS, {}, token=reader, tenant=child.id)).code == "FORBIDDEN"
    assert (await api.gql(SET, {"c": "cfg", "k": "x", "v": "y", "i": False}, token=parent.token,
                          tenant=child.id)).code == "FORBIDDEN"  # the parent's admin is no member of the child
    deleted = "mutation($c: String!, $k: String!) { deleteTenantOption(category: $c, key: $k) }"
    assert (await api.gql(deleted, {"c": "cfg", "k": "locale"}, token=child.token, tenant=child.id)).data[
        "deleteTenantOption"] is True
    assert (await api.gql(deleted, {"c": "cfg", "k": "locale"}, token=child.token, tenant=child.id)).data[
        "deleteTenantOption"] is False
    after = (await api.gql(OPTIONS, {"c": "cfg"}, token=child.token, tenant=child.id)).data["tenantOptions"]
    assert {(o["key"], o["value"]) for o in after} == {("region", "eu"), ("locale", "de")}  # inherited again
    for bad in ({"c": "", "k": "k"}, {"c": "c c", "k": "k"}, {"c": "c", "k": "x" * 101}):
        assert (await api.gql(SET, {**bad, "v": "v", "i": False}, token=child.token,
                              tenant=child.id)).code == "INVALID_INPUT"


async def test_secret_options_are_never_shown_logged_or_audited(api: Api, world: World, platform: Platform,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    t = await world.tenant()
    secret = "sk-live-9f8e7d6c5b4a"
    with caplog.at_level(logging.DEBUG):
        stored = await api.gql(SET, {"c": "mail", "k": "credentials.password", "v": secret, "i": True},
                               token=t.token, tenant=t.id)
        listed = await api.gql(OPTIONS, {}, token=t.token, tenant=t.id)
        audit = await api.gql("{ auditLog(first: 50) { edges { node { action target changes } } } }",
                              token=t.token, tenant=t.id)
    assert stored.data["setTenantOption"] == {"category": "mail", "key": "credentials.password", "value": None,
                                              "isSet": True, "inheritable": True}
    assert listed.data["tenantOptions"][0]["value"] is None
    for body in (stored.body, listed.body, audit.body):
        assert secret not in str(body)
    assert "option.set" in str(audit.body)
    assert secret not in caplog.text
    async with platform.db.owner.connect() as conn:
        row = (await conn.execute(text("SELECT value, sealed FROM tenantry.tenant_options WHERE tenant_id = :t"),
                                  {"t": t.id})).one()
        audit_rows = (await conn.execute(text("SELECT changes::text FROM tenantry.audit_log WHERE tenant_id = :t"),
                                         {"t": t.id})).scalars().all()
    assert row.value is None
    assert secret.encode() not in bytes(row.sealed)
    assert all(secret not in r for r in audit_rows)
    # Server-side code reads it in clear.
    box = tenant_options.option_box(platform.settings.resolved_secret_key())
    tx = management_transaction(platform.db.app)
    try:
        record = await platform.registry.tenant(tx, t.id)
        assert record is not None
        clear = await tenant_options.secret_value(tx, record, box, category="mail", key="credentials.password")
    finally:
        await tx.finish(commit=False)
    assert clear == secret
