"""Change announcements for realtime subscribers: PostgreSQL NOTIFY inside the writing transaction.

NOTIFY is transactional: PostgreSQL delivers a notification only when the transaction that sent
it commits, so a subscriber never hears of a rolled-back write. Payloads carry keys, not rows
(NOTIFY's limit is 8,000 bytes): a listener fetches what it needs, and long id lists are split.

Two channels, one LISTEN connection per process (app.realtime.hub):
- `tenantry_changes`: `{"t": tenant, "k": kind, "o": op, "ids": [...], "x": xid}`. Measurements
  are written by COPY and have no ids at hand: they are announced by device, time range and the
  writing transaction's id (`x`), which the listener matches against the rows' `xmin`.
- `tenantry_access`: `tenant:<id>` or `user:<uuid>` when who may do what there changed
  (memberships, tokens, logins, tenant status — mostly sent by triggers on the management
  tables, see migration m0016); subscriptions of that tenant or user are checked again at once.

PostgreSQL lets any role NOTIFY any channel, so a change payload carries an HMAC (`"h"`, keyed by
the server's secret) over everything before it: the hub drops a payload that does not verify, and
no database role can forge an event for subscribers. (An access notification only makes the hub
ask the gate again, which a forged one cannot change.)
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import text

from app.db.notify import ACCESS, CHANGES
from app.db.transaction import Executor

__all__ = ["ACCESS", "CHANGES", "access_changed", "announce", "payloads", "use_key", "verified"]

_MAC = ',"h":"'
_key: list[bytes] = []  # set once per process by Platform.create (use_key)


def use_key(secret: str) -> None:
    """The key change payloads are signed and checked with, derived from the server's secret."""
    _key[:] = [hashlib.sha256(b"tenantry-notify:" + secret.encode()).digest()]


def _signed(body: str) -> str:
    """`body` (a JSON object without its closing brace) with its MAC, then the opening of `"x"`."""
    mac = hmac.new(_key[0], body.encode(), hashlib.sha256).hexdigest() if _key else ""
    return f'{body}{_MAC}{mac}","x":'


def verified(payload: str) -> bool:
    """Whether a change payload was signed with this server's key."""
    at = payload.rfind(_MAC)
    if not _key or at < 0:
        return False
    mac = payload[at + len(_MAC):at + len(_MAC) + 64]
    return hmac.compare_digest(mac, hmac.new(_key[0], payload[:at].encode(), hashlib.sha256).hexdigest())


IDS_PER_PAYLOAD = 500  # 500 ids of 15 digits stay well under NOTIFY's 8,000 bytes
ROWS_BYTES = 7000  # rows travel in the payload up to this size (no fetch); beyond it, their ids

# The writing transaction's id as the rows' xmin shows it (32 bits), appended by the statement.
_NOTIFY = text(
    "SELECT pg_notify(:channel, p || (pg_current_xact_id()::text::bigint % 4294967296)::text || '}') "
    "FROM unnest(CAST(:payloads AS text[])) AS p")
_NOTIFY_ACCESS = text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p")


def payloads(tenant_id: str, kind: str, op: str, ids: Sequence[int] = (), rows: Sequence[object] = (),
             **extra: Any) -> list[str]:
    """The payloads announcing one change, each missing only its closing `"x": xid}` part. The
    changed rows themselves (dataclass records) are sent when they fit, so listeners need not
    read them back; otherwise their ids."""
    if rows:
        body = orjson.dumps({"t": tenant_id, "k": kind, "o": op, "rows": rows, **extra}).decode()
        if len(body) <= ROWS_BYTES:
            return [_signed(body[:-1])]
        ids = [r.id for r in rows]  # type: ignore[attr-defined]
    chunks = [ids[i:i + IDS_PER_PAYLOAD] for i in range(0, len(ids), IDS_PER_PAYLOAD)] or [ids]
    out = []
    for chunk in chunks:
        body = orjson.dumps({"t": tenant_id, "k": kind, "o": op, "ids": list(chunk), **extra}).decode()
        out.append(_signed(body[:-1]))
    return out


async def announce(db: Executor, tenant_id: str, kind: str, op: str, ids: Sequence[int] = (),
                   rows: Sequence[object] = (), **extra: Any) -> None:
    """Announce a change to subscribers once `db`'s transaction commits. A request's transaction
    (app.access.acting.PlaneView) sends all of a request's announcements in one statement just
    before COMMIT; any other transaction sends them now."""
    batch = payloads(tenant_id, kind, op, ids, rows, **extra)
    deferred = getattr(db, "announce", None)
    if deferred is not None:
        deferred(batch)
        return
    await db.execute(_NOTIFY, {"channel": CHANGES, "payloads": batch})


async def access_changed(db: Executor, *, tenant_id: str | None = None, user_id: object = None) -> None:
    """Who may do what in `tenant_id` (or as `user_id`) changed in a way no trigger sees (tenant-schema
    rows: custom roles, device tokens): live subscriptions there are checked again on commit."""
    batch = [f"tenant:{tenant_id}"] if tenant_id else []
    if user_id is not None:
        batch.append(f"user:{user_id}")
    await db.execute(_NOTIFY_ACCESS, {"channel": ACCESS, "payloads": batch})
