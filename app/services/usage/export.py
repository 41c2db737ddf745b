"""Usage export rows as CSV or JSON lines, shared by GET /export/usage.csv and `tenantry usage export`."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access.principal import Routed
from app.db.transaction import transaction
from app.errors import InvalidInput
from app.models.management import USAGE_COUNTERS, USAGE_SNAPSHOTS, tenants
from app.services.usage.statistics import CREATE_UPDATE, period_rows, subtree_filter


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


VALUE_COLUMNS = (*USAGE_COUNTERS, *USAGE_SNAPSHOTS, "peak_device_count", "peak_storage_size")
HEADER = ["tenantId", "tenantDomain", "tenantCompany", "parentTenantId", "status", "creationTime", "period",
          *(camel(c) for c in USAGE_COUNTERS), "totalResourceCreateAndUpdateCount",
          *(camel(c) for c in USAGE_SNAPSHOTS), "peakDeviceCount", "peakStorageSize"]


@dataclass(frozen=True)
class ExportOptions:
    start: date
    end: date
    granularity: str = "day"
    fmt: str = "csv"
    separator: str = ","
    decimal: str = "."

    def check(self) -> ExportOptions:
        if self.fmt not in ("csv", "json"):
            raise InvalidInput("format must be csv or json", field="format")
        if len(self.separator) != 1 or self.separator in "\"\r\n" or self.separator == self.decimal:
            raise InvalidInput("separator must be one character other than a quote, newline or the decimal mark",
                               field="separator")
        if self.decimal not in (".", ","):
            raise InvalidInput("decimal must be '.' or ','", field="decimal")
        return self


async def custom_property_keys(engine: AsyncEngine, routed: Routed) -> list[str]:
    async with transaction(engine) as tx:
        keys = func.jsonb_object_keys(tenants.c.custom_properties).label("key")
        stmt = select(keys).where(subtree_filter(routed, include_descendants=True, include_deleted=True)).distinct()
        return sorted((await tx.execute(stmt)).scalars())


async def export(engine: AsyncEngine, routed: Routed, options: ExportOptions) -> AsyncIterator[bytes]:
    """The export, chunk by chunk (about a thousand rows each); the header first."""
    options.check()
    keys = await custom_property_keys(engine, routed)
    rows = period_rows(engine, routed, start=options.start, end=options.end, granularity=options.granularity)
    if options.fmt == "json":
        async for chunk in _json_lines(rows):
            yield chunk
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=options.separator, lineterminator="\n")
    writer.writerow([*HEADER, *(f"custom.{k}" for k in keys)])
    count = 0
    # Rows are (7 tenant columns, period, counters..., snapshots..., two peaks): read by
    # position, which is several times cheaper than by name at a few hundred thousand rows.
    counters_end = 8 + len(USAGE_COUNTERS)
    totals_at = [8 + USAGE_COUNTERS.index(c) for c in CREATE_UPDATE]
    async for row in rows:
        props = row[6] or {}
        writer.writerow([
            row[0], _text(row[1]), _text(row[2]), row[3] or "", row[4], row[5].isoformat(), row[7].isoformat(),
            *row[8:counters_end], sum(row[i] for i in totals_at), *row[counters_end:],
            *(_cell(props.get(k), options.decimal) for k in keys)])
        count += 1
        if count % 1000 == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text(value: str) -> str:
    """A text cell a spreadsheet will not run: OWASP's CSV-injection rule prefixes cells that
    begin like a formula with a single quote (self sign-up lets outsiders choose company names)."""
    return "'" + value if value.startswith(FORMULA_START) else value


def _cell(value: object, decimal: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value).replace(".", decimal)
    if isinstance(value, dict | list):
        return _text(orjson.dumps(value).decode())
    if isinstance(value, int):
        return str(value)
    return _text(str(value))


async def _json_lines(rows: AsyncIterator[object]) -> AsyncIterator[bytes]:
    chunk: list[bytes] = []
    async for row in rows:
        m = row._mapping  # type: ignore[attr-defined]
        item = {"tenantId": m["id"], "tenantDomain": m["domain"], "tenantCompany": m["company"],
                "parentTenantId": m["parent_id"], "status": m["status"], "creationTime": m["created_at"],
                "period": m["period"], **{camel(c): m[c] for c in VALUE_COLUMNS},
                "totalResourceCreateAndUpdateCount": sum(m[c] for c in CREATE_UPDATE),
                "customProperties": m["custom_properties"]}
        chunk.append(orjson.dumps(item) + b"\n")
        if len(chunk) >= 1000:
            yield b"".join(chunk)
            chunk = []
    yield b"".join(chunk)
