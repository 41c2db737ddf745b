"""Usage for invoicing: daily statistics, summaries over a subtree, snapshots, limit warnings.

Parents read their descendants' usage (management plane) but never their data: snapshots
count devices inside each tenant under that tenant's own role, and store only the numbers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Date,
    Float,
    Select,
    and_,
    cast,
    func,
    literal,
    literal_column,
    select,
    text,
    true,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access.acting import read_in_tenants, tenant_transaction
from app.access.principal import Routed
from app.auth.roles import TENANT_ADMIN
from app.db.naming import is_tenant_id
from app.db.transaction import Executor, is_citus, transaction
from app.errors import InvalidInput, NotFound
from app.models.management import (
    USAGE_COUNTERS,
    USAGE_SNAPSHOTS,
    limit_warnings,
    memberships,
    outbox,
    tenants,
    usage_blocks,
    usage_daily,
    users,
)
from app.runtime.periodic import every, exclusively
from app.services.audit import records as audit
from app.services.tenants.lifecycle import parent_at_period
from app.tenancy.placement import placements
from app.tenancy.registry import Registry, TenantRecord

MAX_RANGE_DAYS = 400
CREATE_UPDATE = tuple(c for c in USAGE_COUNTERS if c.endswith(("_created_count", "_updated_count")))
# Limits and the usage they are checked against.
LIMIT_USAGE = {"max_devices": "device_with_children_count", "max_users": "user_count",
               "max_subtenants": "subtenant_count", "storage_bytes": "storage_size"}
LIMIT_NAMES = {"max_devices": "maxDevices", "max_users": "maxUsers", "max_subtenants": "maxSubtenants",
               "storage_bytes": "storageBytes", "requests_per_second": "requestsPerSecond",
               "request_burst": "requestBurst"}


@dataclass(frozen=True)
class UsageRow:
    tenant_id: str
    period: date
    values: dict[str, int]

    @property
    def total_resource_create_and_update_count(self) -> int:
        return sum(self.values.get(c, 0) for c in CREATE_UPDATE)


@dataclass(frozen=True)
class UsageSummary:
    tenant_id: str
    domain: str
    company: str
    parent_id: str | None
    status: str
    created_at: datetime
    deleted_at: datetime | None
    custom_properties: dict[str, Any]
    values: dict[str, int]  # counters summed; snapshots as of the last day; peak_* maxima

    @property
    def total_resource_create_and_update_count(self) -> int:
        return sum(self.values.get(c, 0) for c in CREATE_UPDATE)


def check_range(start: date, end: date) -> None:
    if end < start:
        raise InvalidInput("'to' must not be before 'from'", field="to")
    if (end - start).days >= MAX_RANGE_DAYS:
        raise InvalidInput(f"at most {MAX_RANGE_DAYS} days per query", field="to", cap=MAX_RANGE_DAYS)


async def readable_tenant(db: Executor, routed: Routed, tenant_id: str | None, registry: Registry) -> TenantRecord:
    """The caller's own tenant or a descendant (deleted ones too: their history is kept), for ADMINs."""
    routed.require(TENANT_ADMIN)
    if tenant_id is None or tenant_id == routed.tenant.id:
        return routed.tenant
    record = await registry.tenant(db, tenant_id) if is_tenant_id(tenant_id) else None
    if record is None or not record.is_strict_descendant_of(routed.tenant.id):
        raise NotFound(f"tenant {tenant_id} not found")
    return record


async def daily(db: Executor, *, tenant_id: str, start: date, end: date) -> list[UsageRow]:
    """One row per day of the range; days without usage (e.g. before creation) are zeros."""
    rows = (await db.execute(daily_statement(tenant_id=tenant_id, start=start, end=end))).all()
    return [UsageRow(tenant_id, r.day, {c: int(r._mapping[c]) for c in USAGE_COUNTERS + USAGE_SNAPSHOTS})
            for r in rows]


def daily_statement(*, tenant_id: str, start: date, end: date) -> Select[Any]:
    """The checked statement of `daily` (also compiled into a read's JSON: app.graphql.engine.compiled)."""
    check_range(start, end)
    days = select(func.generate_series(start, end, timedelta(days=1)).cast(Date).label("day")).subquery()
    columns = [func.coalesce(usage_daily.c[c], 0).label(c) for c in USAGE_COUNTERS + USAGE_SNAPSHOTS]
    return (select(days.c.day, *columns)
            .select_from(days.outerjoin(usage_daily, and_(usage_daily.c.day == days.c.day,
                                                          usage_daily.c.tenant_id == tenant_id)))
            .order_by(days.c.day))


