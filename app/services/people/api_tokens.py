"""API tokens: a tenant-scoped bearer secret (`tapi_<tenant>_<secret>`, shown once, stored hashed)
with at most its creator's permissions — for a parent's automation, scripts and integrations."""

from __future__ import annotations

import secrets
from datetime import datetime
from uuid import UUID

from sqlalchemy import insert, select, update

from app.access.credentials import API_TOKEN_COLUMNS as COLUMNS
from app.access.credentials import API_TOKEN_PREFIX as PREFIX
from app.access.credentials import ApiTokenRecord, api_token_record
from app.access.principal import Routed
from app.auth.roles import TENANT_ADMIN
from app.auth.tokens import secret_hash
from app.db.transaction import Executor
from app.errors import InvalidInput, NotFound
from app.models.management import api_tokens
from app.services.audit import records as audit
from app.services.custom_roles.roles import check_permissions


async def create(db: Executor, routed: Routed, *, name: str, permissions: list[str], expires_at: datetime | None,
                 now: datetime, request_id: str | None = None) -> tuple[str, ApiTokenRecord]:
    routed.require(TENANT_ADMIN)
    # A parent-level admin minting a token inside a child would leave a credential there that
    # no member of the child made (dormant until its creator joined): refused.
    routed.require_own_member("create API tokens")
    if not name.strip() or len(name) > 100:
        raise InvalidInput("name must be 1-100 characters", field="name")
    if not permissions:
        raise InvalidInput("give the token at least one permission", field="permissions")
    granted = check_permissions(routed, permissions)  # never more than the creator holds
    if expires_at is not None and (expires_at.tzinfo is None or expires_at <= now):
        raise InvalidInput("expiresAt must be a future time with a time zone", field="expiresAt")
    token = f"{PREFIX}{routed.tenant.id}_{secrets.token_urlsafe(32)}"
    row = (await db.execute(insert(api_tokens).values(
        tenant_id=routed.tenant.id, name=name.strip(), token_hash=secret_hash(token), permissions=granted,
        created_by=routed.principal.user_id, expires_at=expires_at).returning(*COLUMNS))).one()
    record = api_token_record(row)
    await audit.record(db, tenant_id=routed.tenant.id, actor=routed.actor, action="api_token.created",
                       target=str(record.id), changes=[{"attribute": "permissions", "previous": None,
                                                       "new": list(granted)}], request_id=request_id)
    return token, record


async def list_tokens(db: Executor, routed: Routed) -> list[ApiTokenRecord]:
    routed.require(TENANT_ADMIN)
    rows = (await db.execute(select(*COLUMNS).where(api_tokens.c.tenant_id == routed.tenant.id,
                                                    api_tokens.c.revoked_at.is_(None))
                             .order_by(api_tokens.c.created_at))).all()
    return [api_token_record(r) for r in rows]


async def revoke(db: Executor, routed: Routed, token_id: str, *, now: datetime, request_id: str | None = None) -> None:
    routed.require(TENANT_ADMIN)
    try:
        key = UUID(token_id)
    except ValueError as exc:
        raise NotFound(f"API token {token_id} not found") from exc
    result = await db.execute(update(api_tokens).where(
        api_tokens.c.id == key, api_tokens.c.tenant_id == routed.tenant.id, api_tokens.c.revoked_at.is_(None),
    ).values(revoked_at=now))
    if not result.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"API token {token_id} not found")
    await audit.record(db, tenant_id=routed.tenant.id, actor=routed.actor, action="api_token.revoked",
                       target=token_id, request_id=request_id)
