"""Channel names and the NOTIFY statement shared by the request transaction and the services
(app.runtime.announcements explains the protocol)."""

from __future__ import annotations

from collections.abc import Iterable

CHANGES = "tenantry_changes"
ACCESS = "tenantry_access"


def notify_sql(batch: Iterable[str]) -> str:
    """One simple-protocol statement sending `batch` (JSON text from app.runtime.announcements). Quotes
    are doubled; a backslash in JSON only ever precedes `"`, `\\`, `/` or a letter, never a quote,
    so the literal is read the same whatever standard_conforming_strings says."""
    literals = ",".join("'" + p.replace("'", "''") + "'" for p in batch)
    return (f"SELECT pg_notify('{CHANGES}', p || (pg_current_xact_id()::text::bigint % 4294967296)::text || '}}') "
            f"FROM unnest(ARRAY[{literals}]::text[]) AS p")
