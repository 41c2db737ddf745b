"""Invitations: a single-use token, valid 48 hours, stored hashed and sent through the outbox.

Anyone holding the token may preview it (tenant and role); accepting needs a logged-in user
whose email matches the invited one (case-insensitive).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import func, insert, select, update

from app.access.principal import Principal, Routed
from app.auth.roles import TENANT_ADMIN
from app.auth.tokens import new_secret, secret_hash
from app.db.transaction import Executor
from app.errors import Conflict, Forbidden, InvalidInput, NotFound, TenantSuspended
from app.models.management import invitations, memberships, outbox, tenants, users
from app.services.audit import records as audit
from app.services.pagination import Page, build_page, decode_uuid_cursor, page_size
from app.services.people.members import add_member, check_delegation
from app.services.people.users import normalise_email, user_by_id

PREFIX = "tinv_"
COLUMNS = (invitations.c.id, invitations.c.tenant_id, invitations.c.email, invitations.c.role,
           invitations.c.created_at, invitations.c.expires_at, invitations.c.accepted_at, invitations.c.revoked_at)


@dataclass(frozen=True)
class InvitationRecord:
    id: UUID
    tenant_id: str
    email: str
    role: str
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None
    revoked_at: datetime | None

    def status(self, now: datetime) -> str:
        if self.accepted_at is not None:
            return "ACCEPTED"
        if self.revoked_at is not None:
            return "REVOKED"
        return "EXPIRED" if self.expires_at <= now else "PENDING"


@dataclass(frozen=True)
class InvitationPreview:
    invitation: InvitationRecord
    tenant_domain: str
    tenant_company: str


def _record(row: Any) -> InvitationRecord:
    return InvitationRecord(*row[:8])


async def queue_invitation_mail(db: Executor, *, tenant_id: str, domain: str, email: str, role: str, token: str,
                                expires_at: datetime) -> None:
    await db.execute(insert(outbox).values(
        tenant_id=tenant_id, recipient=email, subject=f"You are invited to {domain} as {role}",
        body=f"Accept the invitation to tenant {domain} ({tenant_id}) as {role} before {expires_at.isoformat()} "
             f"with this token: {token}"))


async def invite(db: Executor, tenant_db: Executor, routed: Routed, *, email: str, role: str, now: datetime,
                 ttl: timedelta, request_id: str | None = None) -> InvitationRecord:
    routed.require(TENANT_ADMIN)
    email = normalise_email(email)
    await check_delegation(tenant_db, routed, role)
    member = (await db.execute(select(memberships.c.user_id).join(users, users.c.id == memberships.c.user_id)
                               .where(memberships.c.tenant_id == routed.tenant.id,
                                      func.lower(users.c.email) == email.lower()))).first()
    if member is not None:
        raise Conflict(f"{email} is already a member of this tenant")
    # A new invitation replaces any pending one for the same email.
    await db.execute(update(invitations).where(
        invitations.c.tenant_id == routed.tenant.id, func.lower(invitations.c.email) == email.lower(),
        invitations.c.accepted_at.is_(None), invitations.c.revoked_at.is_(None)).values(revoked_at=now))
    token = new_secret(PREFIX)
    row = (await db.execute(insert(invitations).values(
        tenant_id=routed.tenant.id, email=email, role=role, token_hash=secret_hash(token),
        invited_by=routed.principal.user_id if not routed.principal.is_device else None,
        created_at=now, expires_at=now + ttl).returning(*COLUMNS))).one()
    record = _record(row)
    await queue_invitation_mail(db, tenant_id=routed.tenant.id, domain=routed.tenant.domain, email=email, role=role,
                                token=token, expires_at=record.expires_at)
    await audit.record(db, tenant_id=routed.tenant.id, actor=routed.actor, action="invitation.created",
                       target=email, changes=[{"attribute": "role", "previous": None, "new": role}],
                       request_id=request_id)
    return record


async def preview(db: Executor, token: str) -> InvitationPreview | None:
    row = (await db.execute(select(*COLUMNS, tenants.c.domain, tenants.c.company)
                            .join(tenants, tenants.c.id == invitations.c.tenant_id)
                            .where(invitations.c.token_hash == secret_hash(token)))).first()
    return InvitationPreview(_record(row), row.domain, row.company) if row else None


async def accept(db: Executor, principal: Principal, token: str, *, now: datetime,
                 request_id: str | None = None) -> tuple[InvitationRecord, str]:
    """Accept for the logged-in user; returns the invitation and the tenant's domain."""
    row = (await db.execute(select(*COLUMNS, tenants.c.status)
                            .join(tenants, tenants.c.id == invitations.c.tenant_id)
                            .where(invitations.c.token_hash == secret_hash(token))
                            .with_for_update(of=invitations))).first()
    if row is None:
        raise NotFound("no such invitation")
    record = _record(row)
    status = record.status(now)
    if status == "ACCEPTED":
        raise Conflict("this invitation has already been used")
    if status == "REVOKED":
        raise Conflict("this invitation was revoked")
    if status == "EXPIRED":
        raise InvalidInput("this invitation has expired; ask for a new one", field="token")
    if row.status == "DELETED":
        raise NotFound("no such invitation")
    if row.status == "SUSPENDED":  # a suspended tenant takes no new members, by any door
        raise TenantSuspended("this tenant is suspended: its invitations cannot be accepted now")
    user = await user_by_id(db, principal.user_id)
    if user is None or user.email.lower() != record.email.lower():
        raise Forbidden("this invitation is for another email address")
    existing = (await db.execute(select(memberships.c.role).where(
        memberships.c.tenant_id == record.tenant_id, memberships.c.user_id == user.id))).first()
    if existing is not None:
        raise Conflict("you are already a member of this tenant")
    await add_member(db, tenant_id=record.tenant_id, user_id=user.id, role=record.role)
    await db.execute(update(invitations).where(invitations.c.id == record.id).values(accepted_at=now))
    await audit.record(db, tenant_id=record.tenant_id, actor=principal.actor, action="invitation.accepted",
                       target=record.email, changes=[{"attribute": "role", "previous": None, "new": record.role}],
                       request_id=request_id)
    domain = (await db.execute(select(tenants.c.domain).where(tenants.c.id == record.tenant_id))).scalar_one()
    return record, domain


