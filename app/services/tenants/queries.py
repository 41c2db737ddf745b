"""The management plane: creating, reading, updating, suspending and deleting tenants.

Rules, enforced here and nowhere else:
- Requests are routed to the caller's own tenant; the target of a management-plane action
  must be a strict descendant of it, and the caller an ADMIN there (an ADMIN of the parent
  or of any ancestor). Other tenants are reported as NOT_FOUND, so nothing outside the
  caller's subtree is disclosed, not even existence.
- MANAGEMENT creates ENTERPRISE and STANDARD tenants; ENTERPRISE creates them while its
  allowCreateTenants is true; STANDARD creates none; the tree is at most
  `max_tenant_depth` levels deep (management included).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from app.access.principal import Routed
from app.auth.roles import TENANT_ADMIN
from app.db.naming import is_tenant_id
from app.db.transaction import Executor, transaction
from app.errors import Conflict, Forbidden, InvalidInput, NotFound
from app.models.management import invitations, memberships, tenants
from app.runtime.platform import Platform
from app.services.audit import records as audit
from app.services.pagination import Page, build_page, contains_pattern, decode_cursor, page_size
from app.services.people.users import normalise_email, user_by_email
from app.services.tenants.limits import check_allocation, check_own_allocations
from app.services.tenants.provisioning import TenantSpec, drop_tenant_schema, provision_tenant
from app.tenancy.registry import TenantRecord, select_tenants

DOMAIN = re.compile(r"^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$")
LIMIT_FIELDS = ("max_devices", "max_users", "max_subtenants", "storage_bytes", "requests_per_second",
                "request_burst")
CHILD_KINDS = ("ENTERPRISE", "STANDARD")


@dataclass(frozen=True)
class NewTenant:
    domain: str
    company: str
    admin_email: str
    kind: str = "STANDARD"
    admin_password: str | None = None
    template: str | None = None
    allow_create_tenants: bool | None = None
    custom_properties: object = None
    contact_name: str | None = None
    contact_email: str | None = None
    limits: dict[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class TenantChanges:
    """Only the fields that are set change."""

    domain: str | None = None
    company: str | None = None
    allow_create_tenants: bool | None = None
    custom_properties: object = None
    contact_name: str | None = None
    contact_email: str | None = None
    limits: dict[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class TenantFilter:
    status: str | None = None
    kind: str | None = None
    parent_id: str | None = None
    search: str | None = None


# --- validation --------------------------------------------------------------------------------


def check_domain(domain: str) -> str:
    if not DOMAIN.match(domain):
        raise InvalidInput(
            "domain must be 2-63 characters of a-z, 0-9 and '-', not starting or ending with '-'",
            field="domain",
        )
    return domain


def check_company(company: str) -> str:
    company = company.strip()
    if not company or len(company) > 200:
        raise InvalidInput("company must be 1-200 characters", field="company")
    return company


def check_text(value: str | None, name: str, max_len: int = 200) -> str | None:
    if value is not None and len(value) > max_len:
        raise InvalidInput(f"{name} must be at most {max_len} characters", field=name)
    return value


def check_properties(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput("customProperties must be a JSON object", field="customProperties")
    if len(str(value)) > 16_384:
        raise InvalidInput("customProperties must be at most 16 KiB", field="customProperties")
    return value


def check_limits(limits: dict[str, int | None]) -> dict[str, int | None]:
    for name, value in limits.items():
        if name not in LIMIT_FIELDS:
            raise InvalidInput(f"unknown limit {name}", field="limits")
        if value is not None and value < 0:
            raise InvalidInput(f"limit {name} must not be negative", field="limits", limit=name)
    return limits


# --- access --------------------------------------------------------------------------------------


def _require_admin(routed: Routed) -> None:
    routed.require(TENANT_ADMIN)


async def managed_tenant(platform: Platform, db: Executor, routed: Routed, tenant_id: str) -> TenantRecord:
    """A strict descendant of the caller's tenant, for an ADMIN there; NOT_FOUND otherwise."""
    _require_admin(routed)
    record = await platform.registry.tenant(db, tenant_id) if is_tenant_id(tenant_id) else None
    if record is None or record.status == "DELETED" or not record.is_strict_descendant_of(routed.tenant.id):
        raise NotFound(f"tenant {tenant_id} not found")
    return record


