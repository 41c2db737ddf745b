"""Closed days summed once (migration m0024): a range's summary read from blocks of 2**k days equals
the sum of its days, whatever was written to those days after they were closed."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text

from app.runtime.platform import Platform
from app.services.usage.statistics import close_days
from tests.conftest import Api, TenantHandle, World, assert_denied


def _utc_day() -> date:
    """Today (UTC), read when used: a date taken at import went stale for every test that ran after
    midnight in a suite started before it."""
    return datetime.now(UTC).date()


SUMMARY = """query($f: Date!, $t: Date!) { subtenantUsage(from: $f, to: $t) { tenantId requestCount
    measurementsCreatedCount deviceCount storageSize userCount peakDeviceCount peakStorageSize } }"""
COLUMNS = ("request_count", "measurements_created_count", "device_count", "storage_size", "user_count")
# Every block of these tenants against the days it holds: the invariant the triggers keep.
STALE_BLOCKS = """
SELECT b.level, b.start, b.tenant_id FROM tenantry.usage_blocks b
  LEFT JOIN LATERAL (SELECT sum(request_count) AS requests, sum(measurements_created_count) AS measurements,
                            max(device_count) AS peak, max(day) AS last_day
                       FROM tenantry.usage_daily d
                      WHERE d.tenant_id = b.tenant_id AND d.day BETWEEN b.start AND b.start + ((1 << b.level) - 1)) d
         ON true
 WHERE b.tenant_id = ANY(:ids)
   AND (d.last_day IS NULL OR (b.request_count, b.measurements_created_count, b.peak_device_count, b.last_day)
                              IS DISTINCT FROM (d.requests, d.measurements, d.peak, d.last_day))