async def list_pending(db: Executor, routed: Routed, *, first: int | None, after: str | None,
                       cap: int) -> Page[InvitationRecord]:
    routed.require(TENANT_ADMIN)
    size = page_size(first, cap)
    stmt = select(*COLUMNS).where(invitations.c.tenant_id == routed.tenant.id, invitations.c.accepted_at.is_(None),
                                  invitations.c.revoked_at.is_(None))
    cursor = decode_uuid_cursor(after)
    if cursor is not None:
        stmt = stmt.where(invitations.c.id > cursor)
    rows = (await db.execute(stmt.order_by(invitations.c.id).limit(size + 1))).all()
    return build_page([_record(r) for r in rows], size, lambda i: str(i.id))


async def _pending(db: Executor, routed: Routed, invitation_id: str) -> InvitationRecord:
    routed.require(TENANT_ADMIN)
    routed.require_data_access()  # changing a tenant's people is behind its parentAccess, like its data
    try:
        key = UUID(invitation_id)
    except ValueError as exc:
        raise NotFound(f"invitation {invitation_id} not found") from exc
    row = (await db.execute(select(*COLUMNS).where(invitations.c.id == key, invitations.c.tenant_id == routed.tenant.id,
                                                   invitations.c.accepted_at.is_(None),
                                                   invitations.c.revoked_at.is_(None)).with_for_update())).first()
    if row is None:
        raise NotFound(f"invitation {invitation_id} not found")
    return _record(row)


async def resend(db: Executor, routed: Routed, invitation_id: str, *, now: datetime, ttl: timedelta,
                 request_id: str | None = None) -> InvitationRecord:
    """A fresh token and expiry (the old token stops working), mailed again."""
    record = await _pending(db, routed, invitation_id)
    token = new_secret(PREFIX)
    row = (await db.execute(update(invitations).where(invitations.c.id == record.id)
                            .values(token_hash=secret_hash(token), expires_at=now + ttl).returning(*COLUMNS))).one()
    updated = _record(row)
    await queue_invitation_mail(db, tenant_id=routed.tenant.id, domain=routed.tenant.domain, email=updated.email,
                                role=updated.role, token=token, expires_at=updated.expires_at)
    await audit.record(db, tenant_id=routed.tenant.id, actor=routed.actor, action="invitation.resent",
                       target=updated.email, request_id=request_id)
    return updated


async def revoke(db: Executor, routed: Routed, invitation_id: str, *, now: datetime,
                 request_id: str | None = None) -> None:
    record = await _pending(db, routed, invitation_id)
    await db.execute(update(invitations).where(invitations.c.id == record.id).values(revoked_at=now))
    await audit.record(db, tenant_id=routed.tenant.id, actor=routed.actor, action="invitation.revoked",
                       target=record.email, request_id=request_id)
