"""Channel names and the NOTIFY statement shared by the request transaction and the services
(app.services.changes explains the protocol)."""

from __future__ import annotations

from collections.abc import Iterable

CHANGES = "tenantry_changes"
ACCESS = "tenantry_access"


def notify_sql(batch: Iterable[str]) -> str:
    """One simple-protocol statement sending `batch` (payloads from `payloads()`, which contain
    only JSON of ids, names and numbers: no quote can appear, so quoting is the SQL standard's)."""
    literals = ",".join("'" + p.replace("'", "''") + "'" for p in batch)
    return (f"SELECT pg_notify('{CHANGES}', p || (pg_current_xact_id()::text::bigint % 4294967296)::text || '}}') "
            f"FROM unnest(ARRAY[{literals}]::text[]) AS p")
