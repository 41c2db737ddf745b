"""Access inside a tenant: permissions per resolver, custom roles, and group-scoped members."""

from __future__ import annotations

from sqlalchemy import text

from app.runtime.platform import Platform
from tests.conftest import Api, TenantHandle, World, nowhere


async def _setup(api: Api, t: TenantHandle) -> dict[str, str]:
    """Two top-level groups (one with a subgroup) and a device in each, plus one in no group."""
    ids: dict[str, str] = {}
    for name, parent in (("east", None), ("east-a", "east"), ("west", None)):
        result = await api.gql("mutation($n: String!, $p: ID) { createGroup(name: $n, parentId: $p) { id } }",
                               {"n": name, "p": ids.get(parent) if parent else None}, token=t.token, tenant=t.id)
        ids[name] = result.data["createGroup"]["id"]
    for name, group in (("d-east", "east"), ("d-east-a", "east-a"), ("d-west", "west"), ("d-none", None)):
        result = await api.gql("mutation($n: String!, $g: ID) { createDevice(input: {name: $n, groupId: $g}) { id } }",
                               {"n": name, "g": ids.get(group) if group else None}, token=t.token, tenant=t.id)
        ids[name] = result.data["createDevice"]["id"]
        await api.gql("""mutation($d: ID!) {
            createMeasurements(input: [{deviceId: $d, time: "2026-01-01T00:00:00Z", type: "c", series: "t", value: 2}])
            raiseAlarm(input: {deviceId: $d, type: "x", severity: MAJOR, text: "x"}) { id }
            createEvent(input: {deviceId: $d, time: "2026-01-01T00:00:00Z", type: "e", text: "e"}) { id }
            createOperation(input: {deviceId: $d, description: "op"}) { id } }""", {"d": ids[name]},
                      token=t.token, tenant=t.id)
    return ids


async def test_group_scoped_member_sees_and_changes_only_their_groups(api: Api, world: World) -> None:
    t = await world.tenant()
    ids = await _setup(api, t)
    _, token = await world.member(t, "MANAGER", group_ids=[ids["east"]])
    allowed = {ids["d-east"], ids["d-east-a"]}

    listed = await api.gql("{ devices { totalCount edges { node { id } } } }", token=token, tenant=t.id)
    assert listed.data["devices"]["totalCount"] == 2
    assert {e["node"]["id"] for e in listed.data["devices"]["edges"]} == allowed
    for name in ("d-west", "d-none"):
        hidden = ids[name]
        assert (await api.gql("query($d: ID!) { device(id: $d) { id } }", {"d": hidden}, token=token,
                              tenant=t.id)).data["device"] is None
        for query in ("query($d: ID!) { measurements(deviceId: $d) { edges { node { id } } } }",
                      'query($d: ID!) { measurementSeries(deviceId: $d, from: "2025-12-31T00:00:00Z", '
                      'to: "2026-01-02T00:00:00Z") { count } }'):
            assert (await api.gql(query, {"d": hidden}, token=token, tenant=t.id)).code == "NOT_FOUND", query
        for mutation in ('updateDevice(id: $d, input: {name: "x"}) { id }', "deleteDevice(id: $d)",
                         'raiseAlarm(input: {deviceId: $d, type: "y", severity: MINOR, text: "y"}) { id }',
                         'createOperation(input: {deviceId: $d, description: "x"}) { id }'):
            result = await api.gql(f"mutation($d: ID!) {{ {mutation} }}", {"d": hidden}, token=token, tenant=t.id)
            assert result.code == "NOT_FOUND", mutation
    for connection in ("alarms", "events", "operations"):
        result = await api.gql(f"{{ {connection} {{ edges {{ node {{ deviceId }} }} }} }}", token=token, tenant=t.id)
        assert {e["node"]["deviceId"] for e in result.data[connection]["edges"]} == allowed, connection
    series = await api.gql('query($d: ID!) { measurementSeries(deviceId: $d, from: "2025-12-31T00:00:00Z", '
                           'to: "2026-01-02T00:00:00Z", interval: DAY) { count } }', {"d": ids["d-east-a"]},
                           token=token, tenant=t.id)
    assert series.data["measurementSeries"] == [{"count": 1}]
    groups = await api.gql("{ groups { edges { node { name } } } }", token=token, tenant=t.id)
    assert sorted(e["node"]["name"] for e in groups.data["groups"]["edges"]) == ["east", "east-a"]
    assert (await api.gql("query($g: ID!) { group(id: $g) { id } }", {"g": ids["west"]}, token=token,
                          tenant=t.id)).data["group"] is None

    # New devices must go into one of their groups.
    outside = await api.gql('mutation { createDevice(input: {name: "stray"}) { id } }', token=token, tenant=t.id)
    assert outside.code == "FORBIDDEN"
    inside = await api.gql('mutation($g: ID!) { createDevice(input: {name: "ok", groupId: $g}) { id } }',
                           {"g": ids["east-a"]}, token=token, tenant=t.id)
    assert inside.data["createDevice"]["id"]
    wrong_group = await api.gql('mutation($g: ID!) { createDevice(input: {name: "no", groupId: $g}) { id } }',
                                {"g": ids["west"]}, token=token, tenant=t.id)
    assert wrong_group.code == "NOT_FOUND"


