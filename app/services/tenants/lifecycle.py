"""Moving a subtenant to another parent, and promoting or demoting a tenant between STANDARD
and ENTERPRISE.

A move is one transaction — the request's own, whose management and tenant planes share one
connection (`app.access.acting`) — that reads as named steps: lock → check → re-parent the
subtree → drop what the old ancestors shared with it → record → audit. Who may reach the moved
subtree follows from the tenant paths: the old ancestors' parent-level memberships, inherited
single sign-on and sign-on sessions reaching their subtree stop matching the moment the paths
change, and this process's registry forgets the subtree at once (other processes within its
one-second lifetime).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Date, and_, any_, cast, delete, func, insert, literal, not_, select, text, update

from app.access.principal import Routed
from app.auth.roles import TENANT_ADMIN
from app.db.naming import is_tenant_id
from app.db.transaction import Executor
from app.errors import Conflict, Forbidden, InvalidInput, LimitExceeded, NotFound, TenantSuspended
from app.models.management import device_template_shares, device_templates, tenant_moves, tenants
from app.models.tenant import shared_templates
from app.services.audit import records as audit
from app.services.tenants.limits import POOLED, check_allocation
from app.tenancy.registry import Registry, TenantRecord, select_tenants

CHILD_KINDS = ("ENTERPRISE", "STANDARD")


@dataclass(frozen=True)
class Moved:
    tenant: TenantRecord
    subtree: tuple[str, ...]  # the moved tenant and its descendants
    templates_withdrawn: int


async def _locked(db: Executor, ids: Sequence[str]) -> dict[str, TenantRecord]:
    """The tenants' rows, locked to the end of the transaction, in one order (no deadlocks)."""
    rows = (await db.execute(select_tenants().where(tenants.c.id.in_(sorted(set(ids))))
                             .order_by(tenants.c.id).with_for_update())).all()
    return {r.id: TenantRecord.from_row(r) for r in rows}


def _require_admin(routed: Routed) -> None:
    if TENANT_ADMIN not in routed.permissions:
        raise Forbidden("this needs an ADMIN of the tenant", permission=TENANT_ADMIN)


async def move_tenant(db: Executor, routed: Routed, tenant_id: str, new_parent_id: str, *,
                      tenant_plane: Callable[[str], Executor], max_depth: int,
                      request_id: str | None = None) -> Moved:
    """Move `tenant_id` (and its subtree) under `new_parent_id`, for an ADMIN of a common ancestor
    of both parents (the management tenant is one of everyone's)."""
    _require_admin(routed)
    if not (is_tenant_id(tenant_id) and is_tenant_id(new_parent_id)):
        raise NotFound(f"tenant {tenant_id if not is_tenant_id(tenant_id) else new_parent_id} not found")
    # --- lock and check ---------------------------------------------------------------------------------
    found = await _locked(db, [tenant_id, new_parent_id])
    tenant, new_parent = found.get(tenant_id), found.get(new_parent_id)
    caller = routed.tenant.id
    tenant = _within(tenant, tenant_id, caller)
    new_parent = _within(new_parent, new_parent_id, caller)
    if tenant.id == caller or tenant.parent_id is None:
        raise Forbidden("a tenant cannot move itself or the tenant you act in")
    if tenant.id in new_parent.path:
        raise InvalidInput("a tenant cannot move under itself or one of its descendants", field="newParentId")
    if tenant.parent_id == new_parent.id:
        return Moved(tenant, (tenant.id,), 0)
    old_parent = (await _locked(db, [tenant.parent_id]))[tenant.parent_id]
    for record in (tenant, old_parent, new_parent):
        if record.status != "ACTIVE":
            raise TenantSuspended(f"tenant {record.id} is suspended: activate it before moving")
    _check_can_adopt(new_parent)
    # Lock the whole subtree first: a subtenant being created under one of its tenants holds that
    # parent's row, so this waits for it, and the next statements (a new snapshot) include it.
    await db.execute(select(tenants.c.id).where(tenants.c.path.contains([tenant.id])).with_for_update())
    subtree = (await db.execute(select(tenants.c.id, tenants.c.depth).where(
        tenants.c.path.contains([tenant.id])))).all()
    deepest = max(r.depth for r in subtree) - tenant.depth + new_parent.depth + 1
    if deepest >= max_depth:
        raise InvalidInput(f"the tenant tree is limited to {max_depth} levels; this move would need {deepest + 1}",
                           field="newParentId", maxDepth=max_depth)
    await _check_room(db, new_parent, tenant)
    reopened = await _reparent(db, tenant, new_parent, old_parent)
    ids = tuple(r.id for r in subtree)
    withdrawn = await _withdraw_foreign_templates(db, ids, tenant_plane)
    await _audit_move(db, routed, tenant, old_parent, new_parent, reopened, request_id)
    row = (await db.execute(select_tenants().where(tenants.c.id == tenant.id))).one()
    return Moved(TenantRecord.from_row(row), ids, withdrawn)


