"""Login, refresh-token rotation with reuse detection, logout, and a user's memberships."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidTag
from sqlalchemy import ColumnElement, Select, func, insert, select, update

from app.access.acting import PlaneView
from app.access.principal import Reach
from app.auth.secrets_box import SecretBox
from app.auth.tokens import new_secret, secret_hash
from app.db.naming import is_tenant_id
from app.db.transaction import Executor, transaction
from app.errors import Forbidden, Unauthenticated
from app.models.management import memberships, refresh_tokens, tenants, users
from app.runtime.platform import Platform
from app.services.audit import records as audit
from app.services.people.users import UserRecord, user_by_email, user_by_id
from app.tenancy.registry import TENANT_COLUMNS, TenantRecord

BAD_CREDENTIALS = "invalid email or password"
REFRESH_PREFIX = "trt_"


@dataclass(frozen=True)
class Session:
    access_token: str
    refresh_token: str
    expires_in: int
    user: UserRecord
    tenant_id: str | None


@dataclass(frozen=True)
class MembershipRecord:
    tenant: TenantRecord
    role: str
    scope: str


async def login(platform: Platform, db: PlaneView, *, email: str, password: str, tenant_id: str | None,
                address: str | None = None, request_id: str | None = None) -> Session:
    """A new session for the right email and password, on the request's own transaction."""
    email = email.strip()
    await platform.login_throttle.check(email, address)
    user = await user_by_email(db, email)
    # The same error, and the same argon2 work, whether the email or the password is wrong.
    if not await platform.passwords.verify(user.password_hash if user else None, password) or user is None:
        await platform.login_throttle.failed(email, address)
        # Audited in the tenant asked for only if it exists (else in the management tenant's).
        known = tenant_id if tenant_id and is_tenant_id(tenant_id) and await platform.registry.tenant(
            db, tenant_id) is not None else "management"

        async def audit_failure(tx: Executor) -> None:
            await audit.record(tx, tenant_id=known, actor=audit.Actor("anonymous", address), action="login.failed",
                               target=email[:200], request_id=request_id)

        db.always(audit_failure)  # kept although the request fails, on the request's connection
        raise Unauthenticated(BAD_CREDENTIALS)
    await platform.login_throttle.succeeded(email, address)
    if user.disabled:  # said only after the right password: nobody else learns the account's state
        raise Unauthenticated("this account is disabled")
    default_tenant = await _default_tenant(db, user.id, tenant_id)
    await db.execute(update(users).where(users.c.id == user.id).values(last_login_at=func.now()))
    await audit.record(db, tenant_id=default_tenant or "management", actor=audit.Actor.user(user.id),
                       action="login.succeeded", target=user.email, request_id=request_id)
    return await _issue(platform, db, user, default_tenant, family_id=uuid.uuid4())


async def start_session(platform: Platform, user: UserRecord, tenant_id: str | None,
                        reach: Reach | None = None) -> Session:
    """A new login session (token family) for a user who just proved who they are otherwise;
    `reach` limits it (a single sign-on session reaches only its provider's tenant)."""
    async with transaction(platform.db.app) as tx:
        await tx.execute(update(users).where(users.c.id == user.id).values(last_login_at=func.now()))
        return await _issue(platform, tx, user, tenant_id, family_id=uuid.uuid4(),
                            reach=reach.encode() if reach else None)


async def _default_tenant(db: Executor, user_id: UUID, asked: str | None) -> str | None:
    live = select(memberships.c.tenant_id).join(tenants, tenants.c.id == memberships.c.tenant_id).where(
        memberships.c.user_id == user_id, tenants.c.status != "DELETED"
    )
    if asked is not None:
        found = (await db.execute(live.where(memberships.c.tenant_id == asked))).first()
        if found is None:
            raise Forbidden(f"you are not a member of tenant {asked}")
        return asked
    rows = (await db.execute(live.limit(2))).scalars().all()
    return rows[0] if len(rows) == 1 else None


async def _issue(platform: Platform, tx: Executor, user: UserRecord, tenant_id: str | None,
                 *, family_id: UUID, reach: str | None = None, replaces: UUID | None = None) -> Session:
    secret = new_secret(REFRESH_PREFIX)
    token_id = (await tx.execute(insert(refresh_tokens).values(
        family_id=family_id,
        user_id=user.id,
        tenant_id=tenant_id,
        token_hash=secret_hash(secret),
        expires_at=datetime.now(UTC) + timedelta(seconds=platform.settings.refresh_token_ttl_seconds),
        reach=reach,
    ).returning(refresh_tokens.c.id))).scalar_one()
    if replaces is not None:  # the rotated token remembers its successor for the grace window
        await tx.execute(update(refresh_tokens).where(refresh_tokens.c.id == replaces).values(
            rotated_at=func.now(), successor_id=token_id, successor_box=_successors(platform).seal(secret)))
    return _session(platform, user, tenant_id, secret, family_id=family_id, reach=reach)


