"""Devices in the routed tenant: create, read, list with keyset pagination, bad input, roles."""

from __future__ import annotations

from sqlalchemy import text

from app.runtime.platform import Platform
from tests.conftest import PASSWORD, Api, World, unique

CREATE = """mutation($i: CreateDeviceInput!) { createDevice(input: $i) {
              id name type owner fragments createdAt } }"""


async def test_create_read_and_page_through_devices(api: Api, world: World) -> None:
    t = await world.tenant()
    ids = []
    for i in range(7):
        kind = "meter" if i % 2 else "sensor"
        created = await api.gql(CREATE, {"i": {"name": f"dev-{i}", "type": kind, "fragments": {"fw": i}}},
                                token=t.token, tenant=t.id)
        ids.append(created.data["createDevice"]["id"])
    one = await api.gql('query($id: ID!) { device(id: $id) { name fragments } }', {"id": ids[3]},
                        token=t.token, tenant=t.id)
    assert one.data["device"] == {"name": "dev-3", "fragments": {"fw": 3}}

    seen, after = [], None
    while True:
        page = await api.gql("query($a: String) { devices(first: 3, after: $a) { totalCount edges { node { id } } "
                             "pageInfo { hasNextPage endCursor } } }", {"a": after}, token=t.token, tenant=t.id)
        conn = page.data["devices"]
        assert conn["totalCount"] == 7
        seen += [e["node"]["id"] for e in conn["edges"]]
        if not conn["pageInfo"]["hasNextPage"]:
            break
        after = conn["pageInfo"]["endCursor"]
    assert seen == ids

    meters = await api.gql('{ devices(filter: {type: "meter"}) { totalCount edges { node { name } } } }',
                           token=t.token, tenant=t.id)
    assert meters.data["devices"]["totalCount"] == 3
    named = await api.gql('{ devices(filter: {nameContains: "V-5"}) { edges { node { name } } } }',
                          token=t.token, tenant=t.id)
    assert named.data["devices"]["edges"] == [{"node": {"name": "dev-5"}}]
    wildcard = await api.gql('{ devices(filter: {nameContains: "%"}) { edges { node { name } } } }',
                             token=t.token, tenant=t.id)
    assert wildcard.data["devices"]["edges"] == []


async def test_bad_device_input_is_refused_and_nothing_is_saved(api: Api, world: World) -> None:
    t = await world.tenant()
    cases = [
        {"name": ""},
        {"name": "x" * 201},
        {"name": "ok", "fragments": [1, 2]},
        {"name": "ok", "externalId": ""},
    ]
    for bad in cases:
        assert (await api.gql(CREATE, {"i": bad}, token=t.token, tenant=t.id)).code == "INVALID_INPUT", bad
    serial = unique("sn")
    assert (await api.gql(CREATE, {"i": {"name": "first", "externalId": serial}}, token=t.token,
                          tenant=t.id)).data
    clash = await api.gql(CREATE, {"i": {"name": "second", "externalId": serial}}, token=t.token, tenant=t.id)
    assert clash.code == "CONFLICT"
    listed = await api.gql("{ devices { totalCount } }", token=t.token, tenant=t.id)
    assert listed.data["devices"]["totalCount"] == 1  # the clashing device was rolled back with its id

    too_many = await api.gql("{ devices(first: 501) { totalCount } }", token=t.token, tenant=t.id)
    assert too_many.code == "INVALID_INPUT"
    assert too_many.errors[0]["extensions"]["cap"] == 500
    bad_cursor = await api.gql('{ devices(after: "!!!") { totalCount } }', token=t.token, tenant=t.id)
    assert bad_cursor.code == "INVALID_INPUT"
    for weird in ("abc", "-1", "99999999999999999999999"):
        missing = await api.gql('query($id: ID!) { device(id: $id) { id } }', {"id": weird}, token=t.token,
                                tenant=t.id)
        assert missing.code == "INVALID_INPUT"


