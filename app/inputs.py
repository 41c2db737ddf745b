"""The input boundary: what any value from outside must satisfy before it reaches a service.

Checked once, where GraphQL coerces values (`app.graphql.engine.boundary` wires these into the String,
ID, Float, JSON and DateTime scalars) and by the services that parse ids and cursors. Bad input
is INVALID_INPUT naming the field, never INTERNAL; what is accepted stays readable and
aggregatable forever. The documented limits:

- no NUL (U+0000) in any string, JSON key or JSON string (PostgreSQL text and jsonb cannot hold it);
- ids: ASCII digits, 1 to 2^63 - 1 (bigint);
- times: with a zone, years 1-9999 after conversion to UTC;
- numbers: finite, |x| ≤ 1e100, so sums and averages over any number of rows cannot overflow;
- JSON: nested at most 32 levels deep and at most 256 KiB when serialised;
- cursors: only what this server issued (validated, never trusted).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

import orjson

MAX_ID = 2**63 - 1
MAX_MAGNITUDE = 1e100
MAX_JSON_DEPTH = 32
MAX_JSON_BYTES = 256 * 1024
MIN_YEAR, MAX_YEAR = 1, 9999
_DIGITS = re.compile(r"[0-9]{1,19}")


class InputRejected(ValueError):
    """A value outside the boundary; callers turn it into INVALID_INPUT (or a GraphQL error)."""


def parse_id(value: object) -> int | None:
    """A positive bigint id written as ASCII digits (or an int), else None. `'⑧'.isdigit()` is
    true and `int('⑧')` fails, so `isdigit` is never enough."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 < value <= MAX_ID else None
    if not isinstance(value, str) or not _DIGITS.fullmatch(value):
        return None
    number = int(value)
    return number if 0 < number <= MAX_ID else None


def check_string(value: str) -> str:
    if "\x00" in value:
        raise InputRejected("text cannot contain NUL (\\u0000)")
    return value


def check_number(value: float) -> float:
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise InputRejected(f"numbers must be finite and at most {MAX_MAGNITUDE:g} in magnitude")
    return value


def check_datetime(value: datetime) -> datetime:
    """Zone-aware times must stay within years 1-9999 in UTC (where they are stored and read)."""
    if value.tzinfo is not None and not MIN_YEAR < value.year < MAX_YEAR:  # a zone moves a time by < 1 day
        try:
            utc = value.astimezone(UTC)
        except OverflowError:
            raise InputRejected(f"times must fall within years {MIN_YEAR}-{MAX_YEAR} in UTC") from None
        if not MIN_YEAR <= utc.year <= MAX_YEAR:
            raise InputRejected(f"times must fall within years {MIN_YEAR}-{MAX_YEAR} in UTC")
    return value


def check_json(value: Any) -> Any:
    """JSON from outside: bounded depth and size, no NUL in keys or strings, finite numbers."""
    _walk(value, 0)
    try:
        size = len(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InputRejected("not a JSON value") from exc
    if size > MAX_JSON_BYTES:
        raise InputRejected(f"JSON values are limited to {MAX_JSON_BYTES} bytes")
    return value


def _walk(value: Any, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise InputRejected(f"JSON is nested more than {MAX_JSON_DEPTH} levels deep")
    if isinstance(value, str):
        check_string(value)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not -MAX_ID - 1 <= value <= MAX_ID:
            raise InputRejected("JSON integers must fit in 64 bits")
    elif isinstance(value, float):
        check_number(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InputRejected("JSON object keys must be strings")
            check_string(key)
            _walk(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _walk(item, depth + 1)
    else:
        raise InputRejected("not a JSON value")