def _summary_columns(day_column: Any) -> list[Any]:
    # sum(bigint) is numeric in PostgreSQL; cast back so every value is an integer.
    cols: list[Any] = [cast(func.coalesce(func.sum(usage_daily.c[c]), 0), BigInteger).label(c) for c in USAGE_COUNTERS]
    for c in USAGE_SNAPSHOTS:  # the value on the last day of the range that has a row
        cols.append(func.coalesce(literal_column(f"(array_agg(usage_daily.{c} ORDER BY usage_daily.day DESC))[1]"), 0)
                    .label(c))
    cols.append(func.coalesce(func.max(usage_daily.c.device_count), 0).label("peak_device_count"))
    cols.append(func.coalesce(func.max(usage_daily.c.storage_size), 0).label("peak_storage_size"))
    return cols


def subtree_filter(routed: Routed, *, include_descendants: bool, include_deleted: bool) -> Any:
    condition = and_(tenants.c.path.contains([routed.tenant.id]), tenants.c.id != routed.tenant.id)
    if not include_descendants:
        condition = and_(condition, tenants.c.parent_id == routed.tenant.id)
    if not include_deleted:
        condition = and_(condition, tenants.c.status != "DELETED")
    return condition


async def summaries(db: Executor, routed: Routed, *, start: date, end: date, include_descendants: bool = True,
                    include_deleted: bool = True) -> list[UsageSummary]:
    stmt = summary_statement(routed, start=start, end=end, include_descendants=include_descendants,
                             include_deleted=include_deleted)
    names = (*USAGE_COUNTERS, *USAGE_SNAPSHOTS, "peak_device_count", "peak_storage_size")
    await db.execute(text(SUMMARY_SETUP))
    rows: list[Any] = list((await db.execute(stmt)).all())
    return [UsageSummary(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], dict(zip(names, r[8:], strict=True)))
            for r in rows]


# For this transaction only: the per-tenant aggregate of a large subtree (10,000 tenants x 30
# days) hashes in memory instead of sorting through temporary files (bench/peer.py, case c).
SUMMARY_SETUP = "SELECT set_config('work_mem', '64MB', true)"


def summary_statement(routed: Routed, *, start: date, end: date, include_descendants: bool = True,
                      include_deleted: bool = True) -> Select[Any]:
    """The subtree's usage over a range, one row per tenant by id (also what the compiled read
    path wraps in json_agg: app.graphql.engine.compiled)."""
    routed.require(TENANT_ADMIN)
    check_range(start, end)
    totals = _range_totals(start, end)
    # The last day's row by primary key, one lookup per tenant (LIMIT keeps the planner from
    # flattening it into a hash join over every row of the table).
    last = (select(*(usage_daily.c[c] for c in USAGE_SNAPSHOTS))
            .where(usage_daily.c.tenant_id == totals.c.tenant_id, usage_daily.c.day == totals.c.last_day)
            .limit(1).lateral("last_day"))
    values = [*(func.coalesce(totals.c[c], 0).label(c) for c in USAGE_COUNTERS),
              *(func.coalesce(last.c[c], 0).label(c) for c in USAGE_SNAPSHOTS),
              func.coalesce(totals.c.peak_device_count, 0).label("peak_device_count"),
              func.coalesce(totals.c.peak_storage_size, 0).label("peak_storage_size")]
    stmt = (
        select(tenants.c.id, tenants.c.domain, tenants.c.company, tenants.c.parent_id, tenants.c.status,
               tenants.c.created_at, tenants.c.deleted_at, tenants.c.custom_properties, *values)
        .select_from(tenants.outerjoin(totals, totals.c.tenant_id == tenants.c.id)
                     .outerjoin(last, true()))
        .where(subtree_filter(routed, include_descendants=include_descendants, include_deleted=include_deleted))
        .order_by(tenants.c.id)
    )
    return stmt