async def test_a_failed_write_in_a_multi_mutation_request_saves_nothing(api: Api, world: World) -> None:
    t = await world.tenant()
    serial = unique("sn")
    result = await api.gql(f"""mutation {{
        a: createDevice(input: {{name: "kept?", externalId: "{serial}"}}) {{ id }}
        b: createDevice(input: {{name: "clash", externalId: "{serial}"}}) {{ id }} }}""", token=t.token, tenant=t.id)
    assert result.body["data"] is None
    assert result.code == "CONFLICT"
    listed = await api.gql("{ devices { totalCount } }", token=t.token, tenant=t.id)
    assert listed.data["devices"]["totalCount"] == 0


async def test_readers_read_but_do_not_write(api: Api, world: World, platform: Platform) -> None:
    t = await world.tenant()
    email = f"{unique('reader')}@x.test"
    async with platform.db.owner.connect() as conn:
        await conn.execute(text("INSERT INTO tenantry.users (email, password_hash) VALUES (:e, :h)"),
                           {"e": email, "h": await platform.passwords.hash(PASSWORD)})
        await conn.execute(text("INSERT INTO tenantry.memberships (user_id, tenant_id, role) "
                                "SELECT id, :t, 'READER' FROM tenantry.users WHERE email = :e"),
                           {"t": t.id, "e": email})
    reader = await api.token(email, PASSWORD, t.id)
    assert (await api.gql("{ devices { totalCount } }", token=reader, tenant=t.id)).data
    denied = await api.gql(CREATE, {"i": {"name": "nope"}}, token=reader, tenant=t.id)
    assert denied.code == "FORBIDDEN"
    assert denied.errors[0]["extensions"]["permission"] == "devices:write"


async def test_audit_rows_are_written_with_the_commit_and_stay_in_their_tenant(api: Api, world: World,
                                                                               platform: Platform) -> None:
    """A request's data-plane audit rows travel with its COMMIT (app.db.notify.audit_sql): each
    mutation's row is there, in order, with actor, changes and request id; an operation that fails
    after auditing keeps none; another tenant sees none of them."""
    t, other = await world.tenant(), await world.tenant()
    made = await api.gql('mutation { a: createDevice(input: {name: "first"}) { id } '
                         'b: createDevice(input: {name: "it\'s \\"second\\""}) { id } }', token=t.token, tenant=t.id)
    assert not made.errors
    failed = await api.gql('mutation { a: createDevice(input: {name: "kept?"}) { id } '
                           'b: createDevice(input: {name: "x", parentId: "RGV2aWNlOnQxOjk5OTk5"}) { id } }',
                           token=t.token, tenant=t.id)
    assert failed.errors
    log = await api.gql('{ auditLog(first: 10, filter: {plane: DATA, action: "device."}) { edges { node { action '
                        'actorType target changes requestId } } } }', token=t.token, tenant=t.id)
    nodes = [e["node"] for e in log.data["auditLog"]["edges"]]
    assert [n["changes"][0]["new"] for n in nodes] == ['it\'s "second"', "first"]  # newest first
    assert {n["actorType"] for n in nodes} == {"user"}
    assert nodes[0]["requestId"] is not None
    assert nodes[0]["requestId"] == nodes[1]["requestId"]  # one request, one id
    assert [n["target"] for n in nodes] == ["2", "1"]  # the devices' numbers in this tenant
    elsewhere = await api.gql('{ auditLog(filter: {plane: DATA}) { edges { node { action } } } }',
                              token=other.token, tenant=other.id)
    assert "device.created" not in {e["node"]["action"] for e in elsewhere.data["auditLog"]["edges"]}
    async with platform.db.owner.connect() as conn:
        rows = (await conn.execute(text(f"SELECT action, changes->0->>'new' FROM t_{t.id}.audit_log "
                                        "WHERE action = 'device.created' ORDER BY id"))).all()
        assert [tuple(r) for r in rows] == [("device.created", "first"), ("device.created", 'it\'s "second"')]
        foreign = (await conn.execute(text(f"SELECT count(*) FROM t_{other.id}.audit_log "
                                           "WHERE action = 'device.created'"))).scalar_one()
        assert foreign == 0
