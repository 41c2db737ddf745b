"""Events: something that happened on a device, at a time, with free-form attributes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, insert, select, update

from app.access.scope import Scope
from app.db.transaction import Executor
from app.errors import Forbidden, InvalidInput, NotFound
from app.models.tenant import events
from app.services.data.timeseries import check_range, check_text, check_time, time_page_statement, time_rows_page
from app.services.inventory.devices import require_devices, require_id
from app.services.pagination import Page, page_size
from app.services.rows import to_record

COLUMNS = (events.c.id, events.c.device_id, events.c.time, events.c.type, events.c.text, events.c.attributes,
           events.c.created_at, events.c.updated_at)


@dataclass(frozen=True)
class EventRecord:
    id: int
    device_id: int
    time: datetime
    type: str
    text: str
    attributes: dict[str, Any]
    created_at: datetime
    updated_at: datetime


def _attributes(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("attributes must be a JSON object", field="attributes")
    return value


async def create_event(db: Executor, scope: Scope, *, device_id: str, time: datetime, type: str, text: str,
                       attributes: object) -> EventRecord:
    key = require_id(device_id, "device")
    if scope.device_id is not None and key != scope.device_id:
        raise Forbidden("a device may only send its own events")
    values = {"device_id": key, "time": check_time(time, "time"), "type": check_text(type, "type"),
              "text": check_text(text, "text", 2000), "attributes": _attributes(attributes)}
    await require_devices(db, scope, [key])
    row = (await db.execute(insert(events).values(**values).returning(*COLUMNS))).one()
    return to_record(EventRecord, row)


async def update_event(db: Executor, scope: Scope, event_id: str, *, text: str | None,
                       attributes: object) -> EventRecord:
    key = require_id(event_id, "event")
    values: dict[str, Any] = {"updated_at": func.now()}
    if text is not None:
        values["text"] = check_text(text, "text", 2000)
    if attributes is not None:
        values["attributes"] = _attributes(attributes)
    row = (await db.execute(update(events).where(events.c.id == key, scope.devices(events.c.device_id))
                            .values(**values).returning(*COLUMNS))).first()
    if row is None:
        raise NotFound(f"event {event_id} not found")
    return to_record(EventRecord, row)


async def list_events(
    db: Executor, scope: Scope, *, device_id: str | None, type: str | None, start: datetime | None,
    end: datetime | None, first: int | None, after: str | None, cap: int,
) -> Page[EventRecord]:
    stmt, size = event_page(scope, device_id=device_id, type=type, start=start, end=end, first=first, after=after,
                            cap=cap)
    return time_rows_page((await db.execute(stmt)).all(), EventRecord, size)


def event_page(scope: Scope, *, device_id: str | None, type: str | None, start: datetime | None,
               end: datetime | None, first: int | None, after: str | None, cap: int) -> tuple[Select[Any], int]:
    """The checked page statement (size + 1 rows) and the page size: listed here, or compiled
    into a read's JSON (app.graphql.engine.compiled)."""
    check_range(start, end)
    size = page_size(first, cap)
    stmt = select(*COLUMNS).where(scope.devices(events.c.device_id))
    if device_id is not None:
        stmt = stmt.where(events.c.device_id == require_id(device_id, "device"))
    if type is not None:
        stmt = stmt.where(events.c.type == type)
    return time_page_statement(stmt, events, start=start, end=end, after=after, size=size), size