async def visible_tenant(platform: Platform, db: Executor, routed: Routed, tenant_id: str) -> TenantRecord | None:
    """The caller's own tenant (any member) or a descendant (ADMIN), else None."""
    if tenant_id == routed.tenant.id:
        return routed.tenant
    if TENANT_ADMIN not in routed.permissions or not is_tenant_id(tenant_id):
        return None
    record = await platform.registry.tenant(db, tenant_id)
    if record is None or not record.is_strict_descendant_of(routed.tenant.id):
        return None
    return record


# --- reads ---------------------------------------------------------------------------------------


async def list_subtree(
    db: Executor, routed: Routed, *, first: int | None, after: str | None, cap: int,
    filter: TenantFilter | None = None, parent_id: str | None = None,
) -> Page[TenantRecord]:
    """The caller's visible subtree (not its own tenant), ordered by id."""
    stmt, size = subtree_page(routed, first=first, after=after, cap=cap, filter=filter, parent_id=parent_id)
    rows = (await db.execute(stmt)).all()
    return build_page([TenantRecord.from_row(r) for r in rows], size, lambda t: t.id)


def subtree_page(routed: Routed, *, first: int | None, after: str | None, cap: int,
                 filter: TenantFilter | None = None, parent_id: str | None = None) -> tuple[Select[Any], int]:
    """The checked page statement (size + 1 rows by id) and the page size: listed here, or
    compiled into a read's JSON (app.graphql.engine.compiled)."""
    _require_admin(routed)
    size = page_size(first, cap)
    stmt = select_tenants().where(
        tenants.c.path.contains([routed.tenant.id]), tenants.c.id != routed.tenant.id
    )
    f = filter or TenantFilter()
    if parent_id is not None or f.parent_id is not None:
        stmt = stmt.where(tenants.c.parent_id == (parent_id or f.parent_id))
    if f.status is not None:
        stmt = stmt.where(tenants.c.status == f.status)
    else:
        stmt = stmt.where(tenants.c.status != "DELETED")
    if f.kind is not None:
        stmt = stmt.where(tenants.c.kind == f.kind)
    if f.search:
        pattern = contains_pattern(f.search)
        stmt = stmt.where(or_(tenants.c.domain.ilike(pattern), tenants.c.company.ilike(pattern)))
    cursor = decode_cursor(after)
    if cursor is not None:
        stmt = stmt.where(tenants.c.id > cursor)
    return stmt.order_by(tenants.c.id).limit(size + 1), size


async def count_subtree(db: Executor, routed: Routed, parent_id: str | None = None) -> int:
    return int((await db.execute(count_subtree_statement(routed, parent_id))).scalar_one())


def count_subtree_statement(routed: Routed, parent_id: str | None = None) -> Select[Any]:
    stmt = select(func.count()).select_from(tenants).where(
        tenants.c.path.contains([routed.tenant.id]), tenants.c.id != routed.tenant.id,
        tenants.c.status != "DELETED",
    )
    if parent_id is not None:
        stmt = stmt.where(tenants.c.parent_id == parent_id)
    return stmt


# --- writes --------------------------------------------------------------------------------------


async def create_subtenant(
    platform: Platform, db: Executor, routed: Routed, new: NewTenant, *, request_id: str | None = None
) -> TenantRecord:
    _require_admin(routed)
    parent = routed.tenant
    settings = platform.settings
    if parent.kind == "STANDARD":
        raise Forbidden("a STANDARD tenant cannot create subtenants")
    if parent.kind == "ENTERPRISE" and not parent.allow_create_tenants:
        raise Forbidden("this tenant is not allowed to create subtenants (allowCreateTenants is false)")
    if new.kind not in CHILD_KINDS:
        raise InvalidInput("kind must be ENTERPRISE or STANDARD", field="kind")
    if parent.depth + 1 >= settings.max_tenant_depth:
        raise InvalidInput(
            f"the tenant tree is limited to {settings.max_tenant_depth} levels", field="kind",
            maxDepth=settings.max_tenant_depth,
        )
    allow = new.allow_create_tenants if new.allow_create_tenants is not None else new.kind == "ENTERPRISE"
    if allow and new.kind == "STANDARD":
        raise InvalidInput("a STANDARD tenant cannot be allowed to create subtenants", field="allowCreateTenants")
    admin_email = normalise_email(new.admin_email, field="adminEmail")
    spec = TenantSpec(
        domain=check_domain(new.domain),
        company=check_company(new.company),
        kind=new.kind,
        parent=parent,
        template=new.template or new.kind.lower(),
        admin_email=admin_email,
        allow_create_tenants=allow,
        contact_name=check_text(new.contact_name, "contactName"),
        contact_email=normalise_email(new.contact_email, field="contactEmail") if new.contact_email else None,
        custom_properties=check_properties(new.custom_properties or {}),
        limits=check_limits(dict(new.limits)),
        max_depth=settings.max_tenant_depth,
    )
    # Hash only for a new user (an existing user keeps the password they have), and before
    # the provisioning transaction so that it stays short.
    if new.admin_password is not None and await user_by_email(db, admin_email) is None:
        spec = replace(spec, admin_password_hash=await platform.passwords.hash(new.admin_password))
    result = await provision_tenant(
        platform.db.owner,
        spec,
        app_role=settings.app_role,
        tenant_roles_login=settings.tenant_roles_login,
        invitation_ttl=timedelta(seconds=settings.invitation_ttl_seconds),
        actor=routed.actor,
        request_id=request_id,
    )
    return result.tenant


