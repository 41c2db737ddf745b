"""Global ids: unique across tenants and types, resolved by node/nodes inside the routed tenant only."""

from __future__ import annotations

from app.ids import decode, encode, encoder
from tests.conftest import Api, TenantHandle, World

NODE = """query($i: ID!) { node(id: $i) { __typename id ... on Device { name } ... on Group { name }
          ... on Alarm { type } ... on Event { type } ... on Operation { description }
          ... on Measurement { value } } }"""


async def _objects(api: Api, t: TenantHandle) -> dict[str, str]:
    """One object of each kind, by type name → global id."""
    device = (await api.gql('mutation { createDevice(input: {name: "same-name"}) { id } }', token=t.token,
                            tenant=t.id)).data["createDevice"]["id"]
    group = (await api.gql('mutation { createGroup(name: "g") { id } }', token=t.token, tenant=t.id)).data[
        "createGroup"]["id"]
    alarm = (await api.gql('mutation($d: ID!) { raiseAlarm(input: {deviceId: $d, type: "a", severity: MAJOR, '
                           'text: "x"}) { id } }', {"d": device}, token=t.token, tenant=t.id)).data["raiseAlarm"]["id"]
    event = (await api.gql('mutation($d: ID!) { createEvent(input: {deviceId: $d, type: "e", text: "x", '
                           'time: "2026-01-01T00:00:00Z"}) { id } }', {"d": device}, token=t.token,
                           tenant=t.id)).data["createEvent"]["id"]
    operation = (await api.gql('mutation($d: ID!) { createOperation(input: {deviceId: $d, description: "o"}) '
                               '{ id } }', {"d": device}, token=t.token, tenant=t.id)).data["createOperation"]["id"]
    await api.gql('mutation($d: ID!) { createMeasurements(input: [{deviceId: $d, time: "2026-01-01T00:00:00Z", '
                  'type: "t", series: "s", value: 1.5}]) }', {"d": device}, token=t.token, tenant=t.id)
    listed = await api.gql('query($d: ID!) { measurements(deviceId: $d) { edges { node { id } } } }', {"d": device},
                           token=t.token, tenant=t.id)
    measurement = listed.data["measurements"]["edges"][0]["node"]["id"]
    return {"Device": device, "Group": group, "Alarm": alarm, "Event": event, "Operation": operation,
            "Measurement": measurement}


async def test_ids_are_unique_across_tenants_and_types(api: Api, world: World) -> None:
    a, b = await world.tenant(), await world.tenant()
    mine, theirs = await _objects(api, a), await _objects(api, b)
    # Both tenants number their rows from 1: the global ids still differ, and say type and tenant.
    assert decode(mine["Device"]) == ("Device", a.id, 1)
    assert decode(theirs["Device"]) == ("Device", b.id, 1)
    assert len({*mine.values(), *theirs.values()}) == 12
    assert mine["Device"] != encode("Group", a.id, 1)


async def test_node_resolves_every_kind_in_the_routed_tenant_and_nothing_of_another(api: Api, world: World) -> None:
    a, b = await world.tenant(), await world.tenant()
    mine, theirs = await _objects(api, a), await _objects(api, b)
    for type_name, global_id in mine.items():
        found = (await api.gql(NODE, {"i": global_id}, token=a.token, tenant=a.id)).data["node"]
        assert found["__typename"] == type_name
        assert found["id"] == global_id
        # B's object of the same kind and number: not found from A, by node nor by the typed queries.
        assert (await api.gql(NODE, {"i": theirs[type_name]}, token=a.token, tenant=a.id)).data["node"] is None
    assert (await api.gql("query($i: ID!) { device(id: $i) { id } }", {"i": theirs["Device"]}, token=a.token,
                          tenant=a.id)).data["device"] is None
    changed = await api.gql('mutation($i: ID!) { updateDevice(id: $i, input: {name: "hijacked"}) { id } }',
                            {"i": theirs["Device"]}, token=a.token, tenant=a.id)
    assert changed.code == "NOT_FOUND"
    assert (await api.gql(NODE, {"i": theirs["Device"]}, token=b.token, tenant=b.id)).data["node"]["name"] == \
        "same-name"
    listed = await api.gql("query($i: [ID!]!) { nodes(ids: $i) { __typename id } }",
                           {"i": [mine["Alarm"], theirs["Alarm"], mine["Device"]]}, token=a.token, tenant=a.id)
    assert listed.data["nodes"] == [{"__typename": "Alarm", "id": mine["Alarm"]}, None,
                                    {"__typename": "Device", "id": mine["Device"]}]
    too_many = await api.gql("query($i: [ID!]!) { nodes(ids: $i) { id } }", {"i": [mine["Device"]] * 101},
                             token=a.token, tenant=a.id)
    assert too_many.code == "INVALID_INPUT"
    garbage = await api.gql(NODE, {"i": "1"}, token=a.token, tenant=a.id)
    assert garbage.code == "INVALID_INPUT"


async def test_node_respects_group_scope(api: Api, world: World) -> None:
    t = await world.tenant()
    group = (await api.gql('mutation { createGroup(name: "g") { id } }', token=t.token, tenant=t.id)).data[
        "createGroup"]["id"]
    inside = (await api.gql('mutation($g: ID!) { createDevice(input: {name: "in", groupId: $g}) { id } }',
                            {"g": group}, token=t.token, tenant=t.id)).data["createDevice"]["id"]
    outside = (await api.gql('mutation { createDevice(input: {name: "out"}) { id } }', token=t.token,
                             tenant=t.id)).data["createDevice"]["id"]
    _, scoped = await world.member(t, "READER", [group])
    found = await api.gql("query($i: [ID!]!) { nodes(ids: $i) { id } }", {"i": [inside, outside]}, token=scoped,
                          tenant=t.id)
    assert found.data["nodes"] == [{"id": inside}, None]


def test_the_compiled_paths_encoder_writes_what_encode_writes() -> None:
    """app.ids.encoder (the compiled reads' per-page encoder) and encode agree for every prefix
    length (base64's three-byte groups), id size and padding, and keep None."""
    for type_name in ("Device", "Alarm", "Measurement", "Operation"):
        for tenant in ("management", "t1", "t12", "t123", "t438957372", "t4389573720"):
            encode_one = encoder(type_name, tenant)
            assert encode_one(None) is None
            for local in (1, 9, 10, 99, 100, 4095, 65536, 2**31 - 1, 2**53 + 1, 2**63 - 1):
                assert encode_one(local) == encode(type_name, tenant, local)
                assert decode(encode(type_name, tenant, local)) == (type_name, tenant, local)
