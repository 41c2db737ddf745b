"""Usage metering (exact, after commit only), usage queries, snapshots, export and metrics."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, date, datetime, timedelta

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from app.runtime.metrics import RequestMetrics
from app.runtime.platform import Platform
from app.services.usage.statistics import take_snapshots
from tests.conftest import Api, TenantHandle, World


def _utc_day() -> date:
    """Today (UTC), read when used: a date taken at import went stale for every test that ran after
    midnight in a suite started before it."""
    return datetime.now(UTC).date()


USAGE = """query($f: Date!, $t: Date!, $id: ID) { usage(from: $f, to: $t, tenantId: $id) { day tenantId requestCount
           deviceRequestCount measurementsCreatedCount eventsCreatedCount alarmsCreatedCount alarmsUpdatedCount
           inventoriesCreatedCount totalResourceCreateAndUpdateCount deviceCount deviceWithChildrenCount
           storageSize userCount subtenantCount } }"""


async def _today(api: Api, t: TenantHandle, platform: Platform) -> dict[str, int]:
    await platform.meter.flush()
    day = _utc_day().isoformat()
    result = await api.gql(USAGE, {"f": day, "t": day}, token=t.token, tenant=t.id)
    counts: dict[str, int] = result.data["usage"][0]
    return counts


async def test_n_concurrent_requests_are_counted_exactly(api: Api, world: World, platform: Platform) -> None:
    t = await world.tenant()
    before = await _today(api, t, platform)
    n = 60
    results = await asyncio.gather(*(api.gql("{ tenant { id } }", token=t.token, tenant=t.id) for _ in range(n)))
    assert all(r.status == 200 for r in results)
    after = await _today(api, t, platform)
    # The usage query that reads `before` is itself one request.
    assert after["requestCount"] - before["requestCount"] == n + 1


async def test_resources_are_counted_only_when_committed(api: Api, world: World, platform: Platform) -> None:
    t = await world.tenant()
    device = (await api.gql('mutation { createDevice(input: {name: "d", externalId: "u-1"}) { id } }',
                            token=t.token, tenant=t.id)).data["createDevice"]["id"]
    await api.gql("""mutation($d: ID!) {
        createMeasurements(input: [{deviceId: $d, time: "2026-01-01T00:00:00Z", type: "c", series: "s", value: 1},
                                   {deviceId: $d, time: "2026-01-01T00:01:00Z", type: "c", series: "s", value: 2}])
        a: raiseAlarm(input: {deviceId: $d, type: "x", severity: MINOR, text: "x"}) { id }
        b: raiseAlarm(input: {deviceId: $d, type: "x", severity: MINOR, text: "x"}) { id } }""", {"d": device},
                  token=t.token, tenant=t.id)
    rolled_back = await api.gql('mutation { a: createDevice(input: {name: "a"}) { id } '
                                'b: createDevice(input: {name: "b", externalId: "u-1"}) { id } }',
                                token=t.token, tenant=t.id)
    assert rolled_back.code == "CONFLICT"
    token = (await api.gql("mutation($d: ID!) { createDeviceToken(deviceId: $d) { token } }", {"d": device},
                           token=t.token, tenant=t.id)).data["createDeviceToken"]["token"]
    await api.gql('mutation($d: ID!) { createEvent(input: {deviceId: $d, time: "2026-01-01T00:00:00Z", type: "e", '
                  'text: "e"}) { id } }', {"d": device}, token=token)
    day = await _today(api, t, platform)
    assert day["measurementsCreatedCount"] == 2
    assert day["alarmsCreatedCount"] == 1
    assert day["alarmsUpdatedCount"] == 1
    assert day["inventoriesCreatedCount"] == 1  # the rolled-back pair is not counted
    assert day["eventsCreatedCount"] == 1
    assert day["deviceRequestCount"] == 1
    assert day["totalResourceCreateAndUpdateCount"] == 2 + 1 + 1 + 1 + 1


async def test_usage_is_zero_filled_and_readable_by_ancestors_only(api: Api, world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    child, sibling = await world.tenant(ent), await world.tenant(kind="ENTERPRISE")
    week = {"f": (_utc_day() - timedelta(days=6)).isoformat(), "t": _utc_day().isoformat()}
    own = await api.gql(USAGE, week, token=child.token, tenant=child.id)
    days = own.data["usage"]
    assert [d["day"] for d in days] == [(_utc_day() - timedelta(days=6 - i)).isoformat() for i in range(7)]
    assert all(d["requestCount"] == 0 for d in days[:-1])  # created today: zeros before
    by_parent = await api.gql(USAGE, {**week, "id": child.id}, token=ent.token, tenant=ent.id)
    assert {d["tenantId"] for d in by_parent.data["usage"]} == {child.id}
    assert (await api.gql(USAGE, {**week, "id": child.id}, token=sibling.token, tenant=sibling.id)).code == \
        "NOT_FOUND"
    assert (await api.gql(USAGE, {**week, "id": ent.id}, token=child.token, tenant=child.id)).code == "NOT_FOUND"
    backwards = await api.gql(USAGE, {"f": _utc_day().isoformat(), "t": (_utc_day() - timedelta(days=1)).isoformat()},
                              token=child.token, tenant=child.id)
    assert backwards.code == "INVALID_INPUT"
    _, reader = await world.member(child, "READER")
    assert (await api.gql(USAGE, week, token=reader, tenant=child.id)).code == "FORBIDDEN"


SUMMARY = """query($f: Date!, $t: Date!, $d: Boolean, $x: Boolean) {
  subtenantUsage(from: $f, to: $t, includeDescendants: $d, includeDeleted: $x) {
    tenantId tenantDomain parentTenantId status requestCount measurementsCreatedCount peakDeviceCount
    deviceCount customProperties } }"""


async def test_subtenant_usage_keeps_deleted_tenants_history(api: Api, world: World, platform: Platform) -> None:
    ent = await world.tenant(kind="ENTERPRISE", customProperties={"plan": "gold"})
    child = await world.tenant(ent, kind="ENTERPRISE")
    grandchild, leaf = await world.tenant(child), await world.tenant(ent)
    async with platform.db.owner.connect() as conn:  # history: 10 measurements 3 days ago, 5 devices at peak
        await conn.execute(text(
            "INSERT INTO tenantry.usage_daily (tenant_id, day, measurements_created_count, device_count) "
            "VALUES (:t, :d, 10, 5), (:t, :d2, 0, 2)"),
            {"t": leaf.id, "d": _utc_day() - timedelta(days=3), "d2": _utc_day() - timedelta(days=2)})
    await api.gql("mutation($id: ID!) { deleteTenant(id: $id) }", {"id": leaf.id}, token=world.operator_token,
                  tenant="management")
    month = {"f": (_utc_day() - timedelta(days=29)).isoformat(), "t": _utc_day().isoformat()}
    everything = await api.gql(SUMMARY, month, token=ent.token, tenant=ent.id)
    rows = {r["tenantId"]: r for r in everything.data["subtenantUsage"]}
    assert set(rows) == {child.id, grandchild.id, leaf.id}
    assert rows[leaf.id]["status"] == "DELETED"
    assert rows[leaf.id]["measurementsCreatedCount"] == 10
    assert rows[leaf.id]["peakDeviceCount"] == 5
    assert rows[leaf.id]["deviceCount"] == 2  # as of the last day with a row
    assert rows[grandchild.id]["parentTenantId"] == child.id
    direct = await api.gql(SUMMARY, {**month, "d": False, "x": False}, token=ent.token, tenant=ent.id)
    assert {r["tenantId"] for r in direct.data["subtenantUsage"]} == {child.id}
    from_management = await api.gql(SUMMARY, month, token=world.operator_token, tenant="management")
    seen = {r["tenantId"]: r for r in from_management.data["subtenantUsage"]}
    assert {ent.id, child.id, grandchild.id, leaf.id} <= set(seen)
    assert seen[ent.id]["customProperties"] == {"plan": "gold"}
    assert (await api.gql(SUMMARY, month, token=grandchild.token, tenant=grandchild.id)).data["subtenantUsage"] == []


async def test_snapshots_count_inside_each_tenant(api: Api, world: World, platform: Platform) -> None:
    t = await world.tenant()
    gateway = (await api.gql('mutation { createDevice(input: {name: "gw"}) { id } }', token=t.token,
                             tenant=t.id)).data["createDevice"]["id"]
    await api.gql("mutation($p: ID!) { createDevice(input: {name: \"child\", parentId: $p}) { id } }", {"p": gateway},
                  token=t.token, tenant=t.id)
    assert await take_snapshots(platform.db.app, today=_utc_day(), tenant_ids=[t.id]) == 1
    day = await _today(api, t, platform)
    assert (day["deviceCount"], day["deviceWithChildrenCount"], day["userCount"]) == (1, 2, 1)
    assert day["storageSize"] > 0


async def test_usage_export_streams_csv_and_json_lines(http: httpx.AsyncClient, api: Api, world: World,
                                                       platform: Platform) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(ent, customProperties={"costCenter": "CC-7", "plan": "basic"})
    async with platform.db.owner.connect() as conn:
        await conn.execute(text("INSERT INTO tenantry.usage_daily (tenant_id, day, request_count) VALUES "
                                "(:t, :a, 3), (:t, :b, 4)"),
                           {"t": child.id, "a": date(2026, 10, 30), "b": date(2026, 11, 2)})
    headers = {"authorization": f"Bearer {ent.token}", "x-tenant-id": ent.id}
    params = {"from": "2026-10-01", "to": "2026-11-15", "separator": ";"}
    daily = await http.get("/export/usage.csv", params=params, headers=headers)
    assert daily.status_code == 200
    assert daily.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(daily.text), delimiter=";"))
    mine = [r for r in rows if r["tenantId"] == child.id]
    assert len(mine) == 46  # every day of the range, zeros where nothing was used
    assert [(r["period"], r["requestCount"]) for r in mine if r["requestCount"] != "0"] == [
        ("2026-10-30", "3"), ("2026-11-02", "4")]
    assert mine[0]["custom.costCenter"] == "CC-7"
    assert mine[0]["parentTenantId"] == ent.id
    monthly = await http.get("/export/usage.csv", params={**params, "granularity": "month"}, headers=headers)
    mine = [r for r in csv.DictReader(io.StringIO(monthly.text), delimiter=";") if r["tenantId"] == child.id]
    assert [(r["period"], r["requestCount"]) for r in mine] == [("2026-10-01", "3"), ("2026-11-01", "4")]
    total = await http.get("/export/usage.csv", params={**params, "granularity": "total", "format": "json"},
                           headers=headers)
    lines = [orjson.loads(line) for line in total.text.splitlines()]
    assert [(x["tenantId"], x["requestCount"]) for x in lines if x["tenantId"] == child.id] == [(child.id, 7)]

    assert (await http.get("/export/usage.csv", params=params)).status_code == 401
    child_side = await http.get("/export/usage.csv", params=params,
                                headers={"authorization": f"Bearer {child.token}", "x-tenant-id": child.id})
    assert [r for r in csv.DictReader(io.StringIO(child_side.text), delimiter=";")] == []
    _, reader = await world.member(ent, "READER")
    forbidden = await http.get("/export/usage.csv", params=params,
                               headers={"authorization": f"Bearer {reader}", "x-tenant-id": ent.id})
    assert forbidden.status_code == 403
    for bad in ({**params, "from": "yesterday"}, {**params, "granularity": "week"}, {**params, "separator": "ab"}):
        assert (await http.get("/export/usage.csv", params=bad, headers=headers)).status_code == 400


async def test_usage_export_lists_idle_tenants_and_neutralises_formulas(
        http: httpx.AsyncClient, world: World) -> None:
    """Regression: a tenant without usage rows vanished from the export while subtenantUsage
    listed it with zeros, and a company like =HYPERLINK(...) became a live spreadsheet formula."""
    ent = await world.tenant(kind="ENTERPRISE")
    idle = await world.tenant(ent, company='=HYPERLINK("http://evil.example","click")',
                              customProperties={"note": "+1 call me", "cost": "-5"})
    headers = {"authorization": f"Bearer {ent.token}", "x-tenant-id": ent.id}
    for granularity, periods in (("day", 3), ("month", 2), ("total", 1)):
        params = {"from": "2026-01-30", "to": "2026-02-01", "granularity": granularity}
        rows = [r for r in csv.DictReader(io.StringIO((await http.get("/export/usage.csv", params=params,
                                                                      headers=headers)).text))
                if r["tenantId"] == idle.id]
        assert len(rows) == periods, granularity
        assert {r["requestCount"] for r in rows} == {"0"}
        assert rows[0]["tenantCompany"] == "'=HYPERLINK(\"http://evil.example\",\"click\")"
        assert (rows[0]["custom.note"], rows[0]["custom.cost"]) == ("'+1 call me", "'-5")
    lines = (await http.get("/export/usage.csv", params={"from": "2026-01-30", "to": "2026-02-01", "format": "json"},
                            headers=headers)).text.splitlines()
    raw = [orjson.loads(line) for line in lines if idle.id in line]
    assert raw[0]["tenantCompany"].startswith("=HYPERLINK")  # JSON lines keep raw values


async def test_metrics_have_a_label_cap(http: httpx.AsyncClient, operator_token: str) -> None:
    metrics = RequestMetrics(max_tenants=2)
    for tenant in ("t1", "t2", "t3", "t4"):
        metrics.record(tenant, device=tenant == "t1", error_codes=["FORBIDDEN"] if tenant == "t4" else [])
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics.render().decode()) for s in family.samples}
    assert samples[("tenantry_requests_total", (("tenant", "other"),))] == 2
    assert samples[("tenantry_device_requests_total", (("tenant", "t1"),))] == 1
    assert samples[("tenantry_errors_total", (("code", "FORBIDDEN"), ("tenant", "other")))] == 1
    served = await http.get("/metrics", headers={"authorization": f"Bearer {operator_token}"})
    assert served.status_code == 200
    assert "tenantry_requests_total" in served.text


async def test_counts_are_flushed_on_graceful_shutdown(world: World, platform: Platform) -> None:
    from app.main import create_app

    t = await world.tenant()
    query = text("SELECT coalesce(sum(request_count), 0) FROM tenantry.usage_daily WHERE tenant_id = :t")
    await platform.meter.flush()
    async with platform.db.owner.connect() as conn:
        before = (await conn.execute(query, {"t": t.id})).scalar_one()
    app = create_app(platform=platform)
    async with app.router.lifespan_context(app):
        platform.meter.add(t.id, {"request_count": 7})  # counted, not yet flushed when the server stops
    async with platform.db.owner.connect() as conn:
        after = (await conn.execute(query, {"t": t.id})).scalar_one()
    assert after - before == 7
    assert platform.meter.pending == 0


async def test_the_meter_flushes_more_tenants_than_one_statement_takes(platform: Platform) -> None:
    """One INSERT for every pending tenant passed PostgreSQL's 65,535 parameters above ~5,000
    tenants; the failed flush kept its rows, so every later flush failed as well."""
    from app.runtime.metering import Meter

    meter = Meter(platform.db.owner)  # its own meter: the shared one is flushed by other tests
    ids = [f"tflush{n:06d}" for n in range(6_000)]
    for tenant_id in ids:
        meter.add(tenant_id, {"request_count": 2, "events_created_count": 1})
    try:
        assert await meter.flush() == 6_000
        assert meter.pending == 0
        async with platform.db.owner.connect() as conn:
            total = (await conn.execute(text("SELECT sum(request_count), sum(events_created_count) FROM "
                                             "tenantry.usage_daily WHERE tenant_id LIKE 'tflush%'"))).one()
        assert tuple(total) == (12_000, 6_000)
    finally:
        async with platform.db.owner.begin() as conn:
            await conn.execute(text("DELETE FROM tenantry.usage_daily WHERE tenant_id LIKE 'tflush%'"))


async def test_subtenant_usage_sums_large_counters_exactly(api: Api, world: World, platform: Platform) -> None:
    """The summary sums counters as float8 for speed: exact for totals below 2**53."""
    ent = await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(ent)
    big = 2**51 + 1  # odd: a rounding sum would lose the last unit
    async with platform.db.owner.begin() as conn:
        await conn.execute(text(
            "INSERT INTO tenantry.usage_daily (tenant_id, day, request_count, measurements_created_count) "
            "VALUES (:t, :d, :big, 3), (:t, :d2, :big, 4), (:t, :d3, 1, 5)"),
            {"t": child.id, "big": big, "d": _utc_day() - timedelta(days=3), "d2": _utc_day() - timedelta(days=2),
             "d3": _utc_day() - timedelta(days=1)})
    month = {"f": (_utc_day() - timedelta(days=29)).isoformat(), "t": _utc_day().isoformat()}
    rows = (await api.gql(SUMMARY, month, token=ent.token, tenant=ent.id)).data["subtenantUsage"]
    (row,) = [r for r in rows if r["tenantId"] == child.id]
    assert row["requestCount"] == 2 * big + 1
    assert row["measurementsCreatedCount"] == 12


async def test_snapshots_read_many_tenants_in_one_round_trip_and_skip_a_vanished_one(
        api: Api, world: World, platform: Platform) -> None:
    """The sweep reads each tenant under its own role, a batch in one round trip; a tenant whose schema
    is gone (deleted during the sweep) gets no snapshot at all rather than zeros, and the rest still do."""
    counted, vanished, empty = await world.tenant(), await world.tenant(), await world.tenant()
    parent = (await api.gql('mutation { createDevice(input: {name: "gw"}) { id } }', token=counted.token,
                            tenant=counted.id)).data["createDevice"]["id"]
    await api.gql('mutation($p: ID!) { createDevice(input: {name: "child", parentId: $p}) { id } }', {"p": parent},
                  token=counted.token, tenant=counted.id)
    day = date(2031, 1, 2)
    assert await take_snapshots(platform.db.app, today=day, tenant_ids=[counted.id, empty.id]) == 2
    async with platform.db.owner.begin() as conn:
        await conn.exec_driver_sql(f"DROP SCHEMA t_{vanished.id} CASCADE")
    try:
        assert await take_snapshots(platform.db.app, today=day, tenant_ids=[counted.id, vanished.id, empty.id]) == 2
        async with platform.db.owner.connect() as conn:
            rows: dict[str, str] = dict((await conn.execute(text(
                "SELECT tenant_id, (device_count, device_with_children_count)::text FROM tenantry.usage_daily "
                "WHERE day = :d AND tenant_id IN (:a, :b, :c)"), {"d": day, "a": counted.id, "b": vanished.id,
                                                                  "c": empty.id})).all())
        assert rows == {counted.id: "(1,2)", empty.id: "(0,0)"}
    finally:  # the registry must not keep a live tenant without a schema (migrate would report it)
        async with platform.db.owner.begin() as conn:
            await conn.exec_driver_sql(f"UPDATE tenantry.tenants SET status = 'DELETED' WHERE id = '{vanished.id}'")


async def test_start_up_sets_the_collectors_young_threshold(platform: Platform) -> None:
    # Not usage, but the same real lifespan: the setting reaches the process at start-up, and 0 keeps Python's.
    import dataclasses
    import gc

    from app.main import create_app

    before = gc.get_threshold()
    try:
        for threshold, expected in ((12_345, 12_345), (0, 700)):
            gc.set_threshold(700, 10, 10)
            settings = dataclasses.replace(platform.settings, gc_young_threshold=threshold)
            app = create_app(settings=settings, platform=platform)
            async with app.router.lifespan_context(app):
                assert gc.get_threshold()[0] == expected
    finally:
        gc.set_threshold(*before)