async def update_tenant(
    platform: Platform, db: Executor, routed: Routed, tenant_id: str, changes: TenantChanges,
    *, request_id: str | None = None,
) -> TenantRecord:
    record = await managed_tenant(platform, db, routed, tenant_id)
    values: dict[str, Any] = {}
    if changes.domain is not None:
        values["domain"] = check_domain(changes.domain)
    if changes.company is not None:
        values["company"] = check_company(changes.company)
    if changes.contact_name is not None:
        values["contact_name"] = check_text(changes.contact_name, "contactName")
    if changes.contact_email is not None:
        values["contact_email"] = normalise_email(changes.contact_email, field="contactEmail")
    if changes.custom_properties is not None:
        values["custom_properties"] = check_properties(changes.custom_properties)
    if changes.allow_create_tenants is not None:
        if changes.allow_create_tenants and record.kind == "STANDARD":
            raise InvalidInput("a STANDARD tenant cannot be allowed to create subtenants",
                               field="allowCreateTenants")
        values["allow_create_tenants"] = changes.allow_create_tenants
    values.update(check_limits(dict(changes.limits)))
    before = {k: getattr(record, k) for k in values}
    if not audit.diff(before, values):
        return record
    limits = {k: v for k, v in values.items() if k in LIMIT_FIELDS}
    try:
        if limits:
            if record.parent_id is not None:
                current = {k: getattr(record, k) for k in LIMIT_FIELDS}
                await check_allocation(db, parent_id=record.parent_id, child_id=record.id,
                                       wanted=current | limits)
            await check_own_allocations(db, tenant_id=record.id, new=limits)
        row = (await db.execute(
            update(tenants).where(tenants.c.id == record.id)
            .values(**values, updated_at=func.now()).returning(*select_tenants().selected_columns)
        )).one()
        await audit.record(db, tenant_id=record.id, actor=routed.actor, action="tenant.updated",
                           target=record.id, changes=audit.diff(before, values), request_id=request_id)
    except IntegrityError as exc:
        raise Conflict(f"domain {values.get('domain')!r} is already taken", field="domain") from exc
    platform.registry.forget_tenants([record.id])
    return TenantRecord.from_row(row)


async def suspend_tenant(
    platform: Platform, db: Executor, routed: Routed, tenant_id: str, *, request_id: str | None = None
) -> TenantRecord:
    """Suspend a tenant and every ACTIVE tenant below it (remembering why, for activation)."""
    record = await managed_tenant(platform, db, routed, tenant_id)
    changed = (await db.execute(
        update(tenants)
        .where(
            tenants.c.path.contains([record.id]),
            or_(tenants.c.status == "ACTIVE", tenants.c.id == record.id),
            tenants.c.status != "DELETED",
        )
        .values(status="SUSPENDED", suspended_from=record.id, updated_at=func.now())
        .returning(tenants.c.id)
    )).scalars().all()
    for tid in changed:
        await audit.record(db, tenant_id=tid, actor=routed.actor, action="tenant.suspended", target=tid,
                           changes=[{"attribute": "status", "previous": "ACTIVE", "new": "SUSPENDED"}],
                           request_id=request_id)
    platform.registry.forget_tenants(changed)
    return await _reload(platform, db, record.id)