async def _reparent(db: Executor, tenant: TenantRecord, new_parent: TenantRecord, old_parent: TenantRecord
                    ) -> list[str]:
    """The subtree's paths and depths under the new parent; returns the tenants whose parentAccess
    FULL was closed (it was granted to the old ancestors: the new ones do not inherit it, and each
    moved tenant's own admins decide again)."""
    await db.execute(update(tenants).where(tenants.c.path.contains([tenant.id])).values(
        # new parent's path, then each row's path from the moved tenant on (arrays are 1-based)
        path=func.array_cat(literal(list(new_parent.path), tenants.c.path.type),
                            text(f"path[{int(tenant.depth) + 1}:]")),
        depth=tenants.c.depth - tenant.depth + new_parent.depth + 1,
        updated_at=func.now()))
    await db.execute(update(tenants).where(tenants.c.id == tenant.id).values(parent_id=new_parent.id))
    await db.execute(insert(tenant_moves).values(tenant_id=tenant.id, old_parent=old_parent.id,
                                                 new_parent=new_parent.id))
    return list((await db.execute(update(tenants).where(
        tenants.c.path.contains([tenant.id]), tenants.c.parent_access == "FULL")
        .values(parent_access="MANAGEMENT_ONLY").returning(tenants.c.id))).scalars().all())


async def _audit_move(db: Executor, routed: Routed, tenant: TenantRecord, old_parent: TenantRecord,
                      new_parent: TenantRecord, reopened: list[str], request_id: str | None) -> None:
    """In both parents and the tenant; a closed parentAccess in the tenant it belongs to."""
    changes = [{"attribute": "parent", "previous": old_parent.id, "new": new_parent.id}]
    for where in (old_parent.id, new_parent.id, tenant.id):
        await audit.record(db, tenant_id=where, actor=routed.actor, action="tenant.moved", target=tenant.id,
                           changes=changes, request_id=request_id)
    for closed in reopened:
        await audit.record(db, tenant_id=closed, actor=routed.actor, action="tenant.parent_access", target=closed,
                           changes=[{"attribute": "parentAccess", "previous": "FULL", "new": "MANAGEMENT_ONLY"}],
                           request_id=request_id)


def _within(record: TenantRecord | None, tenant_id: str, caller: str) -> TenantRecord:
    # Outside the caller's subtree is "not found": no tenant's existence is disclosed.
    if record is None or record.status == "DELETED" or caller not in record.path:
        raise NotFound(f"tenant {tenant_id} not found")
    return record


def _check_can_adopt(parent: TenantRecord) -> None:
    if parent.kind == "STANDARD":
        raise Forbidden("a STANDARD tenant cannot have subtenants")
    if parent.kind == "ENTERPRISE" and not parent.allow_create_tenants:
        raise Forbidden(f"tenant {parent.id} may not have subtenants (allowCreateTenants is false)")