"""

Days = dict[str, dict[date, dict[str, int]]]


def expected(days: dict[date, dict[str, int]], first: date, last: date) -> dict[str, int]:
    inside = {d: v for d, v in days.items() if first <= d <= last}
    final = inside[max(inside)] if inside else {}
    return {"requestCount": sum(v["request_count"] for v in inside.values()),
            "measurementsCreatedCount": sum(v["measurements_created_count"] for v in inside.values()),
            "deviceCount": final.get("device_count", 0), "storageSize": final.get("storage_size", 0),
            "userCount": final.get("user_count", 0),
            "peakDeviceCount": max((v["device_count"] for v in inside.values()), default=0),
            "peakStorageSize": max((v["storage_size"] for v in inside.values()), default=0)}


async def _seed(platform: Platform, tenants: list[TenantHandle], rng: random.Random) -> Days:
    days: Days = {t.id: {} for t in tenants}
    rows = []
    for t in tenants:
        for back in range(0, 420):
            if rng.random() < 0.2:  # days without a row (idle, or before the tenant existed)
                continue
            values = {"request_count": rng.randrange(1000), "measurements_created_count": rng.randrange(10**6),
                      "device_count": rng.randrange(50), "storage_size": rng.randrange(10**9),
                      "user_count": rng.randrange(1, 9)}
            days[t.id][_utc_day() - timedelta(days=back)] = values
            rows.append({"t": t.id, "d": _utc_day() - timedelta(days=back), **values})
    async with platform.db.owner.begin() as conn:  # one statement: the trigger rebuilds the closed blocks once
        await conn.execute(text(
            f"INSERT INTO tenantry.usage_daily (tenant_id, day, {', '.join(COLUMNS)}) "
            f"SELECT * FROM unnest(CAST(:t AS text[]), CAST(:d AS date[]), "
            f"{', '.join(f'CAST(:{c} AS bigint[])' for c in COLUMNS)})"),
            {"t": [r["t"] for r in rows], "d": [r["d"] for r in rows], **{c: [r[c] for r in rows] for c in COLUMNS}})
    return days


async def _summaries(api: Api, parent: TenantHandle, first: date, last: date) -> dict[str, dict[str, int]]:
    result = await api.gql(SUMMARY, {"f": first.isoformat(), "t": last.isoformat()}, token=parent.token,
                           tenant=parent.id)
    return {r.pop("tenantId"): r for r in result.data["subtenantUsage"]}


async def _check(api: Api, platform: Platform, parent: TenantHandle, days: Days,
                 ranges: list[tuple[date, date]]) -> None:
    for first, last in ranges:
        got = await _summaries(api, parent, first, last)
        for tenant_id, own in days.items():
            assert got[tenant_id] == expected(own, first, last), (first, last)
    async with platform.db.owner.connect() as conn:
        assert (await conn.execute(text(STALE_BLOCKS), {"ids": list(days)})).all() == []


def _ranges(rng: random.Random) -> list[tuple[date, date]]:
    ranges = [(_utc_day() - timedelta(days=29), _utc_day()), (_utc_day() - timedelta(days=399), _utc_day()),
              (_utc_day() - timedelta(days=1), _utc_day() - timedelta(days=1)), (_utc_day(), _utc_day()),
              (_utc_day() - timedelta(days=300), _utc_day() - timedelta(days=45))]
    for _ in range(25):
        last = _utc_day() - timedelta(days=rng.randrange(0, 60))
        ranges.append((last - timedelta(days=rng.randrange(0, 400)), last))
    return ranges


async def test_a_summary_from_blocks_equals_the_sum_of_its_days(api: Api, world: World, platform: Platform) -> None:
    rng = random.Random(7)
    ent = await world.tenant(kind="ENTERPRISE")
    tenants = [await world.tenant(ent), await world.tenant(ent)]
    days = await _seed(platform, tenants, rng)
    async with platform.db.owner.connect() as conn:  # the long ranges do read blocks
        levels = (await conn.execute(text("SELECT DISTINCT level FROM tenantry.usage_blocks WHERE tenant_id = :t"),
                                     {"t": tenants[0].id})).scalars().all()
        pieces = (await conn.execute(text("SELECT max(level), count(*) FROM tenantry.usage_pieces(:f, :l)"),
                                     {"f": _utc_day() - timedelta(days=399), "l": _utc_day()})).one()
    assert set(levels) == set(range(1, 9))
    assert pieces[0] >= 7  # a block of 128 days at least
    assert pieces[1] < 20  # 400 days in under 20 rows a tenant
    await _check(api, platform, ent, days, _ranges(rng))


async def test_writes_to_closed_days_rebuild_their_blocks(api: Api, world: World, platform: Platform) -> None:
    rng = random.Random(11)
    ent = await world.tenant(kind="ENTERPRISE")
    tenants = [await world.tenant(ent)]
    days = await _seed(platform, tenants, rng)
    own = days[tenants[0].id]
    corrected, removed = _utc_day() - timedelta(days=40), sorted(own)[len(own) // 2]
    async with platform.db.owner.begin() as conn:  # a correction, a removal, a day added late
        await conn.execute(text("UPDATE tenantry.usage_daily SET request_count = request_count + 5000, "
                                "device_count = 99 WHERE tenant_id = :t AND day = :d"),
                           {"t": tenants[0].id, "d": corrected})
        await conn.execute(text("DELETE FROM tenantry.usage_daily WHERE tenant_id = :t AND day = :d"),
                           {"t": tenants[0].id, "d": removed})
        late = min(d for d in (_utc_day() - timedelta(days=n) for n in range(2, 400)) if d not in own)
        await conn.execute(text("INSERT INTO tenantry.usage_daily (tenant_id, day, request_count, device_count) "
                                "VALUES (:t, :d, 7, 1)"), {"t": tenants[0].id, "d": late})
    if corrected in own:
        own[corrected] = {**own[corrected], "request_count": own[corrected]["request_count"] + 5000,
                          "device_count": 99}
    del own[removed]
    own[late] = {"request_count": 7, "measurements_created_count": 0, "device_count": 1, "storage_size": 0,
                 "user_count": 0}
    await _check(api, platform, ent, days, _ranges(rng))
    async with platform.db.owner.begin() as conn:  # every day of a tenant gone: so are its blocks
        await conn.execute(text("DELETE FROM tenantry.usage_daily WHERE tenant_id = :t"), {"t": tenants[0].id})
        left = (await conn.execute(text("SELECT count(*) FROM tenantry.usage_blocks WHERE tenant_id = :t"),
                                   {"t": tenants[0].id})).scalar()
    assert left == 0
    today = _utc_day()
    assert (await _summaries(api, ent, today - timedelta(days=399), today))[tenants[0].id]["requestCount"] == 0


async def test_closing_builds_the_blocks_the_triggers_keep(api: Api, world: World, platform: Platform) -> None:
    rng = random.Random(13)
    ent = await world.tenant(kind="ENTERPRISE")
    tenants = [await world.tenant(ent), await world.tenant(ent)]
    days = await _seed(platform, tenants, rng)
    blocks = text("SELECT * FROM tenantry.usage_blocks WHERE tenant_id = ANY(:ids) ORDER BY 1, 2, 3")
    async with platform.db.owner.begin() as conn:
        kept = (await conn.execute(blocks, {"ids": list(days)})).all()
        # As if these days had been recorded before any was closed: every block from scratch.
        await conn.execute(text("DELETE FROM tenantry.usage_blocks WHERE tenant_id = ANY(:ids)"), {"ids": list(days)})
        await conn.execute(text("UPDATE tenantry.usage_closed SET through = NULL"))
    assert await close_days(platform.db.app, through=_utc_day() + timedelta(days=5)) == _utc_day() - timedelta(days=1)
    assert await close_days(platform.db.app, through=_utc_day()) == _utc_day() - timedelta(days=1)  # never today
    async with platform.db.owner.connect() as conn:
        assert (await conn.execute(blocks, {"ids": list(days)})).all() == kept
    await _check(api, platform, ent, days, _ranges(rng)[:5])


async def test_blocks_are_the_management_planes_only(platform: Platform, world: World) -> None:
    t = await world.tenant()
    for table in ("usage_blocks", "usage_closed"):
        await assert_denied(platform, t.id, f"SELECT * FROM tenantry.{table}")
    await assert_denied(platform, t.id, "SELECT * FROM tenantry.usage_pieces(current_date - 30, current_date)")
