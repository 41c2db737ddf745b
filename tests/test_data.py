"""Device data: measurements (bulk, paged, aggregated), events, alarms and operations."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import Api, TenantHandle, World, nowhere

CREATE_M = "mutation($m: [MeasurementInput!]!) { createMeasurements(input: $m) }"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


async def _device(api: Api, t: TenantHandle) -> str:
    result = await api.gql('mutation { createDevice(input: {name: "d"}) { id } }', token=t.token, tenant=t.id)
    return str(result.data["createDevice"]["id"])


def _rows(device: str, n: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"deviceId": device, "time": (T0 + timedelta(seconds=37 * i)).isoformat(), "type": "climate",
             "series": "temperature" if i % 3 else "humidity", "value": round(rng.uniform(-20, 40), 3),
             "unit": "C"} for i in range(n)]


async def test_a_batch_of_a_thousand_is_stored_and_paged_in_time_order(api: Api, world: World) -> None:
    t = await world.tenant()
    device = await _device(api, t)
    rows = _rows(device, 1200)
    stored = await api.gql(CREATE_M, {"m": rows}, token=t.token, tenant=t.id)
    assert stored.data["createMeasurements"] == 1200

    query = """query($d: ID!, $a: String, $from: DateTime, $to: DateTime) {
      measurements(deviceId: $d, from: $from, to: $to, series: "temperature", first: 500, after: $a) {
        edges { node { time value } } pageInfo { hasNextPage endCursor } } }"""
    window_from, window_to = T0 + timedelta(hours=1), T0 + timedelta(hours=9)
    expected = [r for i, r in enumerate(rows) if i % 3 and window_from <= datetime.fromisoformat(r["time"]) < window_to]
    seen: list[dict[str, Any]] = []
    after = None
    while True:
        page = await api.gql(query, {"d": device, "a": after, "from": window_from.isoformat(),
                                     "to": window_to.isoformat()}, token=t.token, tenant=t.id)
        conn = page.data["measurements"]
        seen += [e["node"] for e in conn["edges"]]
        if not conn["pageInfo"]["hasNextPage"]:
            break
        after = conn["pageInfo"]["endCursor"]
    assert [s["value"] for s in seen] == [r["value"] for r in expected]
    assert [datetime.fromisoformat(s["time"]) for s in seen] == [datetime.fromisoformat(r["time"]) for r in expected]


async def test_series_aggregates_match_the_raw_data(api: Api, world: World) -> None:
    t = await world.tenant()
    device = await _device(api, t)
    rows = _rows(device, 1000, seed=7)
    await api.gql(CREATE_M, {"m": rows}, token=t.token, tenant=t.id)
    result = await api.gql("""query($d: ID!, $f: DateTime!, $t: DateTime!) {
        measurementSeries(deviceId: $d, from: $f, to: $t, interval: HOUR) { series bucket min max avg count sum } }""",
                           {"d": device, "f": T0.isoformat(), "t": (T0 + timedelta(days=1)).isoformat()},
                           token=t.token, tenant=t.id)
    buckets: dict[tuple[str, datetime], list[float]] = defaultdict(list)
    for r in rows:
        time = datetime.fromisoformat(r["time"])
        buckets[(r["series"], time.replace(minute=0, second=0))].append(r["value"])
    points = result.data["measurementSeries"]
    assert len(points) == len(buckets)
    for p in points:
        values = buckets[(p["series"], datetime.fromisoformat(p["bucket"]))]
        assert p["count"] == len(values)
        assert p["min"] == min(values)
        assert p["max"] == max(values)
        assert abs(p["sum"] - sum(values)) < 1e-6
        assert abs(p["avg"] - sum(values) / len(values)) < 1e-6


async def test_measurement_times_are_stored_as_the_instants_sent_in_any_form(api: Api, world: World) -> None:
    # Most times go to COPY as the client wrote them (RFC 3339 in UTC), the rest formatted again in
    # UTC: a zone PostgreSQL does not take (+20:00), a week date, a comma, a seventh fraction digit.
    t = await world.tenant()
    device = await _device(api, t)
    texts = ["2026-03-01T00:00:00Z", "2026-03-01T00:00:01.5Z", "2026-03-01T00:00:02.123456+00:00",
             "2026-03-01T05:30:03+05:30", "2026-02-28T16:00:04-08:00", "2026-03-01T20:00:05+20:00",
             "2026-W09-7T00:00:06Z", "2026-03-01T00:00:07,25Z", "2026-03-01T00:00:08.1234567Z",
             "2026-03-01 00:00:09Z", "2026-03-01T00:00:10"]
    rows = [{"deviceId": device, "time": text, "type": "t", "series": "s", "value": float(i), "unit": None}
            for i, text in enumerate(texts[:-1])]
    stored = await api.gql(CREATE_M, {"m": rows}, token=t.token, tenant=t.id)
    assert stored.data["createMeasurements"] == len(rows)
    # `from` in a zone beyond PostgreSQL's ±15:59 as well: the read binds it in UTC
    page = await api.gql('query($d: ID!) { measurements(deviceId: $d, first: 50, from: "2026-03-01T20:00:00+20:00") '
                         '{ edges { node { time value } } } }', {"d": device}, token=t.token, tenant=t.id)
    read = {node["value"]: datetime.fromisoformat(node["time"])
            for node in (edge["node"] for edge in page.data["measurements"]["edges"])}
    assert read == {float(i): datetime.fromisoformat(text) for i, text in enumerate(texts[:-1])}
    refused = await api.gql(CREATE_M, {"m": [{**rows[0], "time": texts[-1]}]}, token=t.token, tenant=t.id)
    assert refused.code == "INVALID_INPUT"  # no zone


async def test_bad_measurement_input_is_refused_whole(api: Api, world: World) -> None:
    t = await world.tenant()
    device = await _device(api, t)
    good = _rows(device, 3)
    cases = {
        "NOT_FOUND": [*good, {**good[0], "deviceId": nowhere(t)}],
        "INVALID_INPUT": [{**good[0], "time": "2026-01-01T00:00:00"}],  # no time zone
    }
    for code, batch in cases.items():
        result = await api.gql(CREATE_M, {"m": batch}, token=t.token, tenant=t.id)
        assert result.code == code
    oversized = await api.gql(CREATE_M, {"m": _rows(device, 5001)}, token=t.token, tenant=t.id)
    assert oversized.code == "INVALID_INPUT"
    assert oversized.errors[0]["extensions"]["cap"] == 5000
    empty_series = await api.gql(CREATE_M, {"m": [{**good[0], "series": " "}]}, token=t.token, tenant=t.id)
    assert empty_series.code == "INVALID_INPUT"
    count = await api.gql("query($d: ID!) { measurements(deviceId: $d) { edges { node { id } } } }", {"d": device},
                          token=t.token, tenant=t.id)
    assert count.data["measurements"]["edges"] == []  # nothing from the refused batches

    backwards = await api.gql('query($d: ID!) { measurements(deviceId: $d, from: "2026-02-01T00:00:00Z", '
                              'to: "2026-01-01T00:00:00Z") { edges { node { id } } } }', {"d": device},
                              token=t.token, tenant=t.id)
    assert backwards.code == "INVALID_INPUT"
    too_many_buckets = await api.gql('query($d: ID!) { measurementSeries(deviceId: $d, from: "2000-01-01T00:00:00Z", '
                                     'to: "2026-01-01T00:00:00Z", interval: MINUTE) { count } }', {"d": device},
                                     token=t.token, tenant=t.id)
    assert too_many_buckets.code == "INVALID_INPUT"
    unknown = await api.gql('query($d: ID!) { measurements(deviceId: $d) { edges { node { id } } } }',
                            {"d": nowhere(t)}, token=t.token, tenant=t.id)
    assert unknown.code == "NOT_FOUND"
    bare = await api.gql('{ measurements(deviceId: "987654") { edges { node { id } } } }', token=t.token, tenant=t.id)
    assert bare.code == "INVALID_INPUT"


async def test_events_are_created_updated_and_queried(api: Api, world: World) -> None:
    t = await world.tenant()
    device = await _device(api, t)
    create = """mutation($d: ID!, $time: DateTime!, $type: String!) { createEvent(input: {deviceId: $d, time: $time,
                type: $type, text: "door", attributes: {by: "alice"}}) { id attributes } }"""
    first = await api.gql(create, {"d": device, "time": "2026-01-01T10:00:00Z", "type": "door"}, token=t.token,
                          tenant=t.id)
    await api.gql(create, {"d": device, "time": "2026-01-02T10:00:00Z", "type": "power"}, token=t.token, tenant=t.id)
    event_id = first.data["createEvent"]["id"]
    updated = await api.gql('mutation($id: ID!) { updateEvent(id: $id, input: {text: "door closed", '
                            'attributes: {by: "bob"}}) { text attributes } }', {"id": event_id},
                            token=t.token, tenant=t.id)
    assert updated.data["updateEvent"] == {"text": "door closed", "attributes": {"by": "bob"}}
    doors = await api.gql('{ events(type: "door", from: "2026-01-01T00:00:00Z", to: "2026-01-03T00:00:00Z") '
                          "{ edges { node { id text } } } }", token=t.token, tenant=t.id)
    assert doors.data["events"]["edges"] == [{"node": {"id": event_id, "text": "door closed"}}]
    missing = await api.gql('mutation($i: ID!) { updateEvent(id: $i, input: {text: "x"}) { id } }',
                            {"i": nowhere(t, "Event")}, token=t.token,
                            tenant=t.id)
    assert missing.code == "NOT_FOUND"


async def test_alarms_deduplicate_while_open_and_follow_their_lifecycle(api: Api, world: World) -> None:
    t = await world.tenant()
    device = await _device(api, t)
    raise_ = """mutation($d: ID!, $s: AlarmSeverity!) { raiseAlarm(input: {deviceId: $d, type: "overheat",
                severity: $s, text: "hot"}) { id count severity status } }"""
    first = (await api.gql(raise_, {"d": device, "s": "MINOR"}, token=t.token, tenant=t.id)).data["raiseAlarm"]
    again = (await api.gql(raise_, {"d": device, "s": "CRITICAL"}, token=t.token, tenant=t.id)).data["raiseAlarm"]
    assert again["id"] == first["id"]
    assert again["count"] == 2
    assert again["severity"] == "CRITICAL"

    status = "mutation($id: ID!, $s: AlarmStatus!) { updateAlarmStatus(id: $id, status: $s) { status } }"
    acked = await api.gql(status, {"id": first["id"], "s": "ACKNOWLEDGED"}, token=t.token, tenant=t.id)
    assert acked.data["updateAlarmStatus"]["status"] == "ACKNOWLEDGED"
    back = await api.gql(status, {"id": first["id"], "s": "ACTIVE"}, token=t.token, tenant=t.id)
    assert back.code == "INVALID_INPUT"
    # Still open while acknowledged: raising counts up.
    third = (await api.gql(raise_, {"d": device, "s": "MAJOR"}, token=t.token, tenant=t.id)).data["raiseAlarm"]
    assert third["id"] == first["id"]
    assert third["count"] == 3
    await api.gql(status, {"id": first["id"], "s": "CLEARED"}, token=t.token, tenant=t.id)
    reopen = await api.gql(status, {"id": first["id"], "s": "ACKNOWLEDGED"}, token=t.token, tenant=t.id)
    assert reopen.code == "INVALID_INPUT"
    fresh = (await api.gql(raise_, {"d": device, "s": "WARNING"}, token=t.token, tenant=t.id)).data["raiseAlarm"]
    assert fresh["id"] != first["id"]
    assert fresh["count"] == 1

    active = await api.gql('query($d: ID!) { alarms(filter: {deviceId: $d, status: [ACTIVE]}) '
                           "{ edges { node { id severity } } } }", {"d": device}, token=t.token, tenant=t.id)
    assert active.data["alarms"]["edges"] == [{"node": {"id": fresh["id"], "severity": "WARNING"}}]
    warnings = await api.gql("{ alarms(filter: {severity: [WARNING, MINOR]}) { edges { node { id } } } }",
                             token=t.token, tenant=t.id)
    assert [e["node"]["id"] for e in warnings.data["alarms"]["edges"]] == [fresh["id"]]
    unknown = await api.gql(raise_, {"d": nowhere(t), "s": "MAJOR"}, token=t.token, tenant=t.id)
    assert unknown.code == "NOT_FOUND"


async def test_operations_follow_their_state_machine(api: Api, world: World) -> None:
    t = await world.tenant()
    device = await _device(api, t)
    create = 'mutation($d: ID!) { createOperation(input: {deviceId: $d, description: "reboot", payload: {delay: 5}}) ' \
             "{ id status payload } }"
    op = (await api.gql(create, {"d": device}, token=t.token, tenant=t.id)).data["createOperation"]
    assert op["status"] == "PENDING"
    assert op["payload"] == {"delay": 5}
    move = """mutation($id: ID!, $s: OperationStatus!, $r: String) {
              updateOperationStatus(id: $id, status: $s, failureReason: $r) { status failureReason } }"""
    assert (await api.gql(move, {"id": op["id"], "s": "SUCCESSFUL"}, token=t.token, tenant=t.id)).code == \
        "INVALID_INPUT"
    assert (await api.gql(move, {"id": op["id"], "s": "EXECUTING"}, token=t.token, tenant=t.id)).data
    no_reason = await api.gql(move, {"id": op["id"], "s": "FAILED"}, token=t.token, tenant=t.id)
    assert no_reason.code == "INVALID_INPUT"
    failed = await api.gql(move, {"id": op["id"], "s": "FAILED", "r": "disk full"}, token=t.token, tenant=t.id)
    assert failed.data["updateOperationStatus"] == {"status": "FAILED", "failureReason": "disk full"}
    final = await api.gql(move, {"id": op["id"], "s": "EXECUTING"}, token=t.token, tenant=t.id)
    assert final.code == "INVALID_INPUT"
    listed = await api.gql("query($d: ID!) { operations(deviceId: $d, status: FAILED) { edges { node { id } } } }",
                           {"d": device}, token=t.token, tenant=t.id)
    assert [e["node"]["id"] for e in listed.data["operations"]["edges"]] == [op["id"]]
