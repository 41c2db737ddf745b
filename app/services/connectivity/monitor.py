"""The availability monitor: devices silent past their required interval become UNAVAILABLE, with a
MAJOR `c8y_UnavailabilityAlarm`, and subscribers hear both (app.services.inventory.availability
says what counts as hearing from a device; the device's next report makes it AVAILABLE again)."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app import ids
from app.access.acting import management_transaction, tenant_transaction
from app.access.principal import Actor
from app.access.scope import Scope
from app.db.transaction import settled
from app.models.management import monitored_tenants, tenants
from app.runtime import announcements
from app.runtime.periodic import every, exclusively
from app.services.audit import data_audit
from app.services.data import alarms
from app.services.inventory import availability, devices

SYSTEM = Actor(type="system", id="availability")
logger = logging.getLogger("tenantry.availability")


async def sweep(engine: AsyncEngine) -> int:
    """Mark every overdue device of every monitored, active tenant; how many."""
    tx = management_transaction(engine)
    try:
        found = await tx.execute(select(monitored_tenants.c.tenant_id).join(
            tenants, tenants.c.id == monitored_tenants.c.tenant_id).where(tenants.c.status == "ACTIVE"))
        monitored = [r.tenant_id for r in found]
    finally:
        await tx.finish(commit=False)
    marked = 0
    for tenant_id in monitored:
        try:
            marked += await mark_overdue(engine, tenant_id)
        except Exception:  # one tenant's trouble (a locked table) never stops the others'
            logger.exception("availability: checking tenant %s failed", tenant_id)
    return marked


async def mark_overdue(engine: AsyncEngine, tenant_id: str) -> int:
    async with settled(tenant_transaction(engine, tenant_id)) as tx:
        late = await availability.overdue(tx)
        for device in late:
            record = await devices.device_by_id(tx, Scope(), device.device_id)
            alarm = await alarms.raise_alarm(
                tx, Scope(), device_id=ids.encode("Device", tenant_id, device.device_id), type=availability.ALARM_TYPE,
                severity="MAJOR", text_=f"No data from the device for over {device.interval} s (its required interval)")
            if record is not None:
                await announcements.announce(tx, tenant_id, "device", "UPDATED", rows=[record])
            await announcements.announce(tx, tenant_id, "alarm", "RAISED" if alarm.count == 1 else "COUNT_INCREASED",
                                         rows=[alarm])
            await data_audit.record(tx, actor=SYSTEM, action="device.availability", target=str(device.device_id),
                                    changes=[{"attribute": "availability", "previous": None, "new": "UNAVAILABLE"}])
    return len(late)


async def periodic(engine: AsyncEngine, interval_seconds: float) -> None:
    """The server's monitor loop; one worker process at a time runs it (an advisory lock)."""
    async def run() -> None:
        marked = await sweep(engine)
        if marked:
            logger.info("availability: %d device(s) became unavailable", marked)

    await every(interval_seconds, lambda: exclusively(engine, "tenantry.availability", run), log=logger,
                what="availability check", first_after=interval_seconds)
