"""Inventory: groups that nest, devices in groups, child devices, external ids, update and delete."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import httpx
from starlette.applications import Starlette

from app import ids
from app.access.acting import tenant_transaction
from app.access.scope import UNRESTRICTED
from app.runtime.platform import Platform
from app.services.inventory import devices
from bench.common import generic_path
from tests.conftest import Api, TenantHandle, World, nowhere, unique

DEVICE = "mutation($i: CreateDeviceInput!) { createDevice(input: $i) { id name parentId } }"


async def _device(api: Api, t: TenantHandle, **fields: Any) -> str:
    result = await api.gql(DEVICE, {"i": {"name": unique("dev"), **fields}}, token=t.token, tenant=t.id)
    return str(result.data["createDevice"]["id"])


async def _group(api: Api, t: TenantHandle, name: str, parent: str | None = None) -> str:
    result = await api.gql("mutation($n: String!, $p: ID) { createGroup(name: $n, parentId: $p) { id } }",
                           {"n": name, "p": parent}, token=t.token, tenant=t.id)
    return str(result.data["createGroup"]["id"])


async def test_groups_nest_and_list_devices_with_or_without_subgroups(api: Api, world: World) -> None:
    t = await world.tenant()
    site = await _group(api, t, "site")
    floor = await _group(api, t, "floor", site)
    room = await _group(api, t, "room", floor)
    in_site = await _device(api, t, groupId=site)
    in_room = await _device(api, t, groupId=room)
    await _device(api, t)  # in no group

    query = """query($g: ID!, $s: Boolean!) { group(id: $g) { name subgroups { edges { node { name } } }
                 devices(includeSubgroups: $s) { totalCount edges { node { id } } } } }"""
    direct = (await api.gql(query, {"g": site, "s": False}, token=t.token, tenant=t.id)).data["group"]
    assert direct["subgroups"]["edges"] == [{"node": {"name": "floor"}}]
    assert [e["node"]["id"] for e in direct["devices"]["edges"]] == [in_site]
    deep = (await api.gql(query, {"g": site, "s": True}, token=t.token, tenant=t.id)).data["group"]
    assert deep["devices"]["totalCount"] == 2
    assert {e["node"]["id"] for e in deep["devices"]["edges"]} == {in_site, in_room}
    roots = await api.gql("{ groups { edges { node { name } } } }", token=t.token, tenant=t.id)
    assert roots.data["groups"]["edges"] == [{"node": {"name": "site"}}]
    filtered = await api.gql('query($g: ID!) { devices(filter: {groupId: $g, includeSubgroups: true}) { totalCount } }',
                             {"g": floor}, token=t.token, tenant=t.id)
    assert filtered.data["devices"]["totalCount"] == 1

    moved = await api.gql("mutation($g: ID!, $d: [ID!]!) { addDevicesToGroup(groupId: $g, deviceIds: $d) }",
                          {"g": room, "d": [in_site, in_room]}, token=t.token, tenant=t.id)
    assert moved.data["addDevicesToGroup"] == 1  # in_room was already there
    groups = await api.gql("query($d: ID!) { device(id: $d) { groups { name } } }", {"d": in_site},
                           token=t.token, tenant=t.id)
    assert sorted(g["name"] for g in groups.data["device"]["groups"]) == ["room", "site"]

    # Deleting a group removes its subgroups and memberships, never devices.
    assert (await api.gql("mutation($g: ID!) { deleteGroup(id: $g) }", {"g": floor}, token=t.token,
                          tenant=t.id)).data["deleteGroup"] is True
    assert (await api.gql("query($g: ID!) { group(id: $g) { id } }", {"g": room}, token=t.token,
                          tenant=t.id)).data["group"] is None
    count = await api.gql("{ devices { totalCount } }", token=t.token, tenant=t.id)
    assert count.data["devices"]["totalCount"] == 3


async def test_gateways_and_child_devices(api: Api, world: World) -> None:
    t = await world.tenant()
    gateway = await _device(api, t, type="gateway")
    child = await _device(api, t, parentId=gateway)
    result = await api.gql("query($d: ID!) { device(id: $d) { children { id parent { id } } } }", {"d": gateway},
                           token=t.token, tenant=t.id)
    assert result.data["device"]["children"] == [{"id": child, "parent": {"id": gateway}}]
    cycle = await api.gql("mutation($d: ID!, $p: ID!) { updateDevice(id: $d, input: {parentId: $p}) { id } }",
                          {"d": gateway, "p": child}, token=t.token, tenant=t.id)
    assert cycle.code == "INVALID_INPUT"
    missing_parent = await api.gql(DEVICE, {"i": {"name": "orphan", "parentId": nowhere(t)}}, token=t.token,
                                   tenant=t.id)
    assert missing_parent.code == "NOT_FOUND"


async def test_children_are_capped_oldest_first_per_gateway(api: Api, world: World, app: Starlette,
                                                            http: httpx.AsyncClient) -> None:
    """A gateway's `children` answered every child however many; now at most `first` (default
    100, at most 500) each, oldest first, batched for a page of gateways (one rank per parent) on the
    generic path and as a LIMIT on the compiled one; the rest are paged with devices(filter)."""
    t = await world.tenant()
    gateways = [await _device(api, t, type="gateway") for _ in range(2)]
    kids = {g: [await _device(api, t, parentId=g) for _ in range(3)] for g in gateways}
    query = "query($f: Int!) { devices(first: 10) { edges { node { id children(first: $f) { id } } } } }"
    headers = {"authorization": f"Bearer {t.token}", "x-tenant-id": t.id}
    for generic in (False, True):
        for first, expected in ((2, 2), (0, 0), (500, 3)):
            with generic_path(app) if generic else nullcontext():
                response = await http.post("/graphql", json={"query": query, "variables": {"f": first}},
                                           headers=headers)
            assert response.headers.get("tenantry-read-path") == (None if generic else "compiled")
            answered = {e["node"]["id"]: [c["id"] for c in e["node"]["children"]]
                        for e in response.json()["data"]["devices"]["edges"]}
            assert {g: answered[g] for g in gateways} == {g: kids[g][:expected] for g in gateways}, (generic, first)
    default = await api.gql("query($d: ID!) { device(id: $d) { children { id } } }", {"d": gateways[0]},
                            token=t.token, tenant=t.id)
    assert [c["id"] for c in default.data["device"]["children"]] == kids[gateways[0]]
    for bad in (501, -1):
        refused = await api.gql("query($d: ID!, $f: Int!) { device(id: $d) { children(first: $f) { id } } }",
                                {"d": gateways[0], "f": bad}, token=t.token, tenant=t.id)
        assert refused.code == "INVALID_INPUT"
        assert refused.errors[0]["extensions"]["cap"] == 500
    rest = await api.gql('query($p: ID!) { devices(first: 2, filter: {parentId: $p}) '
                         '{ totalCount } }', {"p": gateways[1]}, token=t.token, tenant=t.id)
    assert rest.data["devices"]["totalCount"] == 3


async def test_external_ids_resolve_to_devices(api: Api, world: World) -> None:
    t = await world.tenant()
    serial = unique("SN")
    device = await _device(api, t, externalId=serial)
    await api.gql('mutation($d: ID!) { addExternalId(deviceId: $d, type: "imei", value: "490154203237518") '
                  "{ type } }", {"d": device}, token=t.token, tenant=t.id)
    by_serial = await api.gql("query($v: String!) { deviceByExternalId(value: $v) { id externalIds { type value } } }",
                              {"v": serial}, token=t.token, tenant=t.id)
    assert by_serial.data["deviceByExternalId"]["id"] == device
    assert by_serial.data["deviceByExternalId"]["externalIds"] == [
        {"type": "imei", "value": "490154203237518"}, {"type": "serial", "value": serial}]
    by_imei = await api.gql('{ deviceByExternalId(type: "imei", value: "490154203237518") { id } }',
                            token=t.token, tenant=t.id)
    assert by_imei.data["deviceByExternalId"]["id"] == device
    unknown = await api.gql('{ deviceByExternalId(value: "nope") { id } }', token=t.token, tenant=t.id)
    assert unknown.data["deviceByExternalId"] is None


async def test_fragment_filters_and_updates(api: Api, world: World) -> None:
    t = await world.tenant()
    old = await _device(api, t, fragments={"firmware": {"version": "1.0"}, "battery": 80})
    new = await _device(api, t, fragments={"firmware": {"version": "2.0"}})
    query = "query($f: DeviceFilter) { devices(filter: $f) { edges { node { id } } } }"
    v2 = await api.gql(query, {"f": {"fragments": {"firmware": {"version": "2.0"}}}}, token=t.token, tenant=t.id)
    assert [e["node"]["id"] for e in v2.data["devices"]["edges"]] == [new]
    battery = await api.gql(query, {"f": {"hasFragment": "battery"}}, token=t.token, tenant=t.id)
    assert [e["node"]["id"] for e in battery.data["devices"]["edges"]] == [old]
    bad = await api.gql(query, {"f": {"fragments": [1]}}, token=t.token, tenant=t.id)
    assert bad.code == "INVALID_INPUT"

    updated = await api.gql('mutation($d: ID!) { updateDevice(id: $d, input: {name: "renamed", '
                            'fragments: {firmware: {version: "2.0"}}}) { name fragments } }', {"d": old},
                            token=t.token, tenant=t.id)
    assert updated.data["updateDevice"] == {"name": "renamed", "fragments": {"firmware": {"version": "2.0"}}}
    missing = await api.gql('mutation($i: ID!) { updateDevice(id: $i, input: {name: "x"}) { id } }',
                            {"i": nowhere(t)}, token=t.token,
                            tenant=t.id)
    assert missing.code == "NOT_FOUND"


async def test_deleting_a_device_deletes_its_children_and_data(api: Api, world: World) -> None:
    t = await world.tenant()
    gateway = await _device(api, t)
    child = await _device(api, t, parentId=gateway)
    for device in (gateway, child):
        await api.gql("""mutation($d: ID!) {
            createMeasurements(input: [{deviceId: $d, time: "2026-01-01T00:00:00Z", type: "t", series: "s", value: 1}])
            raiseAlarm(input: {deviceId: $d, type: "x", severity: MAJOR, text: "x"}) { id }
            createEvent(input: {deviceId: $d, time: "2026-01-01T00:00:00Z", type: "e", text: "e"}) { id }
            createOperation(input: {deviceId: $d, description: "reboot"}) { id } }""", {"d": device},
                      token=t.token, tenant=t.id)
    assert (await api.gql("mutation($d: ID!) { deleteDevice(id: $d) }", {"d": gateway}, token=t.token,
                          tenant=t.id)).data["deleteDevice"] is True
    left = await api.gql("""{ devices { totalCount } alarms { edges { node { id } } } events { edges { node { id } } }
                            operations { edges { node { id } } } }""", token=t.token, tenant=t.id)
    assert left.data == {"devices": {"totalCount": 0}, "alarms": {"edges": []}, "events": {"edges": []},
                         "operations": {"edges": []}}
    again = await api.gql("mutation($d: ID!) { deleteDevice(id: $d) }", {"d": gateway}, token=t.token, tenant=t.id)
    assert again.code == "NOT_FOUND"


# Characters that mean something to SQL, to SQLAlchemy's text() (a colon before a word) or to
# pyformat (%), in the name, the type and the fragments' keys and values.
HOSTILE_TEXT = ["O'Brien", "a\\'b", "\\", "''", "x:true", ":name", "%(name)s", "%%", "$$ $q$", "--", "/* */",
                "é 😀 ß", '"quoted"', "{}::jsonb"]


async def test_a_device_is_created_with_whatever_characters_it_is_given(api: Api, world: World,
                                                                        platform: Platform) -> None:
    """createDevice sends its values inlined in one SQL text (BEGIN in the same round trip): on the
    request path, and through SQLAlchemy on any other transaction. Both store exactly what they were
    given, and read back the same through GraphQL."""
    t = await world.tenant()
    read = "query($d: ID!) { device(id: $d) { name type fragments } }"
    for text_ in HOSTILE_TEXT:
        fragments = {text_: [text_, {"k": text_}], "n": 1.5, "t": True, "z": None}
        created = await api.gql("mutation($i: CreateDeviceInput!) { createDevice(input: $i) "
                                "{ id name type fragments } }",
                                {"i": {"name": f"n {text_}", "type": text_, "fragments": fragments}},
                                token=t.token, tenant=t.id)
        got = created.data["createDevice"]
        assert (got["name"], got["type"], got["fragments"]) == (f"n {text_}", text_, fragments)
        again = await api.gql(read, {"d": got["id"]}, token=t.token, tenant=t.id)
        assert again.data["device"] == {"name": f"n {text_}", "type": text_, "fragments": fragments}

        tx = tenant_transaction(platform.db.app, t.id)  # not a request's transaction: SQLAlchemy's text()
        try:
            record = await devices.create_device(tx, UNRESTRICTED, name=f"j {text_}", type=text_, owner=text_,
                                                 external_id=None, fragments=fragments)
        finally:
            await tx.finish(commit=True)
        assert (record.name, record.type, record.owner, record.fragments) == (f"j {text_}", text_, text_, fragments)
        assert record.created_at.tzinfo is not None
        stored = await api.gql(read, {"d": ids.encode("Device", t.id, record.id)}, token=t.token, tenant=t.id)
        assert stored.data["device"] == {"name": f"j {text_}", "type": text_, "fragments": fragments}
