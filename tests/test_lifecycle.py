"""Suspend (cascading), activate (undoing exactly that cascade) and delete (leaf only, management only)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from app.errors import Conflict
from app.runtime.platform import Platform
from app.services.audit.records import SYSTEM
from app.services.tenants.provisioning import TenantSpec, provision_tenant
from tests.conftest import Api, World

SUSPEND = "mutation($id: ID!) { suspendTenant(id: $id) { id status } }"
ACTIVATE = "mutation($id: ID!) { activateTenant(id: $id) { id status } }"
DELETE = "mutation($id: ID!) { deleteTenant(id: $id) }"


async def _status(api: Api, world: World, tenant_id: str) -> str:
    result = await api.gql(f'{{ tenantById(id: "{tenant_id}") {{ status }} }}', token=world.operator_token,
                           tenant="management")
    return str(result.data["tenantById"]["status"])


async def test_suspension_cascades_and_locks_out_the_subtrees_users(api: Api, world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(ent)
    result = await api.gql(SUSPEND, {"id": ent.id}, token=world.operator_token, tenant="management")
    assert result.data["suspendTenant"]["status"] == "SUSPENDED"
    assert await _status(api, world, child.id) == "SUSPENDED"
    for handle in (ent, child):
        locked = await api.gql("{ tenant { id } }", token=handle.token, tenant=handle.id)
        assert locked.code == "TENANT_SUSPENDED"
        devices = await api.gql("{ devices { edges { node { id } } } }", token=handle.token, tenant=handle.id)
        assert devices.code == "TENANT_SUSPENDED"


async def test_activation_revives_only_what_its_suspension_took_down(api: Api, world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    on_its_own, by_cascade = await world.tenant(ent), await world.tenant(ent)
    await api.gql(SUSPEND, {"id": on_its_own.id}, token=ent.token, tenant=ent.id)
    await api.gql(SUSPEND, {"id": ent.id}, token=world.operator_token, tenant="management")

    # A child cannot be activated under a suspended parent.
    blocked = await api.gql(ACTIVATE, {"id": by_cascade.id}, token=world.operator_token, tenant="management")
    assert blocked.code == "CONFLICT"

    await api.gql(ACTIVATE, {"id": ent.id}, token=world.operator_token, tenant="management")
    assert await _status(api, world, ent.id) == "ACTIVE"
    assert await _status(api, world, by_cascade.id) == "ACTIVE"
    assert await _status(api, world, on_its_own.id) == "SUSPENDED"
    works = await api.gql("{ tenant { status } }", token=by_cascade.token, tenant=by_cascade.id)
    assert works.data["tenant"]["status"] == "ACTIVE"


async def test_a_tenant_cannot_suspend_itself_or_its_parent(api: Api, world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(ent)
    assert (await api.gql(SUSPEND, {"id": ent.id}, token=ent.token, tenant=ent.id)).code == "NOT_FOUND"
    assert (await api.gql(SUSPEND, {"id": ent.id}, token=child.token, tenant=child.id)).code == "NOT_FOUND"


async def test_delete_drops_schema_and_role_and_keeps_the_row(api: Api, world: World, platform: Platform) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    leaf = await world.tenant(ent)

    # Only management deletes, and only leaves.
    assert (await api.gql(DELETE, {"id": leaf.id}, token=ent.token, tenant=ent.id)).code == "FORBIDDEN"
    assert (await api.gql(DELETE, {"id": ent.id}, token=world.operator_token, tenant="management")).code == "CONFLICT"

    deleted = await api.gql(DELETE, {"id": leaf.id}, token=world.operator_token, tenant="management")
    assert deleted.data["deleteTenant"] is True
    async with platform.db.owner.connect() as conn:
        schema = (await conn.execute(text("SELECT count(*) FROM pg_namespace WHERE nspname = :s"),
                                     {"s": f"t_{leaf.id}"})).scalar_one()
        role = (await conn.execute(text("SELECT count(*) FROM pg_roles WHERE rolname = :s"),
                                   {"s": f"t_{leaf.id}"})).scalar_one()
        row = (await conn.execute(text("SELECT status, deleted_at IS NOT NULL FROM tenantry.tenants WHERE id = :t"),
                                  {"t": leaf.id})).one()
        members = (await conn.execute(text("SELECT count(*) FROM tenantry.memberships WHERE tenant_id = :t"),
                                      {"t": leaf.id})).scalar_one()
    assert (schema, role, members) == (0, 0, 0)
    assert tuple(row) == ("DELETED", True)

    # The deleted tenant's users are out; its domain is free again; listing hides it by default.
    gone = await api.gql("{ tenant { id } }", token=leaf.token, tenant=leaf.id)
    assert gone.code == "FORBIDDEN"
    listed = await api.gql("{ tenants { edges { node { id } } } }", token=ent.token, tenant=ent.id)
    assert listed.data["tenants"]["edges"] == []
    with_deleted = await api.gql("{ tenants(filter: {status: DELETED}) { edges { node { id status } } } }",
                                 token=ent.token, tenant=ent.id)
    assert with_deleted.data["tenants"]["edges"] == [{"node": {"id": leaf.id, "status": "DELETED"}}]
    reused = await api.create_subtenant(ent.token, ent.id, domain=leaf.domain, company="Again",
                                        adminEmail=leaf.admin_email)
    assert reused.data["createSubtenant"]["domain"] == leaf.domain
    # Now the enterprise has a live child again, so it still cannot be deleted.
    assert (await api.gql(DELETE, {"id": ent.id}, token=world.operator_token, tenant="management")).code == "CONFLICT"



async def test_no_child_is_created_under_a_parent_suspended_meanwhile(api: Api, world: World,
                                                                      platform: Platform) -> None:
    """The registry is cached, so the parent may still look ACTIVE to the caller; provisioning
    re-reads it under a share lock and refuses."""
    ent = await world.tenant(kind="ENTERPRISE")
    async with platform.db.app.connect() as conn:
        stale = await platform.registry.tenant(conn, ent.id)
    assert stale is not None
    assert stale.status == "ACTIVE"
    await api.gql(SUSPEND, {"id": ent.id}, token=world.operator_token, tenant="management")
    spec = TenantSpec(domain=f"late-{ent.domain}", company="Late", kind="STANDARD", parent=stale,
                      template="standard", admin_email=ent.admin_email)
    with pytest.raises(Conflict, match="not active"):
        await provision_tenant(platform.db.owner, spec, app_role=platform.settings.app_role,
                               tenant_roles_login=platform.settings.tenant_roles_login,
                               invitation_ttl=timedelta(hours=1), actor=SYSTEM)
