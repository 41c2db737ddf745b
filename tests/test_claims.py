"""Bootstrap: a device with a factory identity asks to join with its claim code, an admin accepts (or a
preauthorised list does), and only then the device collects its credentials — once; the requests are the
tenant's own (through GraphQL and in SQL)."""

from __future__ import annotations

import asyncio
from typing import Any

from app.db.naming import tenant_schema
from app.runtime.platform import Platform
from tests.conftest import Api, TenantHandle, World, assert_denied

ASK = """mutation($e: String!, $c: String) { requestDeviceRegistration(input: {externalId: $e, claimCode: $c}) {
    id externalId status deviceId credentials { deviceId token } } }"""
ACCEPT = "mutation($id: ID!) { acceptDeviceRegistration(id: $id) { id status deviceId credentials { token } } }"
PREAUTHORIZE = "mutation($e: [String!]!) { preauthorizeDevices(externalIds: $e) }"
PENDING = """query($s: DeviceRequestStatus) { deviceRegistrationRequests(status: $s, first: 50) {
    edges { node { id externalId status } } } }"""
CODE = "factory-secret-0001-abcdef"


async def _ask(api: Api, tenant: str, external_id: str, code: str | None = CODE) -> Any:
    return await api.gql(ASK, {"e": external_id, "c": code}, tenant=tenant)  # no credentials at all


async def test_a_device_asks_an_admin_accepts_and_the_device_collects_its_credentials_once(
        api: Api, world: World) -> None:
    t = await world.tenant()
    asked = (await _ask(api, t.id, "SN-100")).data["requestDeviceRegistration"]
    assert (asked["status"], asked["deviceId"], asked["credentials"]) == ("PENDING", None, None)
    again = (await _ask(api, t.id, "SN-100")).data["requestDeviceRegistration"]  # polling: nothing changes
    assert (again["id"], again["status"], again["credentials"]) == (asked["id"], "PENDING", None)
    listed = (await api.gql(PENDING, {"s": "PENDING"}, token=t.token, tenant=t.id)).data
    assert [n["node"]["externalId"] for n in listed["deviceRegistrationRequests"]["edges"]] == ["SN-100"]

    accepted = (await api.gql(ACCEPT, {"id": asked["id"]}, token=t.token, tenant=t.id)).data
    assert accepted["acceptDeviceRegistration"]["status"] == "ACCEPTED"
    device = accepted["acceptDeviceRegistration"]["deviceId"]
    assert accepted["acceptDeviceRegistration"]["credentials"] is None  # never to the admin
    # The device exists, with its factory identity as external id.
    found = await api.gql('{ deviceByExternalId(value: "SN-100") { id name } }', token=t.token, tenant=t.id)
    assert found.data["deviceByExternalId"] == {"id": device, "name": "SN-100"}
    # Someone who learnt the external id but not the claim code gets nothing.
    thief = await _ask(api, t.id, "SN-100", "someone-elses-guess-0000")
    assert thief.code == "UNAUTHENTICATED"

    collected = (await _ask(api, t.id, "SN-100")).data["requestDeviceRegistration"]
    assert collected["status"] == "DELIVERED"
    assert collected["credentials"]["deviceId"] == device
    token = collected["credentials"]["token"]
    assert token.startswith(f"tdev_{t.id}_")
    later = (await _ask(api, t.id, "SN-100")).data["requestDeviceRegistration"]
    assert (later["status"], later["credentials"]) == ("DELIVERED", None)  # once
    # The token works as the device's, and only there.
    op = await api.gql('mutation($d: ID!) { createEvent(input: {deviceId: $d, time: "2026-01-01T00:00:00Z", '
                       'type: "boot", text: "joined"}) { id } }', {"d": device}, token=token, tenant=t.id)
    assert not op.errors, op.body
    assert op.data["createEvent"]["id"]
    # Accepting again does nothing twice.
    twice = (await api.gql(ACCEPT, {"id": asked["id"]}, token=t.token, tenant=t.id)).data
    assert twice["acceptDeviceRegistration"]["status"] == "DELIVERED"
    assert (await api.gql("{ devices { totalCount } }", token=t.token, tenant=t.id)).data["devices"]["totalCount"] == 1


async def test_preauthorised_devices_collect_their_credentials_on_their_first_request(api: Api, world: World) -> None:
    t = await world.tenant()
    early = (await _ask(api, t.id, "SN-2")).data["requestDeviceRegistration"]
    assert early["status"] == "PENDING"
    count = await api.gql(PREAUTHORIZE, {"e": ["SN-1", "SN-2", "SN-1", "SN-3"]}, token=t.token, tenant=t.id)
    assert count.data["preauthorizeDevices"] == 3  # SN-1 and SN-3 preauthorised, SN-2 accepted now
    assert (await api.gql(PREAUTHORIZE, {"e": ["SN-1"]}, token=t.token, tenant=t.id)).data["preauthorizeDevices"] == 0
    first = (await _ask(api, t.id, "SN-1")).data["requestDeviceRegistration"]
    assert first["status"] == "DELIVERED"
    assert first["credentials"]["token"].startswith("tdev_")
    assert (await _ask(api, t.id, "SN-1", "another-code-than-before")).code == "UNAUTHENTICATED"  # bound
    waited = (await _ask(api, t.id, "SN-2")).data["requestDeviceRegistration"]
    assert waited["status"] == "DELIVERED"
    assert waited["credentials"] is not None
    statuses = (await api.gql(PENDING, {"s": None}, token=t.token, tenant=t.id)).data
    assert {n["node"]["externalId"]: n["node"]["status"] for n in statuses["deviceRegistrationRequests"]["edges"]} \
        == {"SN-1": "DELIVERED", "SN-2": "DELIVERED", "SN-3": "PREAUTHORIZED"}
    preauth_id = next(n["node"]["id"] for n in statuses["deviceRegistrationRequests"]["edges"]
                      if n["node"]["externalId"] == "SN-3")
    assert (await api.gql(ACCEPT, {"id": preauth_id}, token=t.token, tenant=t.id)).code == "CONFLICT"


