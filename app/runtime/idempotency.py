"""Idempotent mutations: a retry with the same Idempotency-Key gets the first answer.

A device that loses the answer to a batch retries it; without a key the batch is stored twice.
Keys are scoped to the tenant and the caller and kept 24 hours. The first answer is stored in
the request's own transaction, so it exists exactly when the mutation's writes committed: a
retry after a failure (nothing written) runs again, a retry after a lost answer replays it.
Two requests with one key at the same time are serialised by a transaction-scoped advisory
lock: the second waits for the first and then replays its answer. The same key with another
request body is CONFLICT.

Mutations that commit work in a transaction of their own (createSubtenant's provisioning,
copyData) keep their own guards against a re-run: a unique domain, copy provenance.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.transaction import Executor, transaction
from app.errors import Conflict, InvalidInput
from app.models.management import idempotency_keys

KEEP = timedelta(hours=24)
_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII, like the UUIDs and ULIDs clients send


@dataclass(frozen=True)
class Claim:
    tenant_id: str
    caller: str
    key: str
    request_hash: bytes
    secret: bool = False  # its answer hands out a credential: a retry is told it ran, never given it again


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise InvalidInput("Idempotency-Key must be 1-255 visible ASCII characters", field="Idempotency-Key")
    return key


def request_hash(query: str, variables: dict[str, Any] | None, operation_name: str | None) -> bytes:
    body = orjson.dumps([query, variables, operation_name], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).digest()


async def claim(db: Executor, claim: Claim, *, now: datetime) -> bytes | None:
    """Lock the key for this transaction; the stored answer if there is one (same request),
    None if this request is the first. CONFLICT for the same key with another request."""
    lock_key = f"{claim.tenant_id}\x1f{claim.caller}\x1f{claim.key}"
    await db.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(lock_key, 0))))
    row = (await db.execute(select(idempotency_keys.c.request_hash, idempotency_keys.c.response).where(
        idempotency_keys.c.tenant_id == claim.tenant_id, idempotency_keys.c.caller == claim.caller,
        idempotency_keys.c.key == claim.key, idempotency_keys.c.created_at > now - KEEP))).first()
    if row is None:
        return None
    if bytes(row.request_hash) != claim.request_hash:
        raise Conflict("this Idempotency-Key was used with another request")
    return bytes(row.response)


async def remember(db: Executor, claim: Claim, response: bytes, *, now: datetime) -> None:
    """Store the first answer (replacing an expired one), in the mutation's own transaction."""
    values = {"tenant_id": claim.tenant_id, "caller": claim.caller, "key": claim.key,
              "request_hash": claim.request_hash, "response": response, "created_at": now}
    stmt = pg_insert(idempotency_keys).values(**values)
    excluded = stmt.excluded
    await db.execute(stmt.on_conflict_do_update(
        index_elements=[idempotency_keys.c.tenant_id, idempotency_keys.c.caller, idempotency_keys.c.key],
        set_={"request_hash": excluded.request_hash, "response": excluded.response,
              "created_at": excluded.created_at}))


PURGE_BATCH = 5000


async def purge(engine: AsyncEngine, *, now: datetime, batch: int = PURGE_BATCH) -> int:
    """Delete expired keys, `batch` rows per transaction (a busy day's keys in one transaction
    held its locks and its WAL for as long as it lasted)."""
    purged = 0
    while True:
        expired = (select(idempotency_keys.c.tenant_id, idempotency_keys.c.caller, idempotency_keys.c.key)
                   .where(idempotency_keys.c.created_at <= now - KEEP).limit(batch))
        async with transaction(engine) as tx:
            result = await tx.execute(delete(idempotency_keys).where(
                tuple_(idempotency_keys.c.tenant_id, idempotency_keys.c.caller, idempotency_keys.c.key)
                .in_(expired)))
        count = int(result.rowcount)  # type: ignore[attr-defined]
        purged += count
        if count < batch:
            return purged