async def test_lifting_a_group_restriction_takes_effect(api: Api, world: World) -> None:
    t = await world.tenant()
    ids = await _setup(api, t)
    user_id, token = await world.member(t, "READER", group_ids=[ids["west"]])
    before = await api.gql("{ devices { totalCount } }", token=token, tenant=t.id)
    assert before.data["devices"]["totalCount"] == 1
    lifted = await api.gql("mutation($u: ID!) { setMemberGroups(userId: $u, groupIds: null) { groupIds } }",
                           {"u": user_id}, token=t.token, tenant=t.id)
    assert lifted.data["setMemberGroups"]["groupIds"] is None
    after = await api.gql("{ devices { totalCount } }", token=token, tenant=t.id)
    assert after.data["devices"]["totalCount"] == 4
    unknown_group = await api.gql('mutation($u: ID!, $g: ID!) { setMemberGroups(userId: $u, groupIds: [$g]) '
                                  "{ groupIds } }", {"u": user_id, "g": nowhere(t, "Group")}, token=t.token,
                                  tenant=t.id)
    assert unknown_group.code == "NOT_FOUND"


async def test_built_in_roles_map_to_permissions(api: Api, world: World) -> None:
    t = await world.tenant()
    ids = await _setup(api, t)
    _, reader = await world.member(t, "READER")
    _, operator = await world.member(t, "OPERATOR")
    write_device = 'mutation { createDevice(input: {name: "n"}) { id } }'
    measurement = ('mutation($d: ID!) { createMeasurements(input: [{deviceId: $d, time: "2026-01-01T00:00:00Z", '
                   'type: "c", series: "t", value: 1}]) }')
    raise_alarm = ('mutation($d: ID!) { raiseAlarm(input: {deviceId: $d, type: "z", severity: MINOR, text: "z"}) '
                   "{ id } }")
    d = {"d": ids["d-none"]}
    assert (await api.gql(write_device, token=reader, tenant=t.id)).code == "FORBIDDEN"
    assert (await api.gql(measurement, d, token=reader, tenant=t.id)).code == "FORBIDDEN"
    assert (await api.gql(raise_alarm, d, token=reader, tenant=t.id)).code == "FORBIDDEN"
    assert (await api.gql(write_device, token=operator, tenant=t.id)).code == "FORBIDDEN"
    assert (await api.gql(raise_alarm, d, token=operator, tenant=t.id)).data
    assert (await api.gql("{ roles { name } }", token=operator, tenant=t.id)).code == "FORBIDDEN"


