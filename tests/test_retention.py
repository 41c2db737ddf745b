"""Retention deletes old data per tenant rules, in bounded batches, and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from app.runtime.platform import Platform
from app.services.data.retention import apply_to_tenant
from tests.conftest import Api, World

NOW = datetime(2027, 6, 1, tzinfo=UTC)


async def test_old_data_goes_new_data_and_open_alarms_stay(api: Api, world: World, platform: Platform) -> None:
    t, other = await world.tenant(), await world.tenant()
    created = await api.gql('mutation { createDevice(input: {name: "d"}) { id } }', token=t.token, tenant=t.id)
    device = created.data["createDevice"]["id"]
    old, recent = (NOW - timedelta(days=400)).isoformat(), (NOW - timedelta(days=10)).isoformat()
    rows = [{"deviceId": device, "time": stamp, "type": "c", "series": "s", "value": float(i)}
            for i, stamp in enumerate([old] * 25 + [recent] * 5)]
    await api.gql("mutation($m: [MeasurementInput!]!) { createMeasurements(input: $m) }", {"m": rows},
                  token=t.token, tenant=t.id)
    # Events 100 days old: past the 30-day rule for "debug", within the seeded 365 days for the rest.
    older = (NOW - timedelta(days=100)).isoformat()
    for stamp, type_ in ((older, "debug"), (older, "audit"), (recent, "debug")):
        await api.gql("mutation($d: ID!, $t: DateTime!, $y: String!) { createEvent(input: {deviceId: $d, time: $t, "
                      'type: $y, text: "x"}) { id } }', {"d": device, "t": stamp, "y": type_}, token=t.token,
                      tenant=t.id)
    await api.gql('mutation { addRetentionRule(dataType: "EVENT", type: "debug", maxAgeDays: 30) { id } }',
                  token=t.token, tenant=t.id)
    for alarm_type in ("cleared", "open"):
        raised = await api.gql("mutation($d: ID!, $y: String!) { raiseAlarm(input: {deviceId: $d, type: $y, "
                               'severity: MAJOR, text: "x"}) { id } }', {"d": device, "y": alarm_type},
                               token=t.token, tenant=t.id)
        if alarm_type == "cleared":
            await api.gql("mutation($id: ID!) { updateAlarmStatus(id: $id, status: CLEARED) { id } }",
                          {"id": raised.data["raiseAlarm"]["id"]}, token=t.token, tenant=t.id)
    async with platform.db.owner.connect() as conn:  # age the alarms as if raised two years ago
        await conn.execute(text(f"UPDATE t_{t.id}.alarms SET updated_at = :old"), {"old": NOW - timedelta(days=800)})

    deleted = await apply_to_tenant(platform.db.app, t.id, batch_size=10, now=NOW)
    # NOW is over a week after these writes: their change-log entries go too (the log keeps 7 days).
    assert deleted == {"MEASUREMENT": 25, "EVENT": 1, "ALARM": 1, "OPERATION": 0, "CHANGE": 8}
    left = await api.gql('query($d: ID!) { measurements(deviceId: $d, first: 100) { edges { node { value } } } '
                         'events { edges { node { type } } } alarms { edges { node { type status } } } }',
                         {"d": device}, token=t.token, tenant=t.id)
    assert len(left.data["measurements"]["edges"]) == 5
    assert sorted(e["node"]["type"] for e in left.data["events"]["edges"]) == ["audit", "debug"]
    assert left.data["alarms"]["edges"] == [{"node": {"type": "open", "status": "ACTIVE"}}]
    # Another tenant's run touches nothing here (and this one's touched nothing there).
    assert await apply_to_tenant(platform.db.app, other.id, now=NOW) == {
        "MEASUREMENT": 0, "EVENT": 0, "ALARM": 0, "OPERATION": 0, "CHANGE": 0}