def _session(platform: Platform, user: UserRecord, tenant_id: str | None, secret: str, *, family_id: UUID,
             reach: str | None) -> Session:
    access = platform.access_tokens.issue(user_id=str(user.id), default_tenant_id=tenant_id, reach=reach,
                                          family=str(family_id))
    return Session(access, secret, platform.access_tokens.ttl_seconds, user, tenant_id)


def _successors(platform: Platform) -> SecretBox:
    return SecretBox(platform.settings.resolved_secret_key(), b"tenantry-refresh-successor")


async def refresh(platform: Platform, db: PlaneView, *, refresh_token: str) -> Session:
    """Rotate a refresh token. The same token presented again within the grace window, while its
    successor is unused, gets that successor again (two tabs refreshing at once, a retry after a
    lost answer); any other reuse of a rotated token revokes its whole family."""
    row = (await db.execute(
        select(refresh_tokens).where(refresh_tokens.c.token_hash == secret_hash(refresh_token)).with_for_update()
    )).first()
    if row is None or row.revoked_at is not None or row.expires_at <= datetime.now(UTC):
        raise Unauthenticated("invalid or expired refresh token")
    if row.rotated_at is not None:
        again = await _within_grace(platform, db, row)
        if again is not None:
            return again
        family_id = row.family_id

        async def revoke_family(tx: Executor) -> None:
            await _revoke_family(tx, family_id)

        db.always(revoke_family)  # the family stays revoked although this request fails
        platform.registry.forget_sessions()
        raise Unauthenticated("refresh token reuse detected; please log in again", family=str(family_id))
    user = await user_by_id(db, row.user_id)
    if user is None or user.disabled:  # (disabling revokes the families too)
        raise Unauthenticated("invalid or expired refresh token")
    return await _issue(platform, db, user, row.tenant_id, family_id=row.family_id, reach=row.reach, replaces=row.id)


async def _within_grace(platform: Platform, db: PlaneView, row: Any) -> Session | None:
    """The successor again, with a fresh access token, when the rotation was moments ago and the
    successor is still the family's live, unrotated token; else None (a reuse)."""
    grace = timedelta(seconds=platform.settings.refresh_reuse_grace_seconds)
    if row.successor_id is None or row.successor_box is None or row.rotated_at + grace < datetime.now(UTC):
        return None
    successor = (await db.execute(select(refresh_tokens).where(
        refresh_tokens.c.id == row.successor_id).with_for_update())).first()
    if successor is None or successor.rotated_at is not None or successor.revoked_at is not None:
        return None
    user = await user_by_id(db, row.user_id)
    if user is None or user.disabled:
        raise Unauthenticated("invalid or expired refresh token")
    try:
        secret = _successors(platform).open(row.successor_box)
    except InvalidTag:  # sealed under another platform key (rotated since): a reuse like any other
        return None
    return _session(platform, user, successor.tenant_id, secret, family_id=row.family_id, reach=successor.reach)


async def _revoke_family(db: Executor, family_id: UUID) -> None:
    await db.execute(update(refresh_tokens).where(
        refresh_tokens.c.family_id == family_id, refresh_tokens.c.revoked_at.is_(None)
    ).values(revoked_at=func.now()))


async def logout(db: Executor, *, refresh_token: str) -> bool:
    row = (await db.execute(
        select(refresh_tokens.c.family_id).where(refresh_tokens.c.token_hash == secret_hash(refresh_token))
    )).first()
    if row is None:
        return False
    await _revoke_family(db, row.family_id)
    return True


def memberships_statement(user_id: UUID | ColumnElement[Any]) -> Select[Any]:
    """The user's memberships with their tenants' columns, tenant chooser order (the compiled read
    path nests it under the user's row)."""
    return (
        select(memberships.c.role, memberships.c.scope, memberships.c.user_id, *TENANT_COLUMNS)
        .join(tenants, tenants.c.id == memberships.c.tenant_id)
        .where(memberships.c.user_id == user_id, tenants.c.status != "DELETED")
        .order_by(tenants.c.depth, tenants.c.domain)
    )


async def memberships_of(db: Executor, user_id: UUID) -> list[MembershipRecord]:
    rows = (await db.execute(memberships_statement(user_id))).all()
    return [MembershipRecord(TenantRecord.from_row(r), r.role, r.scope) for r in rows]
