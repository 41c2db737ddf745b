"""API tokens: a tenant-scoped bearer secret (`tapi_<tenant>_<secret>`, shown once, stored hashed)
with at most its creator's permissions — for a parent's automation, scripts and integrations."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from sqlalchemy import insert, select, update

from app.auth.principal import Routed
from app.auth.roles import TENANT_ADMIN
from app.auth.tokens import secret_hash
from app.db.transaction import Executor
from app.errors import InvalidInput, NotFound
from app.models.management import api_tokens
from app.services import audit
from app.services.roles import check_permissions

PREFIX = "tapi_"
_TOKEN = re.compile(r"^tapi_(management|t[0-9]{9})_([A-Za-z0-9_-]{32,64})$")
COLUMNS = (api_tokens.c.id, api_tokens.c.tenant_id, api_tokens.c.name, api_tokens.c.permissions,
           api_tokens.c.created_by, api_tokens.c.created_at, api_tokens.c.expires_at, api_tokens.c.last_used_at,
           api_tokens.c.revoked_at)
LAST_USED_EVERY = 60.0  # seconds: last-used time is kept to the minute, not written per request


@dataclass(frozen=True)
class ApiTokenRecord:
    id: UUID
    tenant_id: str
    name: str
    permissions: tuple[str, ...]
    created_by: UUID
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


def _record(row: object) -> ApiTokenRecord:
    values = list(row)  # type: ignore[call-overload]
    values[3] = tuple(values[3])
    return ApiTokenRecord(*values)


def is_api_token(token: str) -> bool:
    return token.startswith(PREFIX)


def parse(token: str) -> str | None:
    match = _TOKEN.match(token)
    return match.group(1) if match else None


async def create(db: Executor, routed: Routed, *, name: str, permissions: list[str], expires_at: datetime | None,
                 now: datetime, request_id: str | None = None) -> tuple[str, ApiTokenRecord]:
    routed.require(TENANT_ADMIN)
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
    record = _record(row)
    await audit.record(db, tenant_id=routed.tenant.id, actor=routed.actor, action="api_token.created",
                       target=str(record.id), changes=[{"attribute": "permissions", "previous": None,
                                                       "new": list(granted)}], request_id=request_id)
    return token, record


async def list_tokens(db: Executor, routed: Routed) -> list[ApiTokenRecord]:
    routed.require(TENANT_ADMIN)
    rows = (await db.execute(select(*COLUMNS).where(api_tokens.c.tenant_id == routed.tenant.id,
                                                    api_tokens.c.revoked_at.is_(None))
                             .order_by(api_tokens.c.created_at))).all()
    return [_record(r) for r in rows]


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


class LastUsed:
    """Marks tokens used at most once a minute per process (a write per request would double them)."""

    def __init__(self) -> None:
        self._marked: dict[UUID, float] = {}

    def due(self, token_id: UUID) -> bool:
        now = time.monotonic()
        if now - self._marked.get(token_id, -LAST_USED_EVERY) < LAST_USED_EVERY:
            return False
        self._marked[token_id] = now
        return True


async def resolve(db: Executor, token: str, *, now: datetime, last_used: LastUsed) -> ApiTokenRecord | None:
    """The live token (checked on every request, so a revocation takes effect at once)."""
    row = (await db.execute(select(*COLUMNS).where(api_tokens.c.token_hash == secret_hash(token),
                                                   api_tokens.c.revoked_at.is_(None)))).first()
    if row is None:
        return None
    record = _record(row)
    if record.expires_at is not None and record.expires_at <= now:
        return None
    if last_used.due(record.id):
        await db.execute(update(api_tokens).where(api_tokens.c.id == record.id).values(last_used_at=now))
    return record
