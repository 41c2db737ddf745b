"""The management plane through GraphQL: the tenant tree, its rules, and each tenant's lifecycle."""

from __future__ import annotations

from sqlalchemy import text

from app.runtime.platform import Platform
from tests.conftest import PASSWORD, Api, World, unique

TENANT_FIELDS = "id domain company kind status depth allowCreateTenants parentId schemaVersion"


async def test_operator_builds_an_enterprise_tree_and_reads_it_back(api: Api, world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(ent)
    grandchild_denied = await api.create_subtenant(child.token, child.id, domain=unique("gc"), company="X",
                                                   adminEmail="x@x.test", adminPassword=PASSWORD)
    assert grandchild_denied.code == "FORBIDDEN"

    listed = await api.gql("{ tenants { totalCount edges { node { id parentId kind } } } }",
                           token=ent.token, tenant=ent.id)
    assert listed.data["tenants"]["totalCount"] == 1
    assert [e["node"]["id"] for e in listed.data["tenants"]["edges"]] == [child.id]

    read = await api.gql(f'{{ tenantById(id: "{child.id}") {{ {TENANT_FIELDS} parent {{ id }} }} }}',
                         token=ent.token, tenant=ent.id)
    node = read.data["tenantById"]
    assert node["kind"] == "STANDARD"
    assert node["depth"] == 2
    assert node["parent"]["id"] == ent.id
    assert node["allowCreateTenants"] is False
    assert node["schemaVersion"]

    # The operator sees the whole subtree, the enterprise below it included.
    everything = await api.gql(f'{{ tenants(first: 500, filter: {{ parentId: "{ent.id}" }}) '
                               "{ edges { node { id } } } }", token=world.operator_token, tenant="management")
    assert [e["node"]["id"] for e in everything.data["tenants"]["edges"]] == [child.id]


async def test_routed_tenant_query_answers_the_callers_own_tenant(api: Api, world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    result = await api.gql("{ tenant { id kind children { edges { node { id } } } } }", token=ent.token,
                           tenant=ent.id)
    assert result.data["tenant"] == {"id": ent.id, "kind": "ENTERPRISE", "children": {"edges": []}}


async def test_update_changes_fields_and_rejects_a_taken_domain(api: Api, world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    a, b = await world.tenant(ent), await world.tenant(ent)
    mutation = """mutation($id: ID!, $i: UpdateTenantInput!) { updateTenant(id: $id, input: $i) {
                    company contactEmail customProperties limits { maxDevices storageBytes } } }"""
    updated = await api.gql(mutation, {"id": a.id, "i": {
        "company": "Renamed", "contactEmail": "ops@a.test", "customProperties": {"plan": "gold"},
        "limits": {"maxDevices": 10, "storageBytes": 5_000_000_000}}}, token=ent.token, tenant=ent.id)
    assert updated.data["updateTenant"] == {"company": "Renamed", "contactEmail": "ops@a.test",
                                            "customProperties": {"plan": "gold"},
                                            "limits": {"maxDevices": 10, "storageBytes": 5_000_000_000}}
    clash = await api.gql(mutation, {"id": a.id, "i": {"domain": b.domain}}, token=ent.token, tenant=ent.id)
    assert clash.code == "CONFLICT"
    bad = await api.gql(mutation, {"id": a.id, "i": {"allowCreateTenants": True}}, token=ent.token, tenant=ent.id)
    assert bad.code == "INVALID_INPUT"


async def test_bad_provisioning_input_gets_clear_codes(api: Api, world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    base = {"company": "C", "adminEmail": "a@b.test", "adminPassword": PASSWORD}
    dup = await api.create_subtenant(ent.token, ent.id, domain=ent.domain, **base)
    assert dup.code == "CONFLICT"
    for domain in ("A", "x", "-ab", "ab-", "has space", "é-domain", "a" * 64):
        bad = await api.create_subtenant(ent.token, ent.id, domain=domain, **base)
        assert bad.code == "INVALID_INPUT", domain
    template = await api.create_subtenant(ent.token, ent.id, domain=unique("tpl"), template="nope", **base)
    assert template.code == "INVALID_INPUT"
    assert "unknown template" in template.errors[0]["message"]
    email = await api.create_subtenant(ent.token, ent.id, domain=unique("em"), company="C",
                                       adminEmail="not-an-email")
    assert email.code == "INVALID_INPUT"
    weak = await api.create_subtenant(ent.token, ent.id, domain=unique("pw"), company="C",
                                      adminEmail=f"{unique('u')}@x.test", adminPassword="short")
    assert weak.code == "INVALID_INPUT"


async def test_depth_is_limited_to_four_levels(api: Api, world: World) -> None:
    level1 = await world.tenant(kind="ENTERPRISE")
    level2 = await world.tenant(level1, kind="ENTERPRISE")
    level3 = await world.tenant(level2, kind="ENTERPRISE")
    too_deep = await api.create_subtenant(level3.token, level3.id, domain=unique("deep"), company="C",
                                          adminEmail="d@d.test", adminPassword=PASSWORD)
    assert too_deep.code == "INVALID_INPUT"
    assert too_deep.errors[0]["extensions"]["maxDepth"] == 4


async def test_enterprise_needs_allow_create_tenants_set_by_its_parent(api: Api, world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE", allowCreateTenants=False)
    denied = await api.create_subtenant(ent.token, ent.id, domain=unique("n"), company="C",
                                        adminEmail="n@n.test", adminPassword=PASSWORD)
    assert denied.code == "FORBIDDEN"
    # The enterprise's own admin cannot grant itself the right; its parent can.
    own = await api.gql('mutation($id: ID!) { updateTenant(id: $id, input: {allowCreateTenants: true}) { id } }',
                        {"id": ent.id}, token=ent.token, tenant=ent.id)
    assert own.code == "NOT_FOUND"
    granted = await api.gql('mutation($id: ID!) { updateTenant(id: $id, input: {allowCreateTenants: true}) '
                            "{ allowCreateTenants } }", {"id": ent.id}, token=world.operator_token,
                            tenant="management")
    assert granted.data["updateTenant"]["allowCreateTenants"] is True
    allowed = await api.create_subtenant(ent.token, ent.id, domain=unique("y"), company="C",
                                         adminEmail="y@y.test", adminPassword=PASSWORD)
    assert allowed.data["createSubtenant"]["parentId"] == ent.id


async def test_only_admins_manage_tenants(api: Api, world: World, platform: Platform) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    reader_email = f"{unique('reader')}@x.test"
    async with platform.db.owner.connect() as conn:
        await conn.execute(text(
            "INSERT INTO tenantry.users (email, password_hash) VALUES (:e, :h)"),
            {"e": reader_email, "h": await platform.passwords.hash(PASSWORD)})
        await conn.execute(text(
            "INSERT INTO tenantry.memberships (user_id, tenant_id, role) "
            "SELECT id, :t, 'READER' FROM tenantry.users WHERE email = :e"), {"t": ent.id, "e": reader_email})
    reader = await api.token(reader_email, PASSWORD, ent.id)
    denied = await api.create_subtenant(reader, ent.id, domain=unique("r"), company="C", adminEmail="r@r.test",
                                        adminPassword=PASSWORD)
    assert denied.code == "FORBIDDEN"
    listing = await api.gql("{ tenants { edges { node { id } } } }", token=reader, tenant=ent.id)
    assert listing.code == "FORBIDDEN"


async def test_first_admin_existing_user_new_user_or_invitation(api: Api, world: World, platform: Platform) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    # An existing user (by email, any case) just becomes ADMIN; their password is untouched.
    existing = await api.create_subtenant(ent.token, ent.id, domain=unique("ex"), company="C",
                                          adminEmail=ent.admin_email.upper(), adminPassword="another-pass-9")
    tenant_id = existing.data["createSubtenant"]["id"]
    assert await api.token(ent.admin_email, PASSWORD, tenant_id)
    # A new email without a password: an invitation, no user.
    invited_email = f"{unique('inv')}@x.test"
    invited = await api.create_subtenant(ent.token, ent.id, domain=unique("in"), company="C",
                                         adminEmail=invited_email)
    invited_tenant = invited.data["createSubtenant"]["id"]
    async with platform.db.owner.connect() as conn:
        users = (await conn.execute(text("SELECT count(*) FROM tenantry.users WHERE email = :e"),
                                    {"e": invited_email})).scalar_one()
        invitation = (await conn.execute(text(
            "SELECT role, expires_at - created_at FROM tenantry.invitations WHERE tenant_id = :t AND email = :e"),
            {"t": invited_tenant, "e": invited_email})).one()
    assert users == 0
    assert invitation[0] == "ADMIN"
    assert invitation[1].total_seconds() == 48 * 3600
