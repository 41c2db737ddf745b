"""Availability of devices (Cumulocity's required interval): a device given one that sends nothing for
longer becomes UNAVAILABLE, with an alarm, and AVAILABLE again — the alarm cleared — when it reports.

What counts as hearing from a device: data it sends itself (measurements, events, alarms, operation
status), over GraphQL with its device token or over MQTT. `last_seen_at` is written at most every
SEEN_EVERY seconds per device (an ingest of thousands of batches a second writes the row rarely),
so intervals are at least MIN_INTERVAL. The monitor (`periodic`) looks every few seconds into the
tenants that have monitored devices (`monitored_tenants`) only.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.db.transaction import Executor
from app.errors import InvalidInput
from app.models.management import monitored_tenants

MIN_INTERVAL = 10  # seconds
MAX_INTERVAL = 366 * 24 * 3600
SEEN_EVERY = 2  # seconds between writes of a reporting device's last_seen_at
ALARM_TYPE = "c8y_UnavailabilityAlarm"
STATES = ("AVAILABLE", "UNAVAILABLE", "UNKNOWN")


def check_interval(seconds: int | None) -> int | None:
    """A required interval as stored: None (not monitored) for 0, else MIN..MAX seconds."""
    if seconds is None or seconds == 0:
        return None
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:
        raise InvalidInput(f"requiredInterval is {MIN_INTERVAL}-{MAX_INTERVAL} seconds, or 0 to stop monitoring",
                           field="requiredInterval", min=MIN_INTERVAL, max=MAX_INTERVAL)
    return seconds


async def monitor(management: Executor, tenant_id: str) -> None:
    """The tenant has a monitored device now (one row per tenant, kept)."""
    await management.execute(pg_insert(monitored_tenants).values(tenant_id=tenant_id)
                             .on_conflict_do_nothing(index_elements=[monitored_tenants.c.tenant_id]))


_SEEN = text(f"""
    WITH before AS (SELECT id, availability FROM devices WHERE id = :device AND required_interval IS NOT NULL
                    AND (availability <> 'AVAILABLE' OR last_seen_at IS NULL
                         OR last_seen_at < now() - interval '{SEEN_EVERY} seconds')
                    FOR NO KEY UPDATE)
    UPDATE devices SET last_seen_at = now(), availability = 'AVAILABLE'
      FROM before WHERE devices.id = before.id
    RETURNING before.availability""")


async def seen(db: Executor, device_id: int) -> bool:
    """The device reported; whether it was UNAVAILABLE until now (its alarm is then cleared by the
    caller). One statement that matches nothing for an unmonitored device."""
    row = (await db.execute(_SEEN, {"device": device_id})).first()
    return row is not None and row[0] == "UNAVAILABLE"


@dataclass(frozen=True)
class Overdue:
    device_id: int
    interval: int


_OVERDUE = text("""
    UPDATE devices SET availability = 'UNAVAILABLE', updated_at = now()
     WHERE required_interval IS NOT NULL AND availability <> 'UNAVAILABLE'
       AND coalesce(last_seen_at, created_at) < now() - make_interval(secs => required_interval)
    RETURNING id, required_interval""")


async def overdue(db: Executor) -> list[Overdue]:
    """Devices silent for longer than their interval, now marked UNAVAILABLE."""
    return [Overdue(r.id, r.required_interval) for r in (await db.execute(_OVERDUE)).all()]


async def monitored(management: Executor) -> list[str]:
    rows = await management.execute(select(monitored_tenants.c.tenant_id).order_by(monitored_tenants.c.tenant_id))
    return [r.tenant_id for r in rows]
