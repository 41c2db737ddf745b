"""Shared rules for time-stamped data: ranges, keyset cursors over (time, id), text limits."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, Table, tuple_

from app.db.transaction import Executor
from app.errors import InvalidInput
from app.inputs import InputRejected, check_datetime, check_number, parse_id
from app.services.pagination import Page
from app.services.rows import to_record

R = TypeVar("R")


def check_time(value: datetime, field: str) -> datetime:
    if value.tzinfo is None:
        raise InvalidInput(f"{field} needs a time zone (ISO 8601, e.g. 2026-01-01T00:00:00Z)", field=field)
    return value


def check_range(start: datetime | None, end: datetime | None) -> None:
    if start is not None:
        check_time(start, "from")
    if end is not None:
        check_time(end, "to")
    if start is not None and end is not None and start >= end:
        raise InvalidInput("'from' must be before 'to'", field="from")


def check_text(value: str, field: str, max_len: int = 100) -> str:
    if not value.strip() or len(value) > max_len:
        raise InvalidInput(f"{field} must be 1-{max_len} characters", field=field)
    return value


def check_value(value: float) -> float:
    try:
        return check_number(value)
    except InputRejected as exc:
        raise InvalidInput(f"value: {exc}", field="value") from None


def encode_time_cursor(time: datetime, row_id: int) -> str:
    return base64.urlsafe_b64encode(f"t:{time.isoformat()}|{row_id}".encode()).decode()


def decode_time_cursor(cursor: str | None) -> tuple[datetime, int] | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor.encode()).decode()
        if not raw.startswith("t:"):
            raise ValueError(raw)
        stamp, _, row_id = raw[2:].rpartition("|")
        key = parse_id(row_id)
        time = check_datetime(datetime.fromisoformat(stamp))
        if key is None or time.tzinfo is None:
            raise ValueError(raw)
        return time, key
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:  # InputRejected is a ValueError
        raise InvalidInput("malformed cursor", field="after") from exc


def time_page_statement(stmt: Select[Any], table: Table, *, start: datetime | None, end: datetime | None,
                        after: str | None, size: int) -> Select[Any]:
    """One keyset page of time-stamped rows: from inclusive, to exclusive, ordered by (time, id),
    with one row more than the page (it only tells that there is a next page)."""
    time, row_id = table.c.time, table.c.id
    if start is not None:
        stmt = stmt.where(time >= start)
    if end is not None:
        stmt = stmt.where(time < end)
    cursor = decode_time_cursor(after)
    if cursor is not None:
        stmt = stmt.where(tuple_(time, row_id) > tuple_(*cursor))
    return stmt.order_by(time, row_id).limit(size + 1)


async def time_page(db: Executor, stmt: Select[Any], table: Table, record: type[R], *, start: datetime | None,
                    end: datetime | None, after: str | None, size: int) -> Page[R]:
    rows = (await db.execute(time_page_statement(stmt, table, start=start, end=end, after=after, size=size))).all()
    return time_rows_page(rows, record, size)


def time_rows_page(rows: Any, record: type[R], size: int) -> Page[R]:
    items = [to_record(record, r) for r in rows[:size]]
    cursors = [encode_time_cursor(getattr(i, "time"), getattr(i, "id")) for i in items]  # noqa: B009
    return Page(items=items, cursors=cursors, has_next_page=len(rows) > size)
