"""Self sign-up: a new user and their own STANDARD tenant, once they prove the email is theirs.

`signUp` stores the request (password already hashed) and mails a verification token;
`verifySignUp` creates the user and provisions the tenant under the configured parent.
The answer never says whether an email already has an account (no enumeration): such a
person gets a mail telling them to log in instead. With an invitation token, sign-up joins
the inviting tenant directly (the invitation mail already proved the address).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update

from app.access.principal import Principal
from app.auth.tokens import new_secret, secret_hash
from app.db.transaction import Executor, transaction
from app.errors import Conflict, Forbidden, InvalidInput, NotFound
from app.models.management import outbox, signups
from app.runtime.platform import Platform
from app.services.audit.records import SYSTEM
from app.services.people import invitations
from app.services.people.users import create_user, normalise_email, user_by_email
from app.services.tenants.provisioning import TenantSpec, provision_tenant
from app.services.tenants.queries import check_company
from app.tenancy.registry import TenantRecord

PREFIX = "tsup_"


@dataclass(frozen=True)
class SignUpResult:
    status: str  # VERIFICATION_SENT or JOINED
    email: str
    tenant: TenantRecord | None = None
    user_id: object = None


def domain_for(company: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", company.lower()).strip("-")[:40].strip("-") or "tenant"
    return f"{slug}-{secrets.token_hex(3)}"


async def sign_up(platform: Platform, db: Executor, *, email: str, password: str, company: str,
                  invitation_token: str | None, now: datetime) -> SignUpResult:
    email = normalise_email(email)
    company = check_company(company)
    password_hash = await platform.passwords.hash(password)  # the password policy applies here
    if invitation_token is not None:
        return await _join_by_invitation(platform, db, email, password_hash, invitation_token, now)
    if platform.settings.signup_parent is None:
        raise Forbidden("self sign-up is not enabled on this platform")
    if await user_by_email(db, email) is not None:
        await db.execute(insert(outbox).values(
            recipient=email, subject="You already have an account",
            body="Someone (hopefully you) tried to sign up with this address. Log in instead."))
        return SignUpResult("VERIFICATION_SENT", email)
    token = new_secret(PREFIX)
    expires = now + timedelta(seconds=platform.settings.invitation_ttl_seconds)
    await db.execute(insert(signups).values(email=email, password_hash=password_hash, company=company,
                                            token_hash=secret_hash(token), created_at=now, expires_at=expires))
    await db.execute(insert(outbox).values(
        recipient=email, subject="Confirm your sign-up",
        body=f"Confirm your address to create {company} before {expires.isoformat()} with this token: {token}"))
    return SignUpResult("VERIFICATION_SENT", email)


async def _join_by_invitation(platform: Platform, db: Executor, email: str, password_hash: str, token: str,
                              now: datetime) -> SignUpResult:
    found = await invitations.preview(db, token)
    if found is None:
        raise NotFound("no such invitation")
    if found.invitation.email.lower() != email.lower():
        raise Forbidden("this invitation is for another email address")
    if await user_by_email(db, email) is not None:
        raise Conflict("you already have an account: log in and accept the invitation")
    user = await create_user(db, email=email, password_hash=password_hash)
    principal = Principal(user_id=user.id, default_tenant_id=None, token_id="signup")
    record, _ = await invitations.accept(db, principal, token, now=now)
    tenant = await platform.registry.tenant(db, record.tenant_id)
    return SignUpResult("JOINED", email, tenant, user.id)


async def verify(platform: Platform, *, token: str, now: datetime) -> SignUpResult:
    """Create the user and provision their tenant; the token works once."""
    async with transaction(platform.db.app) as tx:
        row = (await tx.execute(select(signups).where(signups.c.token_hash == secret_hash(token))
                                .with_for_update())).first()
        if row is None:
            raise NotFound("no such sign-up")
        if row.completed_at is not None:
            raise Conflict("this sign-up is already confirmed: log in")
        if row.expires_at <= now:
            raise InvalidInput("this sign-up has expired; sign up again", field="token")
        if await user_by_email(tx, row.email) is not None:
            raise Conflict("an account with this email exists: log in")
        parent_id = platform.settings.signup_parent
        parent = await platform.registry.tenant(tx, parent_id) if parent_id else None
        if parent is None:
            raise Forbidden("self sign-up is not enabled on this platform")
        for _ in range(5):  # a domain clash is possible (random suffix), just try another
            try:
                provisioned = await provision_tenant(
                    platform.db.owner,
                    TenantSpec(domain=domain_for(row.company), company=row.company, kind="STANDARD", parent=parent,
                               template="standard", admin_email=row.email, admin_password_hash=row.password_hash),
                    app_role=platform.settings.app_role, tenant_roles_login=platform.settings.tenant_roles_login,
                    invitation_ttl=timedelta(seconds=platform.settings.invitation_ttl_seconds), actor=SYSTEM)
                break
            except Conflict:
                continue
        else:
            raise Conflict("could not find a free domain; try again")
        await tx.execute(update(signups).where(signups.c.id == row.id)
                         .values(completed_at=now, tenant_id=provisioned.tenant.id))
    user = provisioned.admin.user
    return SignUpResult("CREATED", row.email, provisioned.tenant, user.id if user else None)