def _range_totals(start: date, end: date) -> Any:
    """Per tenant: the counters summed over [start, end], the peaks, and the last day with a row.

    Closed days come as blocks of 2**k days (`usage_blocks`, kept equal to their days by the
    triggers of migration m0024), the open ones and the unaligned ends as days: `usage_pieces`
    splits the range the same way for every tenant, so 10,000 tenants x 30 days aggregate about
    7 rows per tenant instead of 30.
    """
    pieces = func.tenantry.usage_pieces(start, end).table_valued("level", "start")
    day_pieces, block_pieces = pieces.alias("day_pieces"), pieces.alias("block_pieces")
    days = (select(usage_daily.c.tenant_id, *(usage_daily.c[c] for c in USAGE_COUNTERS),
                   usage_daily.c.device_count.label("peak_device_count"),
                   usage_daily.c.storage_size.label("peak_storage_size"), usage_daily.c.day.label("last_day"))
            .where(usage_daily.c.day.in_(select(day_pieces.c.start).where(day_pieces.c.level == 0))))
    blocks = (select(usage_blocks.c.tenant_id, *(usage_blocks.c[c] for c in USAGE_COUNTERS),
                     usage_blocks.c.peak_device_count, usage_blocks.c.peak_storage_size, usage_blocks.c.last_day)
              .where(tuple_(usage_blocks.c.level, usage_blocks.c.start)
                     .in_(select(block_pieces.c.level, block_pieces.c.start).where(block_pieces.c.level > 0))))
    parts = union_all(days, blocks).subquery("parts")
    # Summed as float8, which is exact for integers below 2**53 (a tenant's counter over the range
    # would need ~9 * 10**15 requests), and ~2.5x faster than sum(bigint)'s 128-bit/numeric state.
    return (select(parts.c.tenant_id,
                   *(cast(func.sum(cast(parts.c[c], Float)), BigInteger).label(c) for c in USAGE_COUNTERS),
                   func.max(parts.c.last_day).label("last_day"),
                   func.max(parts.c.peak_device_count).label("peak_device_count"),
                   func.max(parts.c.peak_storage_size).label("peak_storage_size"))
            .group_by(parts.c.tenant_id).subquery("totals"))


async def period_rows(engine: AsyncEngine, routed: Routed, *, start: date, end: date,
                      granularity: str) -> AsyncIterator[Any]:
    """Rows for the export, streamed from a server-side cursor: per tenant and day, month or
    the whole range. Yields (tenant row, period start, values)."""
    routed.require(TENANT_ADMIN)
    check_range(start, end)
    if granularity not in ("day", "month", "total"):
        raise InvalidInput("granularity must be day, month or total", field="granularity")
    # Every tenant of the subtree for every period of the range, like subtenantUsage: a tenant
    # with no usage rows (idle, or not yet created) is listed with zeros, not left out of an invoice.
    step = "1 month" if granularity == "month" else "1 day"
    first = func.date_trunc("month", start) if granularity == "month" else literal(start)
    series = func.generate_series(first, end, literal_column(f"interval '{step}'"))
    periods = (select(cast(series, Date).label("period")) if granularity != "total"
               else select(literal(start, Date).label("period"))).subquery("periods")
    in_range = usage_daily.c.day.between(start, end)
    # The parent of each period (a moved tenant's invoice rows name the parent it had then).
    tenant_columns = (tenants.c.id, tenants.c.domain, tenants.c.company,
                      parent_at_period(periods.c.period).label("parent_id"), tenants.c.status, tenants.c.created_at,
                      tenants.c.custom_properties)
    if granularity == "day":  # one row per day already: no grouping (the bulk of a long export)
        on = and_(usage_daily.c.tenant_id == tenants.c.id, usage_daily.c.day == periods.c.period, in_range)
        stmt: Any = (
            select(*tenant_columns, periods.c.period,
                   *(func.coalesce(usage_daily.c[c], 0).label(c) for c in USAGE_COUNTERS + USAGE_SNAPSHOTS),
                   func.coalesce(usage_daily.c.device_count, 0).label("peak_device_count"),
                   func.coalesce(usage_daily.c.storage_size, 0).label("peak_storage_size"))
            .select_from(tenants.join(periods, true()).outerjoin(usage_daily, on))
            .where(subtree_filter(routed, include_descendants=True, include_deleted=True))
            .order_by(tenants.c.id, periods.c.period)
        )
    else:
        in_period = (cast(func.date_trunc("month", usage_daily.c.day), Date) == periods.c.period
                     if granularity == "month" else true())
        on = and_(usage_daily.c.tenant_id == tenants.c.id, in_range, in_period)
        stmt = (
            select(*tenant_columns, periods.c.period, *_summary_columns(usage_daily.c.day))
            .select_from(tenants.join(periods, true()).outerjoin(usage_daily, on))
            .where(subtree_filter(routed, include_descendants=True, include_deleted=True))
            .group_by(tenants.c.id, periods.c.period)
            .order_by(tenants.c.id, periods.c.period)
        )
    async with engine.connect() as conn:
        # A server-side cursor needs a transaction; REPEATABLE READ also gives the whole
        # export one consistent snapshot while the counters keep flushing.
        conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            result = await conn.stream(stmt.execution_options(yield_per=1000))
            async for row in result:
                yield row