async def test_custom_roles_grant_only_what_they_name_and_never_more_than_the_granter(
    api: Api, world: World, platform: Platform
) -> None:
    t = await world.tenant()
    ids = await _setup(api, t)
    roles = await api.gql("{ roles { name builtin permissions } }", token=t.token, tenant=t.id)
    names = {r["name"]: r for r in roles.data["roles"]}
    assert names["FIELD_TECH"]["builtin"] is False  # seeded from tenant_templates/standard.json
    assert names["ADMIN"]["builtin"] is True

    created = await api.gql('mutation { createRole(name: "INGEST", permissions: ["measurements:write", '
                            '"devices:read"]) { name permissions } }', token=t.token, tenant=t.id)
    assert created.data["createRole"] == {"name": "INGEST", "permissions": ["devices:read", "measurements:write"]}
    assert (await api.gql('mutation { createRole(name: "INGEST", permissions: []) { name } }', token=t.token,
                          tenant=t.id)).code == "CONFLICT"
    assert (await api.gql('mutation { createRole(name: "BAD", permissions: ["root:all"]) { name } }',
                          token=t.token, tenant=t.id)).code == "INVALID_INPUT"
    assert (await api.gql('mutation { createRole(name: "ADMIN", permissions: []) { name } }', token=t.token,
                          tenant=t.id)).code == "CONFLICT"

    _, ingest = await world.member(t, "INGEST")
    ok = await api.gql('mutation($d: ID!) { createMeasurements(input: [{deviceId: $d, time: "2026-01-01T00:00:00Z", '
                       'type: "c", series: "t", value: 1}]) }', {"d": ids["d-none"]}, token=ingest, tenant=t.id)
    assert ok.data["createMeasurements"] == 1
    denied = await api.gql('mutation { createDevice(input: {name: "x"}) { id } }', token=ingest, tenant=t.id)
    assert denied.code == "FORBIDDEN"

    # A MANAGER cannot mint roles at all; an admin-less role cannot grant tenant:admin.
    _, manager = await world.member(t, "MANAGER")
    assert (await api.gql('mutation { createRole(name: "SNEAKY", permissions: ["devices:read"]) { name } }',
                          token=manager, tenant=t.id)).code == "FORBIDDEN"
    in_use = await api.gql('mutation { deleteRole(name: "INGEST") }', token=t.token, tenant=t.id)
    assert in_use.code == "CONFLICT"
    async with platform.db.owner.connect() as conn:
        await conn.execute(text("DELETE FROM tenantry.memberships WHERE tenant_id = :t AND role = 'INGEST'"),
                           {"t": t.id})
    assert (await api.gql('mutation { deleteRole(name: "INGEST") }', token=t.token, tenant=t.id)).data


async def test_retention_rules_are_seeded_and_editable(api: Api, world: World) -> None:
    t = await world.tenant()
    rules = await api.gql("{ retentionRules { dataType maxAgeDays type } }", token=t.token, tenant=t.id)
    assert {"dataType": "MEASUREMENT", "maxAgeDays": 365, "type": None} in rules.data["retentionRules"]
    added = await api.gql('mutation { addRetentionRule(dataType: "EVENT", type: "debug", maxAgeDays: 7) { id } }',
                          token=t.token, tenant=t.id)
    rule_id = added.data["addRetentionRule"]["id"]
    for bad in ('dataType: "LOGS", maxAgeDays: 1', 'dataType: "EVENT", maxAgeDays: 0',
                'dataType: "OPERATION", type: "x", maxAgeDays: 3'):
        result = await api.gql(f"mutation {{ addRetentionRule({bad}) {{ id }} }}", token=t.token, tenant=t.id)
        assert result.code == "INVALID_INPUT", bad
    assert (await api.gql("mutation($id: ID!) { deleteRetentionRule(id: $id) }", {"id": rule_id}, token=t.token,
                          tenant=t.id)).data["deleteRetentionRule"] is True
