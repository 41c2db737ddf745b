"""Device credentials: a bearer token per device, shown once and stored hashed in the tenant.

The token names its tenant (`tdev_<tenant id>_<secret>`) so a request can be routed before
the secret is checked, and the check runs inside that tenant's schema under its role: a
device token can never be resolved in any other tenant.
"""

from __future__ import annotations

import secrets

from sqlalchemy import func, insert, update

from app.access.credentials import DEVICE_TOKEN_PREFIX as PREFIX
from app.auth.tokens import secret_hash
from app.db.transaction import Executor
from app.models.tenant import device_tokens


async def create(db: Executor, *, tenant_id: str, device_id: int) -> str:
    token = f"{PREFIX}{tenant_id}_{secrets.token_urlsafe(32)}"
    await db.execute(insert(device_tokens).values(device_id=device_id, token_hash=secret_hash(token)))
    return token


async def revoke_all(db: Executor, *, device_id: int) -> int:
    result = await db.execute(update(device_tokens).where(
        device_tokens.c.device_id == device_id, device_tokens.c.revoked_at.is_(None)).values(revoked_at=func.now()))
    return int(result.rowcount)  # type: ignore[attr-defined]
