"""Devices inside the routed tenant. Every statement runs in the tenant's own transaction
(search_path and role switched), so these functions never name a schema."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError

from app.db.transaction import Executor
from app.errors import Conflict, InvalidInput
from app.models.tenant import devices, external_ids
from app.services.pagination import Page, build_page, contains_pattern, decode_int_cursor, page_size

DEFAULT_EXTERNAL_ID_TYPE = "serial"
DEVICE_COLUMNS = (devices.c.id, devices.c.name, devices.c.type, devices.c.owner, devices.c.fragments,
                  devices.c.created_at, devices.c.updated_at)


# Built once: constructing a statement per request costs more than its round trip's overhead.
_BY_ID = select(*DEVICE_COLUMNS).where(devices.c.id == bindparam("id"))


@dataclass(frozen=True)
class DeviceRecord:
    id: int
    name: str
    type: str | None
    owner: str | None
    fragments: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class DeviceFilter:
    type: str | None = None
    name_contains: str | None = None


def _filtered(stmt: Select[Any], filter: DeviceFilter | None) -> Select[Any]:
    if filter is None:
        return stmt
    if filter.type is not None:
        stmt = stmt.where(devices.c.type == filter.type)
    if filter.name_contains:
        stmt = stmt.where(devices.c.name.ilike(contains_pattern(filter.name_contains)))
    return stmt


def _record(row: Any) -> DeviceRecord:
    return DeviceRecord(*row)


def parse_device_id(value: str) -> int | None:
    """Device ids are positive integers; anything else can name no device."""
    return int(value) if value.isdigit() and len(value) < 19 else None


async def create_device(
    db: Executor, *, name: str, type: str | None, owner: str | None,
    external_id: str | None, fragments: object,
) -> DeviceRecord:
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidInput("name must be 1-200 characters", field="name")
    if type is not None and len(type) > 100:
        raise InvalidInput("type must be at most 100 characters", field="type")
    if fragments is None:
        fragments = {}
    if not isinstance(fragments, dict):
        raise InvalidInput("fragments must be a JSON object", field="fragments")
    row = (await db.execute(
        insert(devices).values(name=name, type=type, owner=owner, fragments=fragments).returning(*DEVICE_COLUMNS)
    )).one()
    device = _record(row)
    if external_id is not None:
        if not external_id.strip() or len(external_id) > 200:
            raise InvalidInput("externalId must be 1-200 characters", field="externalId")
        try:
            await db.execute(insert(external_ids).values(
                type=DEFAULT_EXTERNAL_ID_TYPE, value=external_id, device_id=device.id))
        except IntegrityError as exc:
            raise Conflict(f"external id {external_id!r} is already in use", field="externalId") from exc
    return device


async def device_by_id(db: Executor, device_id: str) -> DeviceRecord | None:
    key = parse_device_id(device_id)
    if key is None:
        return None
    row = (await db.execute(_BY_ID, {"id": key})).first()
    return _record(row) if row is not None else None


async def list_devices(
    db: Executor, *, first: int | None, after: str | None, cap: int, filter: DeviceFilter | None = None,
) -> Page[DeviceRecord]:
    size = page_size(first, cap)
    stmt = _filtered(select(*DEVICE_COLUMNS), filter)
    cursor = decode_int_cursor(after)
    if cursor is not None:
        stmt = stmt.where(devices.c.id > cursor)
    rows = (await db.execute(stmt.order_by(devices.c.id).limit(size + 1))).all()
    return build_page([_record(r) for r in rows], size, lambda d: d.id)


async def count_devices(db: Executor, filter: DeviceFilter | None = None) -> int:
    stmt = _filtered(select(func.count()).select_from(devices), filter)
    return int((await db.execute(stmt)).scalar_one())
