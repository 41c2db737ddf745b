"""Changes, appended to the tenant's durable change log inside the writing transaction.

Every change subscriptions, consumers, webhooks and standing shares hear of is one entry of its
tenant's log (`changes` in the tenant schema, migration t0007): a gap-free position in commit
order, the kind (device, alarm, event, operation, measurement, copyjob, tenant, share), the
operation, the device it belongs to (for rights at delivery) and a body — the changed row as the
writer saw it, or its id alone (a deleted device), or for a measurement batch the device, time
range, count and writing transaction (rows are read back by `xmin`, never logged one by one).

A request's transaction (app.access.acting) appends all of its entries just before COMMIT, in the
same round trip, so the head's row lock (which orders writers) is held for microseconds; any other
transaction appends at once. Then one NOTIFY per tenant on `tenantry_changes` wakes the readers
(app.realtime.hub), which read the log from their own position: a notification lost while a
listener reconnects loses nothing, and a forged one can only make a reader look. A request's are
sent after its COMMIT by the process's waker, many in one NOTIFY (app.db.wakes says why); any
other transaction's with its COMMIT.

`tenantry_access` carries `tenant:<id>` or `user:<uuid>` when who may do what there changed
(memberships, tokens, logins, tenant status — mostly sent by triggers on the management tables,
migration m0016): live subscriptions of that tenant or user are checked again at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import text

from app.access.acting import append_as_tenant
from app.db.notify import ACCESS, CHANGES, wake_sql
from app.db.transaction import Executor

__all__ = ["ACCESS", "CHANGES", "access_changed", "announce", "entries"]


def entries(kind: str, op: str, ids: Sequence[int] = (), rows: Sequence[object] = (), *,
            device_id: int | None = None, **body: Any) -> list[str]:
    """The log entries of one change: one per changed row (so each event has a position of its own),
    one per id when only ids are known, or one entry of `body` (a measurement batch)."""
    def entry(b: object, d: int | None) -> str:
        return orjson.dumps({"k": kind, "o": op, "d": d, "b": b}).decode()

    if rows:
        return [entry(r, device_id if device_id is not None else _device_of(kind, r)) for r in rows]
    if ids:
        return [entry({"id": i, **body}, i if kind == "device" else device_id) for i in ids]
    return [entry(body, device_id)]


def _device_of(kind: str, row: object) -> int | None:
    key = "id" if kind == "device" else "device_id"
    return row.get(key) if isinstance(row, dict) else getattr(row, key, None)


async def announce(db: Executor, tenant_id: str, kind: str, op: str, ids: Sequence[int] = (),
                   rows: Sequence[object] = (), *, device_id: int | None = None, **body: Any) -> None:
    """Append a change to `tenant_id`'s log, committed with `db`'s transaction. A request's
    transaction (app.access.acting.PlaneView) appends all of a request's entries just before COMMIT;
    any other transaction appends now (and holds the tenant's log head until it ends)."""
    batch = entries(kind, op, ids, rows, device_id=device_id, **body)
    deferred = getattr(db, "announce", None)
    if deferred is not None:
        deferred(tenant_id, batch)
        return
    await append_as_tenant(db, tenant_id, batch)
    await db.execute(text(wake_sql([tenant_id])))


async def access_changed(db: Executor, *, tenant_id: str | None = None, user_id: object = None) -> None:
    """Who may do what in `tenant_id` (or as `user_id`) changed in a way no trigger sees (tenant-schema
    rows: custom roles, device tokens): live subscriptions there are checked again on commit."""
    batch = [f"tenant:{tenant_id}"] if tenant_id else []
    if user_id is not None:
        batch.append(f"user:{user_id}")
    await db.execute(_NOTIFY_ACCESS, {"channel": ACCESS, "payloads": batch})


_NOTIFY_ACCESS = text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p")
