"""Availability: a device with a required interval that goes silent becomes UNAVAILABLE with an alarm,
and AVAILABLE again when it reports. The monitor is run directly (the suite's app runs no background
loops); "silent for long" is made by moving the device's last report back in SQL, not by sleeping."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from app.access.acting import tenant_transaction
from app.db.naming import tenant_schema
from app.ids import decode
from app.runtime.platform import Platform
from app.services.connectivity import monitor
from tests.conftest import Api, TenantHandle, World, assert_denied

DEVICE = """mutation($n: String!, $i: Int) { createDevice(input: {name: $n, requiredInterval: $i}) {
    id availability requiredInterval } }"""
STATE = "query($id: ID!) { node(id: $id) { ... on Device { availability requiredInterval } } }"
ALARMS = """query($d: ID!) { alarms(filter: {deviceId: $d, type: "c8y_UnavailabilityAlarm"}) {
    edges { node { status severity count } } } }"""
SEND = """mutation($d: ID!) { createMeasurements(input: [{deviceId: $d, time: "2026-01-01T00:00:00Z", type: "c",
    series: "t", value: 1}]) }"""


async def _device(api: Api, t: TenantHandle, interval: int | None) -> tuple[str, str]:
    created = (await api.gql(DEVICE, {"n": "pump", "i": interval}, token=t.token, tenant=t.id)).data["createDevice"]
    token = (await api.gql("mutation($d: ID!) { createDeviceToken(deviceId: $d) { token } }", {"d": created["id"]},
                           token=t.token, tenant=t.id)).data["createDeviceToken"]["token"]
    return str(created["id"]), str(token)


async def _state(api: Api, t: TenantHandle, device: str) -> dict[str, Any]:
    return dict((await api.gql(STATE, {"id": device}, token=t.token, tenant=t.id)).data["node"])


async def _silent_for(platform: Platform, tenant_id: str, device: str, seconds: int) -> None:
    decoded = decode(device)
    assert decoded is not None
    async with platform.db.owner.begin() as conn:
        await conn.execute(text(f"UPDATE {tenant_schema(tenant_id)}.devices SET "
                                "last_seen_at = now() - make_interval(secs => :s), "
                                "created_at = now() - make_interval(secs => :s) WHERE id = :d"),
                           {"s": seconds, "d": decoded[2]})


async def test_a_silent_device_becomes_unavailable_and_available_again_when_it_reports(
        api: Api, world: World, platform: Platform) -> None:
    t = await world.tenant()
    device, token = await _device(api, t, 60)
    assert await _state(api, t, device) == {"availability": "UNKNOWN", "requiredInterval": 60}
    assert (await api.gql(SEND, {"d": device}, token=token)).data["createMeasurements"] == 1
    assert (await _state(api, t, device))["availability"] == "AVAILABLE"

    await monitor.sweep(platform.db.app)  # within its interval: nothing happens
    assert (await _state(api, t, device))["availability"] == "AVAILABLE"
    await _silent_for(platform, t.id, device, 61)
    assert await monitor.sweep(platform.db.app) >= 1
    assert (await _state(api, t, device))["availability"] == "UNAVAILABLE"
    alarms = (await api.gql(ALARMS, {"d": device}, token=t.token, tenant=t.id)).data["alarms"]["edges"]
    assert [a["node"] for a in alarms] == [{"status": "ACTIVE", "severity": "MAJOR", "count": 1}]
    await monitor.sweep(platform.db.app)  # told once, not at every look
    alarms = (await api.gql(ALARMS, {"d": device}, token=t.token, tenant=t.id)).data["alarms"]["edges"]
    assert alarms[0]["node"]["count"] == 1

    # An admin writing for the device is not the device reporting.
    assert (await api.gql(SEND, {"d": device}, token=t.token, tenant=t.id)).data["createMeasurements"] == 1
    assert (await _state(api, t, device))["availability"] == "UNAVAILABLE"
    event = ('mutation($d: ID!) { createEvent(input: {deviceId: $d, time: "2026-01-01T00:00:00Z", type: "x", '
             'text: "y"}) { id } }')
    assert (await api.gql(event, {"d": device}, token=token)).data["createEvent"]["id"]
    assert (await _state(api, t, device))["availability"] == "AVAILABLE"
    alarms = (await api.gql(ALARMS, {"d": device}, token=t.token, tenant=t.id)).data["alarms"]["edges"]
    assert alarms[0]["node"]["status"] == "CLEARED"

    # Subscribers hear it: the device's and the alarm's changes are in the tenant's log, in order.
    tx = tenant_transaction(platform.db.app, t.id)
    try:
        logged = (await tx.execute(text("SELECT kind, op, body->>'availability' AS a, body->>'status' AS s "
                                        "FROM changes WHERE kind IN ('device', 'alarm') ORDER BY position"))).all()
    finally:
        await tx.finish(commit=False)
    trail = [(r.kind, r.op, r.a or r.s) for r in logged]
    assert trail[-4:] == [("device", "UPDATED", "UNAVAILABLE"), ("alarm", "RAISED", "ACTIVE"),
                          ("device", "UPDATED", "AVAILABLE"), ("alarm", "STATUS_CHANGED", "CLEARED")]


async def test_intervals_are_checked_and_zero_stops_monitoring(api: Api, world: World, platform: Platform) -> None:
    t = await world.tenant()
    for bad in (5, -1, 400 * 24 * 3600):
        refused = await api.gql(DEVICE, {"n": "x", "i": bad}, token=t.token, tenant=t.id)
        assert refused.code == "INVALID_INPUT"
        assert refused.errors[0]["extensions"]["field"] == "requiredInterval"
    device, _ = await _device(api, t, 30)
    await _silent_for(platform, t.id, device, 31)
    await monitor.sweep(platform.db.app)
    assert (await _state(api, t, device))["availability"] == "UNAVAILABLE"
    stop = "mutation($d: ID!) { updateDevice(id: $d, input: {requiredInterval: 0}) { availability requiredInterval } }"
    assert (await api.gql(stop, {"d": device}, token=t.token, tenant=t.id)).data["updateDevice"] == \
        {"availability": "UNKNOWN", "requiredInterval": None}


async def test_availability_is_the_tenants_own(api: Api, world: World, platform: Platform) -> None:
    a, b = await world.tenant(), await world.tenant()
    device, _ = await _device(api, a, 30)
    theirs, _ = await _device(api, b, None)
    await _silent_for(platform, a.id, device, 31)
    await _silent_for(platform, b.id, theirs, 3600)
    await monitor.sweep(platform.db.app)
    assert (await _state(api, b, theirs))["availability"] == "UNKNOWN"  # not monitored: nothing to say
    assert (await api.gql(STATE, {"id": device}, token=b.token, tenant=b.id)).data["node"] is None
    change = "mutation($d: ID!) { updateDevice(id: $d, input: {requiredInterval: 60}) { id } }"
    assert (await api.gql(change, {"d": device}, token=b.token, tenant=b.id)).code == "NOT_FOUND"
    await assert_denied(platform, b.id, f"SELECT availability FROM {tenant_schema(a.id)}.devices")