# --- snapshots and limit warnings --------------------------------------------------------------


log = logging.getLogger("tenantry.usage")
SNAPSHOT_BATCH = 500  # tenants a round trip (and an upsert) of a snapshot sweep
_DEVICE_COUNTS = "SELECT count(*) FILTER (WHERE parent_id IS NULL), count(*) FROM devices"


async def _device_counts(engine: AsyncEngine, tenant_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Root and all devices of each tenant, read inside each tenant under its role, like any request:
    the whole batch in one round trip, or one tenant at a time if any of them fails (deleted meanwhile)."""
    try:
        found = await read_in_tenants(engine, tenant_ids, _DEVICE_COUNTS)
        return {t: (int(r[0] or 0), int(r[1] or 0)) for t, r in zip(tenant_ids, found, strict=True)}
    except Exception:
        out = {}
        for tenant_id in tenant_ids:
            ttx = tenant_transaction(engine, tenant_id)
            try:
                roots, all_devices = tuple((await ttx.execute(text(_DEVICE_COUNTS))).one())
                out[tenant_id] = (int(roots), int(all_devices))
            except Exception:  # gone since the sweep began (deleted): no snapshot, not a zero one
                log.warning("usage snapshot: tenant %s could not be read; skipped", tenant_id)
            finally:
                await ttx.finish(commit=False)
        return out


async def take_snapshots(engine: AsyncEngine, *, today: date, tenant_ids: Sequence[str] | None = None,
                         warning_ratio: float = 0.8) -> int:
    """Snapshot every live tenant (or the given ones) for `today`; returns how many."""
    async with transaction(engine) as tx:
        stmt = select(tenants.c.id).where(tenants.c.status != "DELETED")
        if tenant_ids is not None:
            stmt = stmt.where(tenants.c.id.in_(tenant_ids))
        ids = list((await tx.execute(stmt.order_by(tenants.c.id))).scalars())
        user_counts: dict[str, int] = dict(tuple(r) for r in (await tx.execute(
            select(memberships.c.tenant_id, func.count()).group_by(memberships.c.tenant_id))).all())
        child_counts: dict[str, int] = dict(tuple(r) for r in (await tx.execute(
            select(tenants.c.parent_id, func.count())
            .where(tenants.c.status != "DELETED", tenants.c.parent_id.isnot(None))
            .group_by(tenants.c.parent_id))).all())
    rows = []
    citus = await is_citus(engine)
    for start in range(0, len(ids), SNAPSHOT_BATCH):
        batch = ids[start:start + SNAPSHOT_BATCH]
        counts = await _device_counts(engine, batch)
        async with transaction(engine) as tx:  # on Citus, sizes as the nodes holding the schemas see them
            sizes = await placements(tx, batch, citus=citus)
        batch_rows = [{"tenant_id": tenant_id, "day": today, "device_count": counts[tenant_id][0],
                       "device_with_children_count": counts[tenant_id][1],
                       "storage_size": sizes[tenant_id].size_bytes if tenant_id in sizes else 0,
                       "user_count": int(user_counts.get(tenant_id, 0)),
                       "subtenant_count": int(child_counts.get(tenant_id, 0))}
                      for tenant_id in batch if tenant_id in counts]
        if not batch_rows:
            continue
        # Written batch by batch: memory stays bounded, and a failure keeps the batches before it.
        async with transaction(engine) as tx:
            upsert = pg_insert(usage_daily).values(batch_rows)
            await tx.execute(upsert.on_conflict_do_update(
                index_elements=[usage_daily.c.tenant_id, usage_daily.c.day],
                set_={c: upsert.excluded[c] for c in USAGE_SNAPSHOTS}))
            await check_limit_warnings(tx, batch_rows, ratio=warning_ratio)
        rows += batch_rows
    return len(rows)


async def check_limit_warnings(tx: Executor, usage_rows: Sequence[dict[str, Any]], *, ratio: float) -> list[str]:
    """Warn a tenant's admins (outbox + audit) when usage crosses `ratio` of a limit, once per
    crossing: the warning is re-armed when usage falls back below. Returns what was warned."""
    by_id = {r["tenant_id"]: r for r in usage_rows}
    limits = (await tx.execute(select(tenants.c.id, tenants.c.domain, *(tenants.c[k] for k in LIMIT_USAGE))
                               .where(tenants.c.id.in_(list(by_id))))).all()
    active = {(r.tenant_id, r.limit_name) for r in (await tx.execute(
        select(limit_warnings.c.tenant_id, limit_warnings.c.limit_name)
        .where(limit_warnings.c.tenant_id.in_(list(by_id))))).all()}
    warned = []
    for row in limits:
        for limit, usage_key in LIMIT_USAGE.items():
            value = row._mapping[limit]
            used = by_id[row.id].get(usage_key)
            if value is None or used is None:
                continue
            name = LIMIT_NAMES[limit]
            over = used >= ratio * value
            if over and (row.id, name) not in active:
                await tx.execute(limit_warnings.insert().values(tenant_id=row.id, limit_name=name, usage=used,
                                                                limit_value=value))
                admins = (await tx.execute(select(users.c.email).join(memberships, memberships.c.user_id == users.c.id)
                                           .where(memberships.c.tenant_id == row.id,
                                                  memberships.c.role == "ADMIN"))).scalars().all()
                for email in admins:
                    await tx.execute(outbox.insert().values(
                        tenant_id=row.id, recipient=email, subject=f"Tenant {row.domain}: {name} at {used}/{value}",
                        body=f"Your tenant {row.domain} ({row.id}) uses {used} of its {name} limit of {value}."))
                await audit.record(tx, tenant_id=row.id, actor=audit.SYSTEM, action="limit.warning", target=name,
                                   changes=[{"attribute": name, "previous": None, "new": used}])
                warned.append(f"{row.id}:{name}")
            elif not over and (row.id, name) in active:
                await tx.execute(limit_warnings.delete().where(limit_warnings.c.tenant_id == row.id,
                                                               limit_warnings.c.limit_name == name))
    return warned



async def close_days(engine: AsyncEngine, *, through: date) -> date | None:
    """Sum the days up to `through` (at most yesterday, UTC) into their blocks, once: what the
    summaries read for closed days. Returns the last closed day."""
    async with transaction(engine) as tx:
        closed: date | None = (await tx.execute(select(func.tenantry.close_usage_days(through)))).scalar()
    return closed


async def periodic_snapshots(engine: AsyncEngine, interval_seconds: float, *, warning_ratio: float) -> None:
    """The server's snapshot loop; an advisory lock lets one worker process take them at a time."""

    async def take() -> None:
        today = utc_today_date()
        taken = await take_snapshots(engine, today=today, warning_ratio=warning_ratio)
        log.info("usage snapshots taken for %d tenants", taken)
        await close_days(engine, through=today - timedelta(days=1))

    await every(interval_seconds, lambda: exclusively(engine, "tenantry.snapshots", take), log=log,
                what="usage snapshot")


@dataclass(frozen=True)
class LimitUsage:
    devices: int
    storage: int
    users: int
    subtenants: int


async def limit_usage(db: Executor, tenant_ids: Sequence[str]) -> dict[str, LimitUsage]:
    """Usage beside each limit, for many tenants in three queries (a DataLoader batch)."""
    latest = (select(usage_daily.c.tenant_id, usage_daily.c.device_with_children_count, usage_daily.c.storage_size)
              .where(usage_daily.c.tenant_id.in_(tenant_ids))
              .ext(distinct_on(usage_daily.c.tenant_id))
              .order_by(usage_daily.c.tenant_id, usage_daily.c.day.desc()))
    snapshots = {r.tenant_id: r for r in (await db.execute(latest)).all()}
    members = dict(tuple(r) for r in (await db.execute(
        select(memberships.c.tenant_id, func.count()).where(memberships.c.tenant_id.in_(tenant_ids))
        .group_by(memberships.c.tenant_id))).all())
    children = dict(tuple(r) for r in (await db.execute(
        select(tenants.c.parent_id, func.count()).where(tenants.c.parent_id.in_(tenant_ids),
                                                        tenants.c.status != "DELETED")
        .group_by(tenants.c.parent_id))).all())
    out = {}
    for tenant_id in tenant_ids:
        snap = snapshots.get(tenant_id)
        out[tenant_id] = LimitUsage(devices=int(snap.device_with_children_count) if snap else 0,
                                    storage=int(snap.storage_size) if snap else 0,
                                    users=int(members.get(tenant_id, 0)), subtenants=int(children.get(tenant_id, 0)))
    return out


def utc_today_date() -> date:
    return datetime.now(UTC).date()
