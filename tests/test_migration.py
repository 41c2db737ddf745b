"""migrateDevices: whole history, credentials following, pre-checks, authorisation, and back again."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api, TenantHandle, World, unique

MIGRATE = """mutation($d: [ID!]!, $t: ID!, $s: ID) { migrateDevices(deviceIds: $d, targetTenantId: $t,
  sourceTenantId: $s) { moved { sourceId targetId name } notMoved { deviceId reason }
  groupsLeftBehind { deviceId groupName } measurements events alarms operations } }"""


async def _pair(api: Api, world: World, parent: TenantHandle | None = None) -> tuple[TenantHandle, TenantHandle]:
    source = await world.tenant(parent)
    token, tenant = (parent.token, parent.id) if parent else (world.operator_token, "management")
    created = await api.create_subtenant(token, tenant, domain=unique("mig"), company="T",
                                         adminEmail=source.admin_email)
    return source, TenantHandle(created.data["createSubtenant"]["id"], "", source.admin_email, source.token)


async def _gateway(api: Api, t: TenantHandle, serial: str) -> dict[str, Any]:
    group = (await api.gql('mutation { createGroup(name: "fleet") { id } }', token=t.token,
                           tenant=t.id)).data["createGroup"]["id"]
    gateway = (await api.gql("mutation($s: String!, $g: ID!) { createDevice(input: {name: \"gw\", externalId: $s, "
                             "groupId: $g}) { id } }", {"s": serial, "g": group}, token=t.token,
                             tenant=t.id)).data["createDevice"]["id"]
    child = (await api.gql('mutation($p: ID!) { createDevice(input: {name: "child", parentId: $p}) { id } }',
                           {"p": gateway}, token=t.token, tenant=t.id)).data["createDevice"]["id"]
    for device in (gateway, child):
        await api.gql("""mutation($d: ID!) {
            createMeasurements(input: [{deviceId: $d, time: "2026-01-01T00:00:00Z", type: "c", series: "s", value: 1},
                                       {deviceId: $d, time: "2026-01-01T00:01:00Z", type: "c", series: "s", value: 2}])
            createEvent(input: {deviceId: $d, time: "2026-01-01T00:00:00Z", type: "e", text: "e"}) { id }
            raiseAlarm(input: {deviceId: $d, type: "a", severity: MAJOR, text: "a"}) { id }
            createOperation(input: {deviceId: $d, description: "reboot"}) { id } }""", {"d": device},
                      token=t.token, tenant=t.id)
    token = (await api.gql("mutation($d: ID!) { createDeviceToken(deviceId: $d) { token } }", {"d": gateway},
                           token=t.token, tenant=t.id)).data["createDeviceToken"]["token"]
    return {"gateway": gateway, "child": child, "token": token, "group": group}


async def _inventory(api: Api, t: TenantHandle) -> list[str]:
    result = await api.gql("{ devices { edges { node { name } } } }", token=t.token, tenant=t.id)
    return sorted(e["node"]["name"] for e in result.data["devices"]["edges"])


async def test_devices_move_with_their_history_and_come_back(api: Api, world: World) -> None:
    source, target = await _pair(api, world)
    gw = await _gateway(api, source, unique("SN"))
    moved = (await api.gql(MIGRATE, {"d": [gw["gateway"]], "t": target.id}, token=source.token,
                           tenant=source.id)).data["migrateDevices"]
    assert sorted(m["name"] for m in moved["moved"]) == ["child", "gw"]  # the child follows its gateway
    assert (moved["measurements"], moved["events"], moved["alarms"], moved["operations"]) == (4, 2, 2, 2)
    assert moved["groupsLeftBehind"] == [{"deviceId": gw["gateway"], "groupName": "fleet"}]
    assert moved["notMoved"] == []
    assert await _inventory(api, source) == []
    assert await _inventory(api, target) == ["child", "gw"]
    new_gateway = next(m["targetId"] for m in moved["moved"] if m["name"] == "gw")
    history = await api.gql("query($d: ID!) { measurements(deviceId: $d) { edges { node { value } } } "
                            "device(id: $d) { externalIds { value } children { name } } }", {"d": new_gateway},
                            token=target.token, tenant=target.id)
    assert len(history.data["measurements"]["edges"]) == 2
    assert history.data["device"]["children"] == [{"name": "child"}]
    # The device's credentials moved with it: its token now works in the target.
    sent = await api.gql('mutation($d: ID!) { createMeasurements(input: [{deviceId: $d, time: "2026-01-02T00:00:00Z",'
                         ' type: "c", series: "s", value: 3}]) }', {"d": new_gateway}, token=gw["token"])
    assert sent.data["createMeasurements"] == 1

    back = (await api.gql(MIGRATE, {"d": [new_gateway], "t": source.id}, token=source.token,
                          tenant=target.id)).data["migrateDevices"]
    assert back["measurements"] == 5
    restored = {m["name"]: m["targetId"] for m in back["moved"]}
    assert restored["gw"] == gw["gateway"]  # its original id, back in its original tenant
    assert await _inventory(api, target) == []
    again = await api.gql('mutation($d: ID!) { createMeasurements(input: [{deviceId: $d, time: "2026-01-03T00:00:00Z",'
                          ' type: "c", series: "s", value: 4}]) }', {"d": gw["gateway"]}, token=gw["token"])
    assert again.data["createMeasurements"] == 1


async def test_pre_checks_report_clashes_and_refuse_over_the_device_limit(api: Api, world: World) -> None:
    source, target = await _pair(api, world)
    serial = unique("SN")
    clashing = await _gateway(api, source, serial)
    free = (await api.gql('mutation { createDevice(input: {name: "free"}) { id } }', token=source.token,
                          tenant=source.id)).data["createDevice"]["id"]
    await api.gql("mutation($s: String!) { createDevice(input: {name: \"twin\", externalId: $s}) { id } }",
                  {"s": serial}, token=target.token, tenant=target.id)
    result = (await api.gql(MIGRATE, {"d": [clashing["gateway"], free], "t": target.id}, token=source.token,
                            tenant=source.id)).data["migrateDevices"]
    assert [m["name"] for m in result["moved"]] == ["free"]
    reasons = {n["deviceId"]: n["reason"] for n in result["notMoved"]}
    assert "taken in the target" in reasons[clashing["gateway"]]
    assert clashing["child"] in reasons  # stays with its gateway
    assert await _inventory(api, source) == ["child", "gw"]

    await api.gql("mutation($id: ID!) { updateTenant(id: $id, input: {limits: {maxDevices: 2}}) { id } }",
                  {"id": target.id}, token=world.operator_token, tenant="management")
    other = (await api.gql('mutation { createDevice(input: {name: "one-too-many"}) { id } }', token=source.token,
                           tenant=source.id)).data["createDevice"]["id"]
    over = await api.gql(MIGRATE, {"d": [other], "t": target.id}, token=source.token, tenant=source.id)
    assert over.code == "LIMIT_EXCEEDED"
    assert "one-too-many" in await _inventory(api, source)  # nothing moved


async def test_moving_devices_needs_data_access_on_both_sides_never_ancestry_alone(api: Api, world: World) -> None:
    """Regression (hole 3): an ADMIN of a common ancestor used to move a child's devices with
    their whole history — even into the ancestor itself, which then read them."""
    ent = await world.tenant(kind="ENTERPRISE")
    a, b = await world.tenant(ent), await world.tenant(ent)
    device = (await api.gql('mutation { createDevice(input: {name: "d"}) { id } }', token=a.token,
                            tenant=a.id)).data["createDevice"]["id"]
    assert (await api.gql(MIGRATE, {"d": [device], "t": b.id}, token=a.token, tenant=a.id)).code == "FORBIDDEN"
    # The enterprise's own ADMIN (TENANT scope): no way into either child's data, nor into itself.
    for target in (b.id, ent.id):
        refused = await api.gql(MIGRATE, {"d": [device], "t": target, "s": a.id}, token=ent.token, tenant=ent.id)
        assert refused.code == "FORBIDDEN", target
    assert await _inventory(api, a) == ["d"]
    # Parent-level (SUBTREE) access is data access only where each child's own admins allow it.
    support_id, support = await world.member(ent, "ADMIN")
    await api.gql("mutation($u: ID!) { setMemberScope(userId: $u, scope: SUBTREE) { scope } }", {"u": support_id},
                  token=ent.token, tenant=ent.id)
    assert (await api.gql(MIGRATE, {"d": [device], "t": b.id, "s": a.id}, token=support,
                          tenant=ent.id)).code == "FORBIDDEN"
    for child in (a, b):
        await api.gql("mutation { setParentAccess(policy: FULL) { parentAccess } }", token=child.token, tenant=child.id)
    by_parent = await api.gql(MIGRATE, {"d": [device], "t": b.id, "s": a.id}, token=support, tenant=ent.id)
    assert [m["name"] for m in by_parent.data["migrateDevices"]["moved"]] == ["d"]
    assert await _inventory(api, b) == ["d"]
    stranger = await world.tenant()
    assert (await api.gql(MIGRATE, {"d": [device], "t": stranger.id, "s": b.id}, token=support,
                          tenant=ent.id)).code == "FORBIDDEN"
