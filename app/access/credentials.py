"""Bearer credentials: what a token is, and the live record behind it.

Three kinds of bearer reach the gate: user access tokens (JWTs, `app.auth.tokens`), API tokens
(`tapi_<tenant>_<secret>`, stored hashed in the management schema) and device tokens
(`tdev_<tenant>_<secret>`, stored hashed in the tenant's own schema, followed through
`device_token_moves` when the device migrated). The tenant is part of the token so a request
is routed before the secret is checked.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from sqlalchemy import select, update

from app.auth.tokens import secret_hash
from app.db.transaction import Executor
from app.errors import Unauthenticated
from app.models.management import api_tokens, device_token_moves, refresh_tokens
from app.models.tenant import device_tokens, roles

API_TOKEN_PREFIX = "tapi_"
DEVICE_TOKEN_PREFIX = "tdev_"
_API_TOKEN = re.compile(r"^tapi_(management|t[0-9]{9})_([A-Za-z0-9_-]{32,64})$")
_DEVICE_TOKEN = re.compile(r"^tdev_(management|t[0-9]{9})_([A-Za-z0-9_-]{32,64})$")
LAST_USED_EVERY = 60.0  # seconds: last-used time is kept to the minute, not written per request

API_TOKEN_COLUMNS = (api_tokens.c.id, api_tokens.c.tenant_id, api_tokens.c.name, api_tokens.c.permissions,
                     api_tokens.c.created_by, api_tokens.c.created_at, api_tokens.c.expires_at,
                     api_tokens.c.last_used_at, api_tokens.c.revoked_at)


def bearer(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; UNAUTHENTICATED otherwise."""
    if not authorization:
        raise Unauthenticated("authentication required: send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def is_api_token(token: str) -> bool:
    return token.startswith(API_TOKEN_PREFIX)


def is_device_token(token: str) -> bool:
    return token.startswith(DEVICE_TOKEN_PREFIX)


def api_token_tenant(token: str) -> str | None:
    match = _API_TOKEN.match(token)
    return match.group(1) if match else None


def device_token_tenant(token: str) -> str | None:
    match = _DEVICE_TOKEN.match(token)
    return match.group(1) if match else None


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


def api_token_record(row: object) -> ApiTokenRecord:
    values = list(row)  # type: ignore[call-overload]
    values[3] = tuple(values[3])
    return ApiTokenRecord(*values)


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


async def live_api_token(db: Executor, token: str, *, now: datetime, last_used: LastUsed) -> ApiTokenRecord | None:
    """The live token (checked on every request, so a revocation takes effect at once)."""
    row = (await db.execute(select(*API_TOKEN_COLUMNS).where(api_tokens.c.token_hash == secret_hash(token),
                                                             api_tokens.c.revoked_at.is_(None)))).first()
    if row is None:
        return None
    record = api_token_record(row)
    if record.expires_at is not None and record.expires_at <= now:
        return None
    if last_used.due(record.id):
        await db.execute(update(api_tokens).where(api_tokens.c.id == record.id).values(last_used_at=now))
    return record


async def device_of_token(tenant_db: Executor, token: str) -> int | None:
    """The device a live token belongs to, looked up in the routed tenant's schema."""
    stmt = select(device_tokens.c.device_id).where(
        device_tokens.c.token_hash == secret_hash(token), device_tokens.c.revoked_at.is_(None))
    return (await tenant_db.execute(stmt)).scalar_one_or_none()


async def device_has_live_token(tenant_db: Executor, device_id: int) -> bool:
    stmt = select(device_tokens.c.id).where(device_tokens.c.device_id == device_id,
                                            device_tokens.c.revoked_at.is_(None)).limit(1)
    return (await tenant_db.execute(stmt)).first() is not None


async def device_moved_to(management: Executor, token: str) -> str | None:
    """Where a token's device lives now, if it moved since the token was issued."""
    stmt = select(device_token_moves.c.tenant_id).where(device_token_moves.c.token_hash == secret_hash(token))
    return (await management.execute(stmt)).scalar_one_or_none()


async def custom_role_permissions(tenant_db: Executor, name: str) -> frozenset[str]:
    """A custom role's permissions from the tenant schema; none for an unknown role."""
    row = (await tenant_db.execute(select(roles.c.permissions).where(roles.c.name == name))).first()
    return frozenset(row.permissions) if row else frozenset()


async def session_alive(management: Executor, family: UUID) -> bool:
    """Whether the login session (refresh-token family) an access token was issued in still
    stands: logout and refresh-token reuse revoke every token of the family."""
    row = (await management.execute(select(refresh_tokens.c.id).where(
        refresh_tokens.c.family_id == family, refresh_tokens.c.revoked_at.is_(None)).limit(1))).first()
    return row is not None
