"""`tenantry bootstrap`: the MANAGEMENT tenant and its first admin, created once, kept after."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import insert, select, text

from app.db.naming import MANAGEMENT_TENANT_ID, tenant_role
from app.db.transaction import transaction
from app.errors import AppError
from app.models.management import memberships
from app.runtime.platform import Platform
from app.services.audit.records import SYSTEM
from app.services.people.users import create_user, normalise_email, user_by_email
from app.services.tenants.provisioning import TenantSpec, provision_tenant

DEFAULT_ADMIN_EMAIL = "admin@tenantry.local"


@dataclass(frozen=True)
class BootstrapResult:
    created_tenant: bool
    admin_email: str
    generated_password: str | None  # shown once, never stored in clear


async def _check_no_other_installation(platform: Platform) -> None:
    """The management tenant's role has a fixed name, and roles are cluster-wide: if it exists
    before this database has a management tenant, another installation owns it."""
    role = tenant_role(MANAGEMENT_TENANT_ID)
    async with transaction(platform.db.owner) as tx:
        found = (await tx.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})).first()
    if found is not None:
        raise AppError(f"role {role} already exists in this PostgreSQL cluster: another Tenantry installation uses "
                       "it (roles are cluster-wide). Give each installation its own cluster.")


async def bootstrap(platform: Platform) -> BootstrapResult:
    settings = platform.settings
    email = normalise_email(settings.admin_email or DEFAULT_ADMIN_EMAIL)
    generated = None
    async with transaction(platform.db.app) as tx:
        existing_tenant = await platform.registry.tenant(tx, MANAGEMENT_TENANT_ID)
        user = await user_by_email(tx, email)
    password = settings.admin_password
    if user is None and password is None:
        generated = password = secrets.token_urlsafe(12)
    password_hash = await platform.passwords.hash(password) if user is None and password else None

    if existing_tenant is None:
        await _check_no_other_installation(platform)
        await provision_tenant(
            platform.db.owner,
            TenantSpec(
                tenant_id=MANAGEMENT_TENANT_ID, domain="management", company="Tenantry operator",
                kind="MANAGEMENT", parent=None, template="management", admin_email=email,
                admin_password_hash=password_hash, allow_create_tenants=True,
            ),
            app_role=settings.app_role,
            tenant_roles_login=settings.tenant_roles_login,
            invitation_ttl=timedelta(seconds=settings.invitation_ttl_seconds),
            actor=SYSTEM,
        )
        platform.registry.forget_tenants([MANAGEMENT_TENANT_ID])
        return BootstrapResult(True, email, generated)

    # The tenant exists (a re-run): make sure the configured admin is an ADMIN of it.
    async with transaction(platform.db.app) as tx:
        if user is None:
            user = await create_user(tx, email=email, password_hash=password_hash)
        member = (await tx.execute(select(memberships.c.role).where(
            memberships.c.user_id == user.id, memberships.c.tenant_id == MANAGEMENT_TENANT_ID))).first()
        if member is None:
            await tx.execute(insert(memberships).values(user_id=user.id, tenant_id=MANAGEMENT_TENANT_ID, role="ADMIN"))
    return BootstrapResult(False, email, generated)
