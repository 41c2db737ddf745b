"""Accounts: changing and resetting passwords, disabling users (for the shell operator).

- changePassword needs the current password and ends every other login session of the user
  (their refresh-token families); the session that asked keeps going.
- A reset is a single-use token, mailed through the outbox, valid one hour and stored hashed.
  `requestPasswordReset` answers the same whether or not the email has an account (no
  enumeration); using a token ends every session of the user.
- A disabled user signs in nowhere: logins, refreshes and routing refuse them, their sessions
  end, and the API tokens they made stop (the access gate checks the creator).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy import func, insert, select, update

from app.access.principal import Actor, Principal
from app.auth.passwords import check_password_policy
from app.auth.tokens import new_secret, secret_hash
from app.db.transaction import Executor, transaction
from app.errors import InvalidInput, NotFound, Unauthenticated
from app.models.management import memberships, outbox, password_resets, refresh_tokens, users
from app.runtime.platform import Platform
from app.services.audit import records as audit
from app.services.people.users import UserRecord, normalise_email, user_by_email, user_by_id

RESET_PREFIX = "trst_"
RESET_TTL = timedelta(hours=1)
MAX_LIVE_RESETS = 3


@dataclass(frozen=True)
class UserSummary:
    id: UUID
    email: str
    created_at: datetime
    last_login_at: datetime | None
    disabled: bool
    memberships: int


async def _end_sessions(db: Executor, user_id: UUID, *, keep: UUID | None = None) -> None:
    stmt = update(refresh_tokens).where(refresh_tokens.c.user_id == user_id, refresh_tokens.c.revoked_at.is_(None))
    if keep is not None:
        stmt = stmt.where(refresh_tokens.c.family_id != keep)
    await db.execute(stmt.values(revoked_at=func.now()))


async def _set_password(platform: Platform, db: Executor, user_id: UUID, password: str) -> None:
    password_hash = await platform.passwords.hash(password)  # the password policy applies here
    await db.execute(update(users).where(users.c.id == user_id).values(password_hash=password_hash))


async def change_password(platform: Platform, db: Executor, principal: Principal, *, current: str, new: str,
                          address: str | None = None, request_id: str | None = None) -> None:
    user = await user_by_id(db, principal.user_id)
    if user is None or user.disabled:
        raise Unauthenticated("this account is disabled")
    await platform.login_throttle.check(user.email, address)  # a stolen session cannot guess the password fast
    if not await platform.passwords.verify(user.password_hash, current):
        await platform.login_throttle.failed(user.email, address)
        raise Unauthenticated("the current password is wrong")
    await platform.login_throttle.succeeded(user.email, address)
    if new == current:
        raise InvalidInput("the new password must differ from the current one", field="newPassword")
    check_password_policy(new)
    await _set_password(platform, db, user.id, new)
    await _end_sessions(db, user.id, keep=principal.session_family)
    platform.registry.forget_sessions()  # its access tokens stop here at once
    await audit.record(db, tenant_id="management", actor=principal.actor, action="password.changed",
                       target=user.email, request_id=request_id)


async def request_reset(platform: Platform, db: Executor, *, email: str, now: datetime,
                        address: str | None = None, request_id: str | None = None) -> None:
    """Mail a reset token if the email has an (enabled) account; the caller learns nothing. The
    answer comes before any work for the account is done (a task of its own does it), so its time
    does not tell accounts from strangers either (21.9 against 10.9 ms, measured from outside)."""
    email = normalise_email(email)
    # An email or address under attack gets no mail either (only looked at: asking is no guess).
    await platform.login_throttle.check(email, address, attempt=False)
    user = await user_by_email(db, email)
    if user is None or user.disabled:
        return
    task = asyncio.create_task(_mail_reset(platform, user.id, user.email, now, address, request_id))
    platform.background.add(task)
    task.add_done_callback(platform.background.discard)


async def _mail_reset(platform: Platform, user_id: UUID, email: str, now: datetime, address: str | None,
                      request_id: str | None) -> None:
    try:
        async with transaction(platform.db.app) as tx:
            # One at a time per user (the row lock), so the cap below is exact however many ask at once.
            await tx.execute(select(users.c.id).where(users.c.id == user_id).with_for_update())
            live = (await tx.execute(select(func.count()).select_from(password_resets).where(
                password_resets.c.user_id == user_id, password_resets.c.used_at.is_(None),
                password_resets.c.expires_at > now))).scalar_one()
            if live >= MAX_LIVE_RESETS:  # no mail bombing: (silently) no more mails until one expires
                return
            token = new_secret(RESET_PREFIX)
            expires = now + RESET_TTL
            await tx.execute(insert(password_resets).values(user_id=user_id, token_hash=secret_hash(token),
                                                            expires_at=expires))
            await tx.execute(insert(outbox).values(
                recipient=email, subject="Reset your password",
                body=f"Someone (hopefully you) asked to reset your password. Use this token before "
                     f"{expires.isoformat()} (once): {token}\nIf it was not you, ignore this mail."))
            await audit.record(tx, tenant_id="management", actor=Actor("anonymous", address),
                               action="password.reset_requested", target=email, request_id=request_id)
    except Exception:  # the caller was answered already: the next request tries again
        logging.getLogger("tenantry.accounts").exception("could not queue a password reset mail")


async def reset_password(platform: Platform, db: Executor, *, token: str, new: str, now: datetime,
                         request_id: str | None = None) -> None:
    check_password_policy(new)
    row = (await db.execute(select(password_resets).where(password_resets.c.token_hash == secret_hash(token))
                            .with_for_update())).first()
    if row is None or row.used_at is not None or row.expires_at <= now:
        raise InvalidInput("invalid, used or expired reset token; ask for a new one", field="token")
    user = await user_by_id(db, row.user_id)
    if user is None or user.disabled:
        raise InvalidInput("invalid, used or expired reset token; ask for a new one", field="token")
    await _set_password(platform, db, user.id, new)
    # This token, and every other live one of the user: one reset ends them all.
    await db.execute(update(password_resets).where(password_resets.c.user_id == user.id,
                                                   password_resets.c.used_at.is_(None)).values(used_at=now))
    await _end_sessions(db, user.id)
    platform.registry.forget_sessions()  # its access tokens stop here at once
    await audit.record(db, tenant_id="management", actor=Actor.user(user.id), action="password.reset",
                       target=user.email, request_id=request_id)


# --- the shell operator's commands ------------------------------------------------------------------

async def list_users(db: Executor) -> list[UserSummary]:
    count = (select(func.count()).select_from(memberships).where(memberships.c.user_id == users.c.id)
             .scalar_subquery())
    rows = (await db.execute(select(users.c.id, users.c.email, users.c.created_at, users.c.last_login_at,
                                    users.c.disabled_at, count.label("memberships"))
                             .order_by(func.lower(users.c.email)))).all()
    return [UserSummary(r.id, r.email, r.created_at, r.last_login_at, r.disabled_at is not None, r.memberships)
            for r in rows]


async def _by_email(db: Executor, email: str) -> UserRecord:
    user = await user_by_email(db, email)
    if user is None:
        raise NotFound(f"no user {email}")
    return user


async def operator_set_password(platform: Platform, db: Executor, *, email: str, password: str) -> UserRecord:
    user = await _by_email(db, email)
    await _set_password(platform, db, user.id, password)
    await _end_sessions(db, user.id)
    platform.registry.forget_sessions()  # its access tokens stop here at once
    await audit.record(db, tenant_id="management", actor=Principal.operator().actor, action="password.reset",
                       target=user.email)
    return user


async def set_disabled(platform: Platform, db: Executor, *, email: str, disabled: bool) -> UserRecord:
    user = await _by_email(db, email)
    await db.execute(update(users).where(users.c.id == user.id).values(
        disabled_at=func.now() if disabled else None))
    if disabled:
        await _end_sessions(db, user.id)
        platform.registry.forget_sessions()  # its access tokens stop here at once
    await audit.record(db, tenant_id="management", actor=Principal.operator().actor,
                       action="user.disabled" if disabled else "user.enabled", target=user.email)
    platform.registry.forget_user(user.id)
    return user