async def test_bad_claims_are_clear_errors_and_leave_nothing(api: Api, world: World) -> None:
    t = await world.tenant(limits={"maxDevices": 1})
    taken = await api.gql('mutation { createDevice(input: {name: "d", externalId: "SN-X"}) { id } }',
                          token=t.token, tenant=t.id)
    assert taken.data is not None
    for external_id, code, expected in [("SN-1", None, "INVALID_INPUT"), ("SN-1", "short", "INVALID_INPUT"),
                                        ("", CODE, "INVALID_INPUT"), ("x" * 201, CODE, "INVALID_INPUT"),
                                        ("a\x00b", CODE, "INVALID_INPUT"), ("SN-X", CODE, "CONFLICT")]:
        assert (await _ask(api, t.id, external_id, code)).code == expected, (external_id, code)
    assert (await _ask(api, "t000000001", "SN-1")).code == "NOT_FOUND"
    assert (await api.gql(ASK, {"e": "SN-1", "c": CODE})).code == "INVALID_INPUT"  # no tenant named
    assert (await api.gql(ASK, {"e": "SN-1", "c": CODE}, tenant="management")).code == "INVALID_INPUT"
    assert (await api.gql(PENDING, {"s": None}, token=t.token, tenant=t.id)).data[
        "deviceRegistrationRequests"]["edges"] == []
    # Over maxDevices, accepting is LIMIT_EXCEEDED and the request stays PENDING.
    asked = (await _ask(api, t.id, "SN-1")).data["requestDeviceRegistration"]
    refused = await api.gql(ACCEPT, {"id": asked["id"]}, token=t.token, tenant=t.id)
    assert refused.code == "LIMIT_EXCEEDED"
    assert (await _ask(api, t.id, "SN-1")).data["requestDeviceRegistration"]["status"] == "PENDING"
    assert (await api.gql(ACCEPT, {"id": "bogus-id-1234"}, token=t.token, tenant=t.id)).code == "INVALID_INPUT"


async def test_concurrent_first_requests_bind_one_claim_code(api: Api, world: World) -> None:
    t = await world.tenant()
    answers = await asyncio.gather(*(_ask(api, t.id, "SN-RACE", f"{CODE}-{i}") for i in range(6)))
    codes = sorted(a.code if a.errors else "ok" for a in answers)
    assert codes == ["UNAUTHENTICATED"] * 5 + ["ok"], codes


async def _readers_and_other_tenants(api: Api, world: World, t: TenantHandle, request_id: str) -> None:
    _, reader = await world.member(t, "READER")
    assert (await api.gql(ACCEPT, {"id": request_id}, token=reader, tenant=t.id)).code == "FORBIDDEN"
    assert (await api.gql(PREAUTHORIZE, {"e": ["SN-9"]}, token=reader, tenant=t.id)).code == "FORBIDDEN"


async def test_requests_are_the_tenants_own(api: Api, world: World, platform: Platform) -> None:
    a, b = await world.tenant(), await world.tenant()
    asked = (await _ask(api, a.id, "SN-A")).data["requestDeviceRegistration"]
    await _readers_and_other_tenants(api, world, a, asked["id"])
    # b's admin can neither see nor accept a's request, nor collect a's device by asking in b.
    assert (await api.gql(PENDING, {"s": None}, token=b.token, tenant=b.id)).data[
        "deviceRegistrationRequests"]["edges"] == []
    assert (await api.gql(ACCEPT, {"id": asked["id"]}, token=b.token, tenant=b.id)).code == "NOT_FOUND"
    assert (await api.gql(ACCEPT, {"id": asked["id"]}, token=b.token, tenant=a.id)).code in ("FORBIDDEN", "NOT_FOUND")
    in_b = (await _ask(api, b.id, "SN-A")).data["requestDeviceRegistration"]
    assert in_b["status"] == "PENDING"
    assert in_b["id"] != asked["id"]
    # A device token cannot accept anything either.
    await api.gql(PREAUTHORIZE, {"e": ["SN-D"]}, token=b.token, tenant=b.id)
    device_token = (await _ask(api, b.id, "SN-D")).data["requestDeviceRegistration"]["credentials"]["token"]
    assert (await api.gql(ACCEPT, {"id": in_b["id"]}, token=device_token, tenant=b.id)).code == "FORBIDDEN"
    for sql in (f"SELECT * FROM {tenant_schema(a.id)}.device_requests",
                f"UPDATE {tenant_schema(a.id)}.device_requests SET status = 'ACCEPTED'",
                f"INSERT INTO {tenant_schema(a.id)}.device_requests (external_id, status) VALUES ('x', 'PENDING')"):
        await assert_denied(platform, b.id, sql)


async def test_a_suspended_tenant_takes_no_requests(api: Api, world: World) -> None:
    t = await world.tenant()
    suspended = await api.gql("mutation($id: ID!) { suspendTenant(id: $id) { status } }", {"id": t.id},
                              token=world.operator_token, tenant="management")
    assert suspended.data["suspendTenant"]["status"] == "SUSPENDED"
    assert (await _ask(api, t.id, "SN-1")).code == "TENANT_SUSPENDED"
