"""Operations for devices over MQTT, from the change log: where the bridge stands in each tenant's
log (`mqtt_downlinks`, migration m0020) and what it publishes to a device's `down/operations`."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app import ids
from app.db.transaction import Executor
from app.models.management import mqtt_downlinks
from app.services.changes import log

BATCH = 200  # operations published per lease of a tenant


async def register(management: Executor, tenant_db: Executor, tenant_id: str) -> None:
    """A tenant whose device logged in: operations committed from now on are pushed (earlier ones
    are listed by the `operations(status: PENDING)` query, which a device asks once it connects)."""
    head = (await log.head(tenant_db)).last
    await management.execute(pg_insert(mqtt_downlinks).values(tenant_id=tenant_id, position=head)
                             .on_conflict_do_nothing(index_elements=[mqtt_downlinks.c.tenant_id]))


async def tenants(management: Executor) -> set[str]:
    return set((await management.execute(select(mqtt_downlinks.c.tenant_id))).scalars())


async def lease(management: Executor, tenant_id: str) -> int | None:
    """The tenant's position, its row locked for this transaction; None if another bridge has it."""
    return (await management.execute(select(mqtt_downlinks.c.position).where(mqtt_downlinks.c.tenant_id == tenant_id)
                                     .with_for_update(skip_locked=True))).scalar_one_or_none()


async def pending(tenant_db: Executor, tenant_id: str, position: int) -> tuple[list[log.Change], int]:
    """The operation changes past `position`, and the position read up to (the log's head when
    fewer than a batch were found: other kinds of change are passed over once)."""
    last = (await log.head(tenant_db)).last
    if last <= position:
        return [], position
    found = await log.read(tenant_db, tenant_id, after=position, limit=BATCH, kinds=["operation"], upto=last)
    return found, (found[-1].position if len(found) == BATCH else last)


async def advance(management: Executor, tenant_id: str, position: int) -> None:
    await management.execute(update(mqtt_downlinks).where(mqtt_downlinks.c.tenant_id == tenant_id)
                             .values(position=position, updated_at=func.now()))


def message(change: log.Change) -> bytes | None:
    """What a device receives for a change of its operations: new ones only (a status it reported
    itself, or one set over GraphQL, is not echoed back)."""
    if change.op != "CREATED" or change.device_id is None:
        return None
    row: dict[str, Any] = change.body
    return orjson.dumps({"id": ids.encode("Operation", change.tenant_id, int(row["id"])), "status": row["status"],
                         "description": row["description"], "payload": row.get("payload") or {},
                         "createdAt": row.get("created_at"), "position": change.key})
