"""Provisioning and dropping tenant schemas, each in ONE owner transaction.

    registry row → CREATE ROLE → CREATE SCHEMA → tenant DDL at head → grants
    → version stamp → template seed → first admin → audit record

A failure at any step rolls every step back (PostgreSQL DDL is transactional, roles
included), so there is never a schema without a registry row or the other way round.
`on_step` lets tests inject a failure after any named step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.tokens import new_secret, secret_hash
from app.db.naming import checked_identifier, new_tenant_id, spare_schema, tenant_role, tenant_schema
from app.db.transaction import Transaction, transaction
from app.errors import Conflict, Forbidden, InvalidInput, LimitExceeded
from app.models import tenant as tenant_tables
from app.models.management import invitations, memberships, spare_schemas, tenants
from app.services.audit import records as audit
from app.services.people.invitations import PREFIX as INVITATION_PREFIX
from app.services.people.invitations import queue_invitation_mail
from app.services.people.users import UserRecord, create_user, user_by_email
from app.services.tenants.limits import check_allocation
from app.tenancy.ddl import tenant_ddl
from app.tenancy.grants import default_privileges_sql, grants_sql
from app.tenancy.registry import TenantRecord, select_tenants
from app.tenancy.templates import Template, load_template

STEPS = ("registry", "role", "schema", "ddl", "grants", "version", "seed", "admin", "audit")


@dataclass(frozen=True)
class TenantSpec:
    domain: str
    company: str
    kind: str
    parent: TenantRecord | None
    template: str
    admin_email: str
    # Hashed before the transaction opens (argon2 is slow); used only for a new user.
    admin_password_hash: str | None = None
    allow_create_tenants: bool = False
    contact_name: str | None = None
    contact_email: str | None = None
    custom_properties: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, int | None] = field(default_factory=dict)
    tenant_id: str | None = None  # generated when None (bootstrap passes "management")
    max_depth: int | None = None  # levels of the tree, checked against the parent as it is under lock


@dataclass(frozen=True)
class AdminOutcome:
    """How the first admin was set up: membership of an existing or new user, or an invitation."""

    user: UserRecord | None
    created_user: bool
    invitation_token: str | None


@dataclass(frozen=True)
class Provisioned:
    tenant: TenantRecord
    admin: AdminOutcome


async def build_schema(tx: Transaction, *, schema: str, role: str, ddl_sql: str, app_role: str, login: bool,
                       on_step: Callable[[str], None] = lambda step: None) -> None:
    """Role, schema, the tenant DDL at head, and grants (the expensive part of provisioning)."""
    await tx.exec_driver_sql(f"CREATE ROLE {role} {'LOGIN' if login else 'NOLOGIN'} NOINHERIT")
    on_step("role")
    await tx.exec_ddl(f"CREATE SCHEMA {schema}; {default_privileges_sql(schema, role)}")
    on_step("schema")
    await tx.exec_driver_sql(f"SELECT set_config('search_path', '{schema}', true)")
    await tx.exec_ddl(ddl_sql)
    on_step("ddl")
    await tx.exec_ddl(grants_sql(schema, role, app_role))
    on_step("grants")


SPARES_PER_TRANSACTION = 5


async def fill_spares(owner: AsyncEngine, *, count: int, app_role: str, tenant_roles_login: bool) -> int:
    """Top the warm pool up to `count` spares at the head revision; spares of an older revision
    (or of the old naming) are dropped. Returns how many were made.

    Spares are built a few per transaction: every change to roles makes each PostgreSQL backend
    rebuild its list of the application role's memberships at its next role switch, which at 10,000
    tenant roles costs tens of milliseconds (PostgreSQL 16; ~240 ms on 15) per backend and change."""
    ddl = tenant_ddl()
    app_role = checked_identifier(app_role)
    await drop_stale_spares(owner, ddl.revision)
    made = 0
    while True:
        async with transaction(owner) as tx:
            # Every worker process runs a keeper: the lock makes the count-then-build step one at a
            # time across them, so the pool never overshoots `count`. Provisioning takes spares with
            # SKIP LOCKED and never waits on this lock.
            await tx.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('tenantry.spare_pool'))")
            have = (await tx.execute(select(func.count()).select_from(spare_schemas))).scalar_one()
            if have >= count:
                return made
            for _ in range(min(count - have, SPARES_PER_TRANSACTION)):
                # Made under the id of the tenant that will take it: an id no tenant ever had
                # (ids are never reused, deleted tenants keep their registry row).
                spare = new_tenant_id()
                while (await tx.execute(select(tenants.c.id).where(tenants.c.id == spare))).first():
                    spare = new_tenant_id()
                name = spare_schema(spare)
                await build_schema(tx, schema=name, role=name, ddl_sql=ddl.sql, app_role=app_role,
                                   login=tenant_roles_login)
                await tx.execute(insert(spare_schemas).values(id=spare, revision=ddl.revision))
                made += 1


async def drop_stale_spares(owner: AsyncEngine, revision: str, *, batch: int = SPARES_PER_TRANSACTION) -> int:
    """Drop the spares of an older revision (or naming), `batch` per transaction; returns the
    transactions it took. Dropping a schema locks each of its objects until COMMIT: after a
    migration, all stale spares in one transaction exhausted the shared lock table ("out of shared
    memory") and failed every few seconds, forever, with ordinary requests failing beside it."""
    transactions = 0
    while True:
        async with transaction(owner) as tx:
            stale = (await tx.execute(select(spare_schemas.c.id).where(
                (spare_schemas.c.revision != revision) | ~spare_schemas.c.id.startswith("t"))
                .order_by(spare_schemas.c.id).limit(batch).with_for_update(skip_locked=True))).scalars().all()
            for spare in stale:
                name = spare_schema(spare)
                await tx.exec_ddl(f"DROP SCHEMA IF EXISTS {name} CASCADE; DROP OWNED BY {name}; DROP ROLE {name}")
                await tx.execute(spare_schemas.delete().where(spare_schemas.c.id == spare))
        if not stale:
            return transactions
        transactions += 1


class SpareDemand:
    """How fast this process takes spares, so the pool keeper can size the pool to the demand.

    A parent's automation onboarding subtenants in a burst drained a fixed pool of five after five
    creates, and every further create paid the whole DDL (issue 14). The keeper now wakes as soon as
    a spare is taken (not at its next tick) and aims at twice what was taken in the last
    DEMAND_WINDOW seconds, within [base, MAX_SPARES]; without demand it goes back to the base size
    (spares beyond it are used up, not dropped)."""

    WINDOW = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._taken: list[float] = []
        self.wake = asyncio.Event()

    def took(self) -> None:
        self._taken.append(self._clock())
        self.wake.set()

    def target(self, base: int) -> int:
        horizon = self._clock() - self.WINDOW
        self._taken = [t for t in self._taken if t > horizon]
        return min(MAX_SPARES, max(base, 2 * len(self._taken)))


MAX_SPARES = 100
DEMAND = SpareDemand()


async def keep_spares(owner: AsyncEngine, *, count: int, app_role: str, tenant_roles_login: bool,
                      interval_seconds: float = 2.0, demand: SpareDemand = DEMAND) -> None:
    """The server's pool keeper: refills as soon as spares are taken, to a size that follows demand."""
    log = logging.getLogger("tenantry.provisioning")
    while True:
        try:
            await fill_spares(owner, count=demand.target(count), app_role=app_role,
                              tenant_roles_login=tenant_roles_login)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("refilling the spare schema pool failed; retrying")
        demand.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(demand.wake.wait(), timeout=interval_seconds)


async def provision_tenant(
    owner: AsyncEngine,
    spec: TenantSpec,
    **options: Any,
) -> Provisioned:
    """Provision a tenant; a clash of random ids (rare, but certain at scale) is retried."""
    for attempt in range(5):
        try:
            return await _provision(owner, spec, **options)
        except IntegrityError as exc:
            if spec.tenant_id is not None or _constraint(exc) != "tenants_pkey" or attempt == 4:
                raise
    raise AssertionError("unreachable")


def _constraint(exc: IntegrityError) -> str | None:
    diag = getattr(exc.orig, "diag", None)
    return getattr(diag, "constraint_name", None)


async def _provision(
    owner: AsyncEngine,
    spec: TenantSpec,
    *,
    app_role: str,
    tenant_roles_login: bool,
    invitation_ttl: timedelta,
    actor: audit.Actor,
    request_id: str | None = None,
    on_step: Callable[[str], None] = lambda step: None,
) -> Provisioned:
    """ONE owner transaction, in named steps: the registry row, the schema (a spare's, else built
    now), the version stamp, the template seed, the first admin and the audit. A failure anywhere
    leaves nothing behind (and gives a spare back)."""
    template = load_template(spec.template)  # INVALID_INPUT before anything is written
    ddl = tenant_ddl()
    app_role = checked_identifier(app_role)
    async with transaction(owner) as tx:
        spare, tenant_id = await _claim_id(tx, spec, ddl.revision)
        spec = replace(spec, parent=await _check_parent(tx, spec))
        await _insert_registry_row(tx, spec, tenant_id, template=template.name, revision=ddl.revision)
        on_step("registry")
        await _take_or_build_schema(tx, tenant_id, spare, ddl_sql=ddl.sql, app_role=app_role,
                                    login=tenant_roles_login, on_step=on_step)
        await _check_stamp(tx, ddl.revision)
        on_step("version")
        await _seed(tx, template)
        on_step("seed")
        outcome = await _first_admin(tx, tenant_id, spec, invitation_ttl)
        on_step("admin")
        await _audit_created(tx, spec, tenant_id, actor, request_id)
        on_step("audit")
        row = (await tx.execute(select_tenants().where(tenants.c.id == tenant_id))).one()
    if spare is not None:
        DEMAND.took()  # committed: the keeper now sees one spare fewer
    return Provisioned(tenant=TenantRecord.from_row(row), admin=outcome)


async def _claim_id(tx: Transaction, spec: TenantSpec, revision: str) -> tuple[str | None, str]:
    """(the spare taken, the tenant id). A spare of the warm pool, made ahead of time under a tenant
    id of its own, becomes this tenant as it is: no role or schema is created or renamed in the
    request. Else a new id, and the DDL runs now. A rollback gives the spare back."""
    spare = None if spec.tenant_id is not None else (await tx.execute(
        select(spare_schemas.c.id).where(spare_schemas.c.revision == revision, spare_schemas.c.id.startswith("t"))
        .order_by(spare_schemas.c.created_at).limit(1).with_for_update(skip_locked=True)
    )).scalar_one_or_none()
    tenant_id = spec.tenant_id or spare
    if tenant_id is None:
        tenant_id = new_tenant_id()
        # Nor a waiting spare's id: that spare holds the role and schema of that name already.
        while (await tx.execute(select(spare_schemas.c.id).where(spare_schemas.c.id == tenant_id))).first():
            tenant_id = new_tenant_id()
    return spare, tenant_id


async def _check_parent(tx: Transaction, spec: TenantSpec) -> TenantRecord | None:
    """The parent as it is now, its row locked to the end: a concurrent suspend, delete, move or
    demotion waits, or has committed and is seen here (the request read the parent before), so no
    child is born under a suspended, deleted or STANDARD parent or with a path the parent left, and
    sibling creations serialise, so the subtenant count and the limit pool are checked race-free."""
    if spec.limits.get("max_users") == 0:
        raise LimitExceeded("maxUsers is 0, but the first admin is a user", limit="maxUsers", available=0)
    if spec.parent is None:
        return None
    row = (await tx.execute(select_tenants().where(tenants.c.id == spec.parent.id).with_for_update())).one_or_none()
    parent = TenantRecord.from_row(row) if row is not None else None
    if parent is None or parent.status != "ACTIVE":
        raise Conflict(f"the parent tenant {spec.parent.id} is not active")
    if parent.kind == "STANDARD" or (parent.kind == "ENTERPRISE" and not parent.allow_create_tenants):
        raise Forbidden(f"tenant {parent.id} may not have subtenants (it is {parent.kind} now)")
    if spec.max_depth is not None and parent.depth + 1 >= spec.max_depth:
        raise InvalidInput(f"the tenant tree is limited to {spec.max_depth} levels", field="kind",
                           maxDepth=spec.max_depth)
    if parent.max_subtenants is not None:
        children = (await tx.execute(select(func.count()).select_from(tenants).where(
            tenants.c.parent_id == parent.id, tenants.c.status != "DELETED"))).scalar_one()
        if children >= parent.max_subtenants:
            raise LimitExceeded(f"maxSubtenants reached ({parent.max_subtenants})", limit="maxSubtenants",
                                available=0)
    await check_allocation(tx, parent_id=parent.id, child_id=None, wanted=spec.limits)
    return parent


async def _insert_registry_row(tx: Transaction, spec: TenantSpec, tenant_id: str, *, template: str,
                               revision: str) -> None:
    """The unique index on live domains turns a concurrent duplicate into CONFLICT."""
    parent = spec.parent
    values: dict[str, Any] = {
        "id": tenant_id, "domain": spec.domain, "company": spec.company, "kind": spec.kind, "status": "ACTIVE",
        "parent_id": parent.id if parent else None, "path": [*(parent.path if parent else ()), tenant_id],
        "depth": parent.depth + 1 if parent else 0, "allow_create_tenants": spec.allow_create_tenants,
        "contact_name": spec.contact_name, "contact_email": spec.contact_email,
        "custom_properties": spec.custom_properties, "template": template, "schema_version": revision,
        **spec.limits,
    }
    try:
        await tx.execute(insert(tenants).values(**values))
    except IntegrityError as exc:
        if _constraint(exc) == "tenants_domain_live_key":
            raise Conflict(f"domain {spec.domain!r} is already taken", field="domain") from exc
        raise


async def _take_or_build_schema(tx: Transaction, tenant_id: str, spare: str | None, *, ddl_sql: str, app_role: str,
                                login: bool, on_step: Callable[[str], None]) -> None:
    """Role, schema, DDL and grants: the spare's, else built now (identifiers from app.db.naming
    only); then the new schema is the search path for the seed."""
    schema = tenant_schema(tenant_id)
    if spare is not None:
        await tx.execute(spare_schemas.delete().where(spare_schemas.c.id == spare))
        for step in ("role", "schema", "ddl", "grants"):
            on_step(step)
    else:
        await build_schema(tx, schema=schema, role=tenant_role(tenant_id), ddl_sql=ddl_sql, app_role=app_role,
                           login=login, on_step=on_step)
    await tx.exec_driver_sql(f"SELECT set_config('search_path', '{schema}', true)")


async def _check_stamp(tx: Transaction, revision: str) -> None:
    """The DDL wrote alembic_version: make sure it says head."""
    stamped = (await tx.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
    if stamped != revision:
        raise RuntimeError(f"tenant DDL stamped {stamped}, expected {revision}")


async def _seed(tx: Transaction, template: Template) -> None:
    """What the template gives a new tenant (search_path is the new schema)."""
    if template.options:
        await tx.execute(insert(tenant_tables.options),
                         [{"category": o.category, "key": o.key, "value": o.value} for o in template.options])
    if template.roles:
        await tx.execute(insert(tenant_tables.roles),
                         [{"name": r.name, "permissions": list(r.permissions)} for r in template.roles])
    if template.retention_rules:
        await tx.execute(insert(tenant_tables.retention_rules), [
            {"data_type": r.data_type, "type": r.type, "max_age_days": r.max_age_days}
            for r in template.retention_rules])


async def _audit_created(tx: Transaction, spec: TenantSpec, tenant_id: str, actor: audit.Actor,
                         request_id: str | None) -> None:
    created = [{"attribute": k, "previous": None, "new": v}
               for k, v in (("domain", spec.domain), ("company", spec.company), ("kind", spec.kind))]
    await audit.record(tx, tenant_id=tenant_id, actor=actor, action="tenant.created", target=tenant_id,
                       changes=created, request_id=request_id)
    if spec.parent is not None:
        await audit.record(tx, tenant_id=spec.parent.id, actor=actor, action="subtenant.created", target=tenant_id,
                           request_id=request_id)


async def _first_admin(
    tx: Transaction, tenant_id: str, spec: TenantSpec, invitation_ttl: timedelta
) -> AdminOutcome:
    user = await user_by_email(tx, spec.admin_email)
    created = False
    if user is None and spec.admin_password_hash is not None:
        user = await create_user(tx, email=spec.admin_email, password_hash=spec.admin_password_hash)
        created = True
    if user is not None:
        await tx.execute(insert(memberships).values(user_id=user.id, tenant_id=tenant_id, role="ADMIN"))
        return AdminOutcome(user=user, created_user=created, invitation_token=None)
    token = new_secret(INVITATION_PREFIX)
    expires_at = (await tx.execute(
        insert(invitations).values(
            tenant_id=tenant_id,
            email=spec.admin_email,
            role="ADMIN",
            token_hash=secret_hash(token),
            expires_at=func.now() + invitation_ttl,
        ).returning(invitations.c.expires_at)
    )).scalar_one()
    await queue_invitation_mail(tx, tenant_id=tenant_id, domain=spec.domain, email=spec.admin_email, role="ADMIN",
                                token=token, expires_at=expires_at)
    return AdminOutcome(user=None, created_user=False, invitation_token=token)


async def drop_tenant_schema(tx: Transaction, tenant_id: str) -> None:
    """Drop a tenant's schema and role (the caller's transaction marks the registry row DELETED)."""
    schema, role = tenant_schema(tenant_id), tenant_role(tenant_id)
    await tx.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    exists = await tx.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
    if exists.first() is not None:
        await tx.exec_ddl(f"DROP OWNED BY {role}; DROP ROLE {role}")
