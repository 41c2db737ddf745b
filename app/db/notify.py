"""Channel names and the SQL that appends to a tenant's change log and wakes its readers, shared by
the request transaction and the services (app.runtime.announcements explains the protocol), and
the audit rows a request writes with its COMMIT."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from app.db.naming import tenant_schema
from app.db.prepared import shaped

CHANGES = "tenantry_changes"
ACCESS = "tenantry_access"


def literal(text: str) -> str:
    """A JSON or id text as a SQL literal. Quotes are doubled; a backslash in JSON only ever precedes
    `"`, `\\`, `/` or a letter, never a quote, so the literal is read the same whatever
    standard_conforming_strings says."""
    return "'" + text.replace("'", "''") + "'"


# The writing transaction's id as the rows' xmin shows it (32 bits): measurement batches are read
# back by it (app.realtime.deliveries). On Citus the ingest adds the worker's own (`w`).
_BODY = ("CASE WHEN e.v->>'k' = 'measurement' "
         "THEN (e.v->'b') || jsonb_build_object('x', mod(pg_current_xact_id()::text::bigint, 4294967296)) "
         "ELSE e.v->'b' END")


def append_sql(tenant_id: str, entries: Sequence[str], *, bound: bool = False) -> list[str]:
    """The three statements appending `entries` (JSON objects `{"k", "o", "d", "b"}`) to the tenant's
    log: `bound`, with the entries as the parameter `:entries` (a JSON array), the tables named with
    the tenant's schema; else as a literal (one simple-protocol round trip before COMMIT), `Shaped`
    for app.db.prepared and the tables named through search_path — one shape for every tenant, so
    the caller must have switched to the tenant (app.access.acting.tenant_switch) just before.

    The UPDATE of the one-row head takes its row lock until the transaction ends: a concurrent
    writer of the same tenant waits here, and draws its positions only once these are committed
    and visible. That is what makes positions gap-free in commit order (migration t0007); callers
    run this just before COMMIT, so the lock is held for as short a time as possible.

    Before it, each writer queues on the tenant's own advisory lock (`_QUEUE`), held to COMMIT too.
    The row lock alone still decides the order; the queue only changes how writers wait. Waiting on
    a row's tuple lock, thirty-two writers of one tenant each woke, re-read the row and waited again
    on its next updater: 0.58 to 0.66 ms of PostgreSQL CPU a write against 0.32 to 0.34 ms queued on the
    lock (`python -m bench.write_cost 20000 --connections 32`). Held until COMMIT returns, both
    locks would also be held through the commit's WAL flush; requests that contend COMMIT without
    waiting for it, and are made durable by their process's next flush (app.db.wakes)."""
    n = len(entries)
    if bound:
        schema = tenant_schema(tenant_id)
        return [_QUEUE.format(f"{schema}."),
                f"UPDATE {schema}.change_head SET last = last + {n} WHERE id = 1",
                _APPEND.format(f"{schema}.", n, f"{schema}.", "CAST(:entries AS jsonb)")]
    array = literal("[" + ",".join(entries) + "]")
    count = (str(n), "bigint")
    return [_QUEUE_HERE,
            shaped("UPDATE change_head SET last = last + {} WHERE id = 1", [count]),
            shaped(_APPEND.format("", "{}", "", "{}::jsonb"), [count, (array, "unknown")])]


# One advisory lock per tenant, in the two-key space: the first key is this queue's (7106407 is
# "log" in ASCII), the second the oid of the tenant's own head table. Resolved when it runs, so one
# prepared statement serves every tenant (through search_path); an oid fits an integer's 32 bits.
# The app's other advisory locks take one bigint key, a space of their own: none can collide.
CHANGE_LOG_QUEUE = 7106407
_QUEUE = f"SELECT pg_advisory_xact_lock({CHANGE_LOG_QUEUE}, to_regclass('{{}}change_head')::oid::integer)"
_QUEUE_HERE = shaped(_QUEUE.format(""), [])  # the same for every tenant and write: made once


_APPEND = ("INSERT INTO {}changes (position, logged_at, kind, op, device_id, body) "
           "SELECT h.last - {} + e.o, clock_timestamp(), e.v->>'k', e.v->>'o', (e.v->>'d')::bigint, "
           + _BODY.replace("{", "{{").replace("}", "}}") +
           " FROM {}change_head h, jsonb_array_elements({}) WITH ORDINALITY AS e(v, o) WHERE h.id = 1")


def wake_sql(tenant_ids: Iterable[str]) -> str:
    """NOTIFY each tenant's log readers (sent with a COMMIT, or after it by app.db.wakes; the log, not the
    payload, is the news)."""
    literals = ",".join(literal(t) for t in sorted(set(tenant_ids)))
    return f"SELECT pg_notify('{CHANGES}', t) FROM unnest(ARRAY[{literals}]::text[]) AS t"


def audit_sql(rows: Sequence[str]) -> list[str]:
    """One INSERT of a request's data-plane audit rows (JSON objects with the audit_log columns
    actor_type, actor_id, action, target, changes, request_id), sent with COMMIT instead of a round
    trip each: every mutation writes one. `Shaped`, its table named through search_path, as
    `append_sql`'s literal form: the caller has switched to the rows' tenant just before."""
    if not rows:
        return []
    array = literal("[" + ",".join(rows) + "]")
    return [shaped("INSERT INTO audit_log (actor_type, actor_id, action, target, changes, request_id) "
                   "SELECT e.v->>'actor_type', e.v->>'actor_id', e.v->>'action', e.v->>'target', e.v->'changes', "
                   "e.v->>'request_id' FROM jsonb_array_elements({}::jsonb) WITH ORDINALITY AS e(v, o) "
                   "ORDER BY e.o", [(array, "unknown")])]
