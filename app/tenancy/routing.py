"""Routing a request to a tenant: which tenant, whether the caller may enter, as what."""

from __future__ import annotations

from app.auth.principal import Principal, Routed
from app.db.transaction import Executor
from app.errors import Forbidden, InvalidInput, TenantSuspended
from app.services.scope import Scope
from app.tenancy.naming import is_tenant_id
from app.tenancy.registry import Registry


async def route(registry: Registry, db: Executor, principal: Principal, requested: str | None) -> Routed:
    """The tenant from X-Tenant-ID, else the token's default tenant; membership required."""
    tenant_id = requested or principal.default_tenant_id
    if not tenant_id:
        raise InvalidInput("no tenant selected: send the X-Tenant-ID header or log in with a tenantId")
    record = await registry.tenant(db, tenant_id) if is_tenant_id(tenant_id) else None
    member = await registry.membership(db, principal.user_id, tenant_id) if record is not None else None
    via = None
    if member is None and record is not None:
        # A parent-level user: a SUBTREE membership on an ancestor, the nearest one first.
        for ancestor in reversed(record.path[:-1]):
            found = await registry.membership(db, principal.user_id, ancestor)
            if found is not None and found.scope == "SUBTREE":
                member, via = found, ancestor
                break
    # One answer for unknown, deleted and not-a-member: existence is not disclosed.
    if record is None or member is None or record.status == "DELETED":
        raise Forbidden(f"you have no access to tenant {tenant_id}")
    if record.status == "SUSPENDED":
        raise TenantSuspended(f"tenant {tenant_id} is suspended")
    scope = Scope(group_ids=member.group_ids) if via is None else Scope()
    return Routed(principal=principal, tenant=record, role=member.role, scope=scope, via_ancestor=via)