async def activate_tenant(
    platform: Platform, db: Executor, routed: Routed, tenant_id: str, *, request_id: str | None = None
) -> TenantRecord:
    """Activate a tenant and the descendants that its suspension suspended."""
    record = await managed_tenant(platform, db, routed, tenant_id)
    if record.parent_id is not None:
        parent = await platform.registry.tenant(db, record.parent_id)
        if parent is not None and parent.status != "ACTIVE":
            raise Conflict("the parent tenant is suspended; activate it first")
    changed = (await db.execute(
        update(tenants)
        .where(
            tenants.c.path.contains([record.id]),
            tenants.c.status == "SUSPENDED",
            or_(tenants.c.id == record.id, tenants.c.suspended_from == record.id),
        )
        .values(status="ACTIVE", suspended_from=None, updated_at=func.now())
        .returning(tenants.c.id)
    )).scalars().all()
    for tid in changed:
        await audit.record(db, tenant_id=tid, actor=routed.actor, action="tenant.activated", target=tid,
                           changes=[{"attribute": "status", "previous": "SUSPENDED", "new": "ACTIVE"}],
                           request_id=request_id)
    platform.registry.forget_tenants(changed)
    return await _reload(platform, db, record.id)


async def delete_tenant(
    platform: Platform, db: Executor, routed: Routed, tenant_id: str, *, request_id: str | None = None
) -> None:
    """Drop a leaf tenant's schema and role; its registry row stays, marked DELETED (usage history)."""
    if routed.tenant.kind != "MANAGEMENT":
        raise Forbidden("only the management tenant deletes tenants")
    record = await managed_tenant(platform, db, routed, tenant_id)
    async with transaction(platform.db.owner) as tx:
        # Lock the row so a concurrent createSubtenant below it cannot slip in.
        await tx.execute(select(tenants.c.id).where(tenants.c.id == record.id).with_for_update())
        live_children = (await tx.execute(
            select(func.count()).select_from(tenants)
            .where(tenants.c.parent_id == record.id, tenants.c.status != "DELETED")
        )).scalar_one()
        if live_children:
            raise Conflict(f"tenant {record.id} has {live_children} live subtenant(s); delete them first")
        await drop_tenant_schema(tx, record.id)
        await tx.execute(memberships.delete().where(memberships.c.tenant_id == record.id))
        await tx.execute(
            update(invitations)
            .where(and_(invitations.c.tenant_id == record.id, invitations.c.accepted_at.is_(None),
                        invitations.c.revoked_at.is_(None)))
            .values(revoked_at=func.now())
        )
        await tx.execute(
            update(tenants).where(tenants.c.id == record.id)
            .values(status="DELETED", deleted_at=func.now(), updated_at=func.now(), suspended_from=None)
        )
        await audit.record(tx, tenant_id=record.id, actor=routed.actor, action="tenant.deleted",
                           target=record.id, request_id=request_id)
    platform.registry.forget_tenants([record.id])


async def _reload(platform: Platform, db: Executor, tenant_id: str) -> TenantRecord:
    """The row as this request's transaction sees it now, read past the registry's cache (which
    must never hold what may still roll back)."""
    row = (await db.execute(select_tenants().where(tenants.c.id == tenant_id))).first()
    if row is None:  # pragma: no cover - rows are never removed
        raise NotFound(f"tenant {tenant_id} not found")
    return TenantRecord.from_row(row)


async def set_parent_access(platform: Platform, db: Executor, routed: Routed, *, policy: str,
                            request_id: str | None = None) -> TenantRecord:
    """Whether parent-level users may reach this tenant's data: its own ADMINs decide."""
    _require_admin(routed)
    if routed.via_ancestor is not None or routed.principal.api_token_id is not None:
        raise Forbidden("only this tenant's own admins set its parent access")
    if policy not in ("MANAGEMENT_ONLY", "FULL"):
        raise InvalidInput("parentAccess must be MANAGEMENT_ONLY or FULL", field="policy")
    tenant = routed.tenant
    await db.execute(update(tenants).where(tenants.c.id == tenant.id)
                     .values(parent_access=policy, updated_at=func.now()))
    await audit.record(db, tenant_id=tenant.id, actor=routed.actor, action="tenant.parent_access",
                       target=tenant.id, changes=[{"attribute": "parentAccess", "previous": tenant.parent_access,
                                                   "new": policy}], request_id=request_id)
    platform.registry.forget_tenants([tenant.id])
    return await _reload(platform, db, tenant.id)
