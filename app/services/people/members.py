"""A tenant's members: listing, changing roles, removing — never leaving a tenant without an ADMIN.

Delegation (Cumulocity's user hierarchy rule): a role can be given only by someone who
holds every permission in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from sqlalchemy import func, insert, select, update

from app.access.credentials import custom_role_permissions as role_permissions
from app.access.principal import Routed
from app.auth.roles import BUILTIN_ROLES, TENANT_ADMIN
from app.db.transaction import Executor
from app.errors import Conflict, Forbidden, InvalidInput, LimitExceeded, NotFound
from app.models.management import memberships, tenants, users
from app.services.audit import records as audit
from app.services.pagination import Page, build_page, decode_cursor, page_size


@dataclass(frozen=True)
class MemberRecord:
    user_id: UUID
    email: str
    role: str
    scope: str
    group_ids: tuple[int, ...] | None
    created_at: datetime


async def add_member(db: Executor, *, tenant_id: str, user_id: UUID, role: str, scope: str = "TENANT") -> None:
    """A new membership within the tenant's maxUsers, exactly: the tenant's row is locked (FOR NO
    KEY UPDATE — memberships' own foreign-key checks still pass) before the count, so concurrent
    acceptances, in any process, are counted one after the other. Counted and inserted in one
    transaction with the caller's other writes: a refusal leaves nothing half-made."""
    limit = (await db.execute(select(tenants.c.max_users).where(tenants.c.id == tenant_id)
                              .with_for_update(key_share=True))).scalar_one_or_none()
    if limit is not None:
        count = (await db.execute(select(func.count()).select_from(memberships)
                                  .where(memberships.c.tenant_id == tenant_id))).scalar_one()
        if count >= limit:
            raise LimitExceeded(f"the tenant's maxUsers ({limit}) is reached", limit="maxUsers", available=0)
    await db.execute(insert(memberships).values(user_id=user_id, tenant_id=tenant_id, role=role, scope=scope))


async def permissions_of_role(tenant_db: Executor, role: str) -> frozenset[str]:
    """A built-in role's permissions, or a custom role's from the tenant; INVALID_INPUT if unknown."""
    if role in BUILTIN_ROLES:
        return BUILTIN_ROLES[role]
    permissions = await role_permissions(tenant_db, role)
    if not permissions:
        raise InvalidInput(f"unknown role {role!r}", field="role")
    return permissions


async def check_delegation(tenant_db: Executor, routed: Routed, role: str) -> None:
    missing = sorted((await permissions_of_role(tenant_db, role)) - routed.permissions)
    if missing:
        raise Forbidden(f"you cannot give the {role} role: you lack {', '.join(missing)}")


async def list_members(db: Executor, routed: Routed, *, first: int | None, after: str | None,
                       cap: int) -> Page[MemberRecord]:
    routed.require(TENANT_ADMIN)
    size = page_size(first, cap)
    stmt = (select(memberships.c.user_id, users.c.email, memberships.c.role, memberships.c.scope,
                   memberships.c.group_ids, memberships.c.created_at)
            .join(users, users.c.id == memberships.c.user_id)
            .where(memberships.c.tenant_id == routed.tenant.id))
    cursor = decode_cursor(after)
    if cursor is not None:
        stmt = stmt.where(func.lower(users.c.email) > cursor)
    rows = (await db.execute(stmt.order_by(func.lower(users.c.email)).limit(size + 1))).all()
    records = [MemberRecord(r.user_id, r.email, r.role, r.scope,
                            tuple(r.group_ids) if r.group_ids is not None else None, r.created_at) for r in rows]
    return build_page(records, size, lambda m: m.email.lower())


async def _admins_left(db: Executor, tenant_id: str, *, without: UUID) -> int:
    # Locks the ADMIN rows so two concurrent demotions cannot both see "one more admin".
    rows = (await db.execute(select(memberships.c.user_id).where(
        memberships.c.tenant_id == tenant_id, memberships.c.role == "ADMIN").with_for_update())).scalars().all()
    return len([u for u in rows if u != without])


async def set_member_role(db: Executor, tenant_db: Executor, routed: Routed, *, user_id: UUID, role: str,
                          request_id: str | None = None) -> MemberRecord:
    routed.require(TENANT_ADMIN)
    await check_delegation(tenant_db, routed, role)
    current = (await db.execute(select(memberships.c.role).where(
        memberships.c.tenant_id == routed.tenant.id, memberships.c.user_id == user_id))).scalar_one_or_none()
    if current is None:
        raise NotFound(f"user {user_id} is not a member of this tenant")
    if current == "ADMIN" and role != "ADMIN" and await _admins_left(db, routed.tenant.id, without=user_id) == 0:
        raise Conflict("the last ADMIN of a tenant cannot be demoted")
    await db.execute(update(memberships).where(memberships.c.tenant_id == routed.tenant.id,
                                               memberships.c.user_id == user_id).values(role=role))
    await audit.record(db, tenant_id=routed.tenant.id, actor=routed.actor, action="membership.role_changed",
                       target=str(user_id), changes=[{"attribute": "role", "previous": current, "new": role}],
                       request_id=request_id)
    page = await _member(db, routed.tenant.id, user_id)
    return page


async def remove_member(db: Executor, routed: Routed, *, user_id: UUID, request_id: str | None = None) -> None:
    routed.require(TENANT_ADMIN)
    routed.require_data_access()  # changing a tenant's people is behind its parentAccess, like its data
    current = (await db.execute(select(memberships.c.role).where(
        memberships.c.tenant_id == routed.tenant.id, memberships.c.user_id == user_id))).scalar_one_or_none()
    if current is None:
        raise NotFound(f"user {user_id} is not a member of this tenant")
    if current == "ADMIN" and await _admins_left(db, routed.tenant.id, without=user_id) == 0:
        raise Conflict("the last ADMIN of a tenant cannot be removed")
    await db.execute(memberships.delete().where(memberships.c.tenant_id == routed.tenant.id,
                                                memberships.c.user_id == user_id))
    await audit.record(db, tenant_id=routed.tenant.id, actor=routed.actor, action="membership.removed",
                       target=str(user_id), changes=[{"attribute": "role", "previous": current, "new": None}],
                       request_id=request_id)


async def _member(db: Executor, tenant_id: str, user_id: UUID) -> MemberRecord:
    row = (await db.execute(select(memberships.c.user_id, users.c.email, memberships.c.role, memberships.c.scope,
                                   memberships.c.group_ids, memberships.c.created_at)
                            .join(users, users.c.id == memberships.c.user_id)
                            .where(memberships.c.tenant_id == tenant_id, memberships.c.user_id == user_id))).one()
    return MemberRecord(row.user_id, row.email, row.role, row.scope,
                        tuple(row.group_ids) if row.group_ids is not None else None, row.created_at)


async def set_member_scope(db: Executor, routed: Routed, *, user_id: UUID, scope: str,
                           request_id: str | None = None) -> MemberRecord:
    """TENANT or SUBTREE (the same role in every descendant's management plane). Only the
    tenant's own ADMINs decide, never a parent-level user."""
    routed.require(TENANT_ADMIN)
    if routed.via_ancestor is not None:
        raise Forbidden("only this tenant's own admins change its members' scope")
    if scope not in ("TENANT", "SUBTREE"):
        raise InvalidInput("scope must be TENANT or SUBTREE", field="scope")
    result = await db.execute(update(memberships).where(memberships.c.tenant_id == routed.tenant.id,
                                                        memberships.c.user_id == user_id)
                              .values(scope=scope).returning(memberships.c.scope))
    if result.first() is None:
        raise NotFound(f"user {user_id} is not a member of this tenant")
    await audit.record(db, tenant_id=routed.tenant.id, actor=routed.actor, action="membership.scope_changed",
                       target=str(user_id), changes=[{"attribute": "scope", "previous": None, "new": scope}],
                       request_id=request_id)
    return await _member(db, routed.tenant.id, user_id)
