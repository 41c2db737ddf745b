"""Device credentials: a bearer token per device, shown once and stored hashed in the tenant.

The token names its tenant (`tdev_<tenant id>_<secret>`) so a request can be routed before
the secret is checked, and the check runs inside that tenant's schema under its role: a
device token can never be resolved in any other tenant.
"""

from __future__ import annotations

import re
import secrets

from sqlalchemy import func, insert, select, update

from app.auth.tokens import secret_hash
from app.db.transaction import Executor
from app.models.management import device_token_moves
from app.models.tenant import device_tokens

PREFIX = "tdev_"
_TOKEN = re.compile(r"^tdev_(management|t[0-9]{9})_([A-Za-z0-9_-]{32,64})$")


def is_device_token(token: str) -> bool:
    return token.startswith(PREFIX)


def parse(token: str) -> tuple[str, str] | None:
    """(tenant id, whole token) for a well-formed device token, else None."""
    match = _TOKEN.match(token)
    return (match.group(1), token) if match else None


async def create(db: Executor, *, tenant_id: str, device_id: int) -> str:
    token = f"{PREFIX}{tenant_id}_{secrets.token_urlsafe(32)}"
    await db.execute(insert(device_tokens).values(device_id=device_id, token_hash=secret_hash(token)))
    return token


async def resolve(db: Executor, token: str) -> int | None:
    """The device a live token belongs to, looked up in the routed tenant's schema."""
    stmt = select(device_tokens.c.device_id).where(
        device_tokens.c.token_hash == secret_hash(token), device_tokens.c.revoked_at.is_(None))
    return (await db.execute(stmt)).scalar_one_or_none()


async def revoke_all(db: Executor, *, device_id: int) -> int:
    result = await db.execute(update(device_tokens).where(
        device_tokens.c.device_id == device_id, device_tokens.c.revoked_at.is_(None)).values(revoked_at=func.now()))
    return int(result.rowcount)  # type: ignore[attr-defined]


async def moved_to(management: Executor, token: str) -> str | None:
    """Where a token's device lives now, if it moved since the token was issued."""
    stmt = select(device_token_moves.c.tenant_id).where(device_token_moves.c.token_hash == secret_hash(token))
    return (await management.execute(stmt)).scalar_one_or_none()
