"""Custom roles (named permission sets per tenant) and group-scoped memberships."""

from __future__ import annotations

import re
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from app.access.principal import Routed
from app.auth.roles import ALL_PERMISSIONS, BUILTIN_ROLES, TENANT_ADMIN
from app.db.transaction import Executor
from app.errors import Conflict, Forbidden, InvalidInput, NotFound
from app.models.management import memberships
from app.models.tenant import groups, roles

_NAME = re.compile(r"^[A-Z][A-Z0-9_]{1,39}$")


@dataclass(frozen=True)
class RoleRecord:
    name: str
    permissions: tuple[str, ...]
    builtin: bool


async def list_roles(db: Executor) -> list[RoleRecord]:
    builtin = [RoleRecord(name, tuple(sorted(perms)), True) for name, perms in BUILTIN_ROLES.items()]
    rows = (await db.execute(select(roles.c.name, roles.c.permissions).order_by(roles.c.name))).all()
    return builtin + [RoleRecord(r.name, tuple(sorted(r.permissions)), False) for r in rows]


def check_permissions(routed: Routed, permissions: list[str]) -> list[str]:
    unknown = sorted(set(permissions) - ALL_PERMISSIONS)
    if unknown:
        raise InvalidInput(f"unknown permission(s): {', '.join(unknown)}; known: {', '.join(sorted(ALL_PERMISSIONS))}",
                           field="permissions")
    # Delegation: nobody grants what they do not hold themselves.
    escalation = sorted(set(permissions) - routed.permissions)
    if escalation:
        raise Forbidden(f"you cannot grant permissions you do not hold: {', '.join(escalation)}")
    return sorted(set(permissions))


async def create_role(db: Executor, routed: Routed, *, name: str, permissions: list[str]) -> RoleRecord:
    routed.require(TENANT_ADMIN)
    if not _NAME.match(name):
        raise InvalidInput("role names are 2-40 characters of A-Z, 0-9 and _, starting with a letter", field="name")
    if name in BUILTIN_ROLES or name == "DEVICE":
        raise Conflict(f"{name} is a built-in role")
    granted = check_permissions(routed, permissions)
    try:
        await db.execute(insert(roles).values(name=name, permissions=granted))
    except IntegrityError as exc:
        raise Conflict(f"role {name} already exists") from exc
    return RoleRecord(name, tuple(granted), False)


async def delete_role(db: Executor, management: Executor, routed: Routed, *, name: str) -> None:
    routed.require(TENANT_ADMIN)
    in_use = (await management.execute(select(func.count()).select_from(memberships).where(
        memberships.c.tenant_id == routed.tenant.id, memberships.c.role == name))).scalar_one()
    if in_use:
        raise Conflict(f"role {name} is held by {in_use} member(s)")
    result = await db.execute(delete(roles).where(roles.c.name == name))
    if not result.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"role {name} not found")


async def set_member_groups(
    db: Executor, management: Executor, routed: Routed, *, user_id: UUID, group_ids: list[int] | None
) -> tuple[int, ...] | None:
    """Restrict a member to devices in these groups (and subgroups); None lifts the restriction."""
    routed.require(TENANT_ADMIN)
    if group_ids is not None:
        if not group_ids:
            raise InvalidInput("give at least one group, or null for the whole tenant", field="groupIds")
        found = set((await db.execute(select(groups.c.id).where(groups.c.id.in_(group_ids)))).scalars())
        missing = sorted(set(group_ids) - found)
        if missing:
            raise NotFound(f"group(s) not found: {', '.join(map(str, missing))}")
    result = await management.execute(update(memberships).where(
        memberships.c.user_id == user_id, memberships.c.tenant_id == routed.tenant.id,
    ).values(group_ids=sorted(set(group_ids)) if group_ids is not None else None))
    if not result.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"user {user_id} is not a member of this tenant")
    return tuple(sorted(set(group_ids))) if group_ids is not None else None