async def _check_room(db: Executor, parent: TenantRecord, tenant: TenantRecord) -> None:
    """The new parent's maxSubtenants, and its pool for the tenant's allocations (the parent's
    row is locked by check_allocation to the end of the transaction)."""
    if parent.max_subtenants is not None:
        children = (await db.execute(select(func.count()).select_from(tenants).where(
            tenants.c.parent_id == parent.id, tenants.c.status != "DELETED"))).scalar_one()
        if children >= parent.max_subtenants:
            raise LimitExceeded(f"the new parent's maxSubtenants is reached ({parent.max_subtenants})",
                                limit="maxSubtenants", available=0)
    await check_allocation(db, parent_id=parent.id, child_id=None,
                           wanted={name: getattr(tenant, name) for name in POOLED})


async def _withdraw_foreign_templates(db: Executor, subtree: Sequence[str],
                                      tenant_plane: Callable[[str], Executor]) -> int:
    """Templates shared into the subtree by a tenant that is no longer its ancestor: the
    read-only copies go (in each tenant's own schema, as that tenant) and so do the shares."""
    stale = (await db.execute(
        select(device_template_shares.c.template_id, device_template_shares.c.tenant_id)
        .join(device_templates, device_templates.c.id == device_template_shares.c.template_id)
        .join(tenants, tenants.c.id == device_template_shares.c.tenant_id)
        .where(device_template_shares.c.tenant_id.in_(list(subtree)),
               not_(device_templates.c.owner_tenant == any_(tenants.c.path))))).all()
    for share in stale:
        await tenant_plane(share.tenant_id).execute(
            delete(shared_templates).where(shared_templates.c.template_id == share.template_id))
        await db.execute(delete(device_template_shares).where(
            device_template_shares.c.template_id == share.template_id,
            device_template_shares.c.tenant_id == share.tenant_id))
    return len(stale)


async def set_tenant_kind(db: Executor, routed: Routed, registry: Registry, tenant_id: str, kind: str, *,
                          request_id: str | None = None) -> TenantRecord:
    """STANDARD → ENTERPRISE (may then create subtenants), or ENTERPRISE → STANDARD when it has no
    live children; by an ADMIN of an ancestor."""
    _require_admin(routed)
    if kind not in CHILD_KINDS:
        raise InvalidInput("kind must be ENTERPRISE or STANDARD", field="kind")
    found = await _locked(db, [tenant_id]) if is_tenant_id(tenant_id) else {}
    record = found.get(tenant_id)
    if record is None or record.status == "DELETED" or not record.is_strict_descendant_of(routed.tenant.id):
        raise NotFound(f"tenant {tenant_id} not found")
    if record.kind == kind:
        return record
    if kind == "STANDARD":
        children = (await db.execute(select(func.count()).select_from(tenants).where(
            tenants.c.parent_id == record.id, tenants.c.status != "DELETED"))).scalar_one()
        if children:
            raise Conflict(f"tenant {record.id} has {children} live subtenant(s): move or delete them first")
    await db.execute(update(tenants).where(tenants.c.id == record.id).values(
        kind=kind, allow_create_tenants=kind == "ENTERPRISE", updated_at=func.now()))
    await audit.record(db, tenant_id=record.id, actor=routed.actor, action="tenant.kind_changed", target=record.id,
                       changes=[{"attribute": "kind", "previous": record.kind, "new": kind}], request_id=request_id)
    registry.forget_tenants([record.id])
    row = (await db.execute(select_tenants().where(tenants.c.id == record.id))).one()
    return TenantRecord.from_row(row)


def parent_at_period(period: Any) -> Any:
    """The parent a tenant had on a period's first day: the old parent of its first move after
    that day, else its parent now. (For the usage export: invoices by period.)"""
    first_move_after = (select(tenant_moves.c.old_parent)
                        .where(and_(tenant_moves.c.tenant_id == tenants.c.id,
                                    cast(tenant_moves.c.moved_at, Date) > period))
                        .order_by(tenant_moves.c.moved_at).limit(1).scalar_subquery())
    return func.coalesce(first_move_after, tenants.c.parent_id)
