"""Retention: per-tenant rules deleting old data, applied tenant by tenant in bounded batches.

Each batch is its own short routed transaction, so retention never holds long locks nor
builds huge transactions, and it runs under the tenant's role like any request.
- MEASUREMENT, EVENT: by `time`;
- ALARM: CLEARED alarms by their last change (open alarms are never deleted);
- OPERATION: finished (SUCCESSFUL/FAILED) operations by their last change;
- `*`: all four. An optional `type` narrows a rule to one type (not for operations).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, delete, insert, select, true
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access.acting import tenant_transaction
from app.db.transaction import Executor
from app.errors import InvalidInput, NotFound
from app.models.management import tenants
from app.models.tenant import alarms, events, measurements, operations, retention_rules
from app.runtime.periodic import every, exclusively
from app.services.changes import log
from app.services.inventory.devices import require_id
from app.services.rows import to_record

# CHANGE: the tenant's change log (default log.DEFAULT_RETENTION_DAYS); `*` means the data types only.
DATA_TYPES = ("MEASUREMENT", "EVENT", "ALARM", "OPERATION", "*", "CHANGE")


@dataclass(frozen=True)
class RetentionRule:
    id: int
    data_type: str
    type: str | None
    max_age_days: int
    created_at: datetime


@dataclass(frozen=True)
class Target:
    table: Table
    age_column: Any
    extra: ColumnElement[bool]
    has_type: bool


TARGETS: dict[str, Target] = {
    "MEASUREMENT": Target(measurements, measurements.c.time, true(), True),
    "EVENT": Target(events, events.c.time, true(), True),
    "ALARM": Target(alarms, alarms.c.updated_at, alarms.c.status == "CLEARED", True),
    "OPERATION": Target(operations, operations.c.updated_at, operations.c.status.in_(["SUCCESSFUL", "FAILED"]), False),
}
COLUMNS = (retention_rules.c.id, retention_rules.c.data_type, retention_rules.c.type, retention_rules.c.max_age_days,
           retention_rules.c.created_at)


async def list_rules(db: Executor) -> list[RetentionRule]:
    rows = (await db.execute(select(*COLUMNS).order_by(retention_rules.c.id))).all()
    return [to_record(RetentionRule, r) for r in rows]


async def add_rule(db: Executor, *, data_type: str, type: str | None, max_age_days: int) -> RetentionRule:
    if data_type not in DATA_TYPES:
        raise InvalidInput(f"dataType must be one of {', '.join(DATA_TYPES)}", field="dataType")
    if not 1 <= max_age_days <= 36_500:
        raise InvalidInput("maxAgeDays must be 1-36500", field="maxAgeDays")
    if type is not None and data_type in ("OPERATION", "*", "CHANGE"):
        raise InvalidInput("a type filter applies to MEASUREMENT, EVENT or ALARM rules", field="type")
    row = (await db.execute(insert(retention_rules).values(data_type=data_type, type=type, max_age_days=max_age_days)
                            .returning(*COLUMNS))).one()
    return to_record(RetentionRule, row)


async def delete_rule(db: Executor, rule_id: str) -> None:
    result = await db.execute(delete(retention_rules).where(retention_rules.c.id == require_id(rule_id, "rule")))
    if not result.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"retention rule {rule_id} not found")


async def apply_to_tenant(engine: AsyncEngine, tenant_id: str, *, batch_size: int = 5000,
                          now: datetime | None = None) -> dict[str, int]:
    """Apply a tenant's rules; returns rows deleted per data type."""
    now = now or datetime.now(UTC)
    tx = tenant_transaction(engine, tenant_id)
    try:
        rules = await list_rules(tx)
    finally:
        await tx.finish(commit=True)
    deleted = dict.fromkeys(TARGETS, 0)
    deleted["CHANGE"] = await _prune_changes(engine, tenant_id, rules, now, batch_size)
    for rule in [r for r in rules if r.data_type != "CHANGE"]:
        cutoff = now - timedelta(days=rule.max_age_days)
        for name in (TARGETS if rule.data_type == "*" else [rule.data_type]):
            target = TARGETS[name]
            condition = (target.age_column < cutoff) & target.extra
            if rule.type is not None and target.has_type:
                condition = condition & (target.table.c.type == rule.type)
            while True:  # bounded batches, each its own transaction
                batch = select(target.table.c.id).where(condition).limit(batch_size).scalar_subquery()
                tx = tenant_transaction(engine, tenant_id)
                try:
                    result = await tx.execute(delete(target.table).where(target.table.c.id.in_(batch)))
                    await tx.finish(commit=True)
                except BaseException:
                    await tx.finish(commit=False)
                    raise
                count = int(result.rowcount)  # type: ignore[attr-defined]
                deleted[name] += count
                if count < batch_size:
                    break
    return deleted


async def _prune_changes(engine: AsyncEngine, tenant_id: str, rules: list[RetentionRule], now: datetime,
                         batch_size: int) -> int:
    days = min((r.max_age_days for r in rules if r.data_type == "CHANGE"), default=log.DEFAULT_RETENTION_DAYS)
    total = 0
    while True:
        tx = tenant_transaction(engine, tenant_id)
        try:
            count = await log.prune(tx, now - timedelta(days=days), batch_size=batch_size)
            await tx.finish(commit=True)
        except BaseException:
            await tx.finish(commit=False)
            raise
        total += count
        if count < batch_size:
            return total


async def apply_to_all(engine: AsyncEngine, *, batch_size: int = 5000, now: datetime | None = None,
                       progress: Callable[[str, dict[str, int]], None] = lambda t, d: None) -> dict[str, int]:
    """Every live tenant, one after another (a slow tenant delays, but never blocks, the rest)."""
    async with engine.connect() as conn:
        ids = (await conn.execute(select(tenants.c.id).where(tenants.c.status != "DELETED")
                                  .order_by(tenants.c.id))).scalars().all()
    totals = dict.fromkeys([*TARGETS, "CHANGE"], 0)
    for tenant_id in ids:
        deleted = await apply_to_tenant(engine, tenant_id, batch_size=batch_size, now=now)
        for key, value in deleted.items():
            totals[key] += value
        progress(tenant_id, deleted)
    return totals


async def periodic(engine: AsyncEngine, interval_seconds: float) -> None:
    """The server's retention loop. An advisory lock lets one worker process run it at a time."""
    log = logging.getLogger("tenantry.retention")

    async def run() -> None:
        log.info("retention applied: %s", await apply_to_all(engine))

    await every(interval_seconds, lambda: exclusively(engine, "tenantry.retention", run), log=log,
                what="retention run", first_after=interval_seconds)
