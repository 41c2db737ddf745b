"""Isolation, the product: through GraphQL and at the SQL level.

GraphQL: a tenant never lists, reads or changes another tenant's devices or registry
entry, siblings never see each other, and a parent never reads a child's data.
SQL: a tenant role cannot touch another tenant's schema, tenant roles cannot read the
management schema, and the application's login role reads no tenant table without
switching role; nothing set for one request leaks into the next use of a connection.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import create_async_engine

from app.access.acting import tenant_transaction
from app.db.engines import app_database_url, owner_database_url
from app.models.management import metadata as management_metadata
from app.models.tenant import devices
from app.runtime.platform import Platform
from app.settings import Settings
from tests.conftest import Api, TenantHandle, World, assert_denied

CREATE = "mutation($n: String!) { createDevice(input: {name: $n, type: \"sensor\"}) { id name } }"
LIST = "{ devices(first: 100) { totalCount edges { node { id name } } } }"


async def _device(api: Api, t: TenantHandle, name: str) -> str:
    return str((await api.gql(CREATE, {"n": name}, token=t.token, tenant=t.id)).data["createDevice"]["id"])


async def test_tenants_see_only_their_own_devices(api: Api, world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    a, b = await world.tenant(ent), await world.tenant(ent)
    a_dev = await _device(api, a, "a-thermostat")
    b_dev = await _device(api, b, "b-meter")

    a_list = await api.gql(LIST, token=a.token, tenant=a.id)
    assert [e["node"]["name"] for e in a_list.data["devices"]["edges"]] == ["a-thermostat"]
    assert a_list.data["devices"]["totalCount"] == 1
    # Ids are per tenant, so B's id may exist in A too: whatever A reads by it is A's own device.
    b_by_a = await api.gql(f'{{ device(id: "{b_dev}") {{ name }} }}', token=a.token, tenant=a.id)
    assert b_by_a.data["device"] in (None, {"name": "a-thermostat"})
    assert a_dev


async def test_a_token_cannot_be_routed_into_another_tenant(api: Api, world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    a, b = await world.tenant(ent), await world.tenant(ent)
    await _device(api, b, "secret")
    for query in (LIST, '{ device(id: "1") { name } }', "{ tenant { id } }"):
        result = await api.gql(query, token=a.token, tenant=b.id)
        assert result.code == "FORBIDDEN", query
    write = await api.gql(CREATE, {"n": "planted"}, token=a.token, tenant=b.id)
    assert write.code == "FORBIDDEN"
    b_list = await api.gql(LIST, token=b.token, tenant=b.id)
    assert [e["node"]["name"] for e in b_list.data["devices"]["edges"]] == ["secret"]


async def test_siblings_never_see_each_others_registry_entry(api: Api, world: World) -> None:
    e1, e2 = await world.tenant(kind="ENTERPRISE"), await world.tenant(kind="ENTERPRISE")
    c2 = await world.tenant(e2)
    for tenant_id in (e2.id, c2.id):
        read = await api.gql(f'{{ tenantById(id: "{tenant_id}") {{ id }} }}', token=e1.token, tenant=e1.id)
        assert read.data["tenantById"] is None
        update = await api.gql('mutation($id: ID!) { updateTenant(id: $id, input: {company: "pwned"}) { id } }',
                               {"id": tenant_id}, token=e1.token, tenant=e1.id)
        assert update.code == "NOT_FOUND"
        suspend = await api.gql("mutation($id: ID!) { suspendTenant(id: $id) { id } }", {"id": tenant_id},
                                token=e1.token, tenant=e1.id)
        assert suspend.code == "NOT_FOUND"
    listing = await api.gql("{ tenants { edges { node { id } } } }", token=e1.token, tenant=e1.id)
    assert listing.data["tenants"]["edges"] == []


async def test_a_parent_can_never_read_a_childs_devices(api: Api, world: World) -> None:
    ent = await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(ent)
    await _device(api, child, "child-only")
    for token, tenant in ((ent.token, child.id), (world.operator_token, child.id)):
        result = await api.gql(LIST, token=token, tenant=tenant)
        assert result.code == "FORBIDDEN"
    own = await api.gql(LIST, token=ent.token, tenant=ent.id)
    assert own.data["devices"]["edges"] == []


async def test_tenant_role_cannot_read_another_tenants_schema(world: World, platform: Platform) -> None:
    a, b = await world.tenant(), await world.tenant()
    await assert_denied(platform, a.id, f"SELECT * FROM t_{b.id}.devices")
    await assert_denied(platform, a.id, f"INSERT INTO t_{b.id}.devices (name) VALUES ('planted')")


async def test_tenant_role_cannot_read_the_management_schema(world: World, platform: Platform) -> None:
    """Every management table (all of the model's, so a new one is covered the day it is added:
    external identities, idempotency keys, tenant options and moves included), read or written."""
    a = await world.tenant()
    tables = sorted(t.name for t in management_metadata.tables.values())
    assert {"external_identities", "idempotency_keys", "tenant_options", "tenant_moves"} <= set(tables)
    for table in tables:
        await assert_denied(platform, a.id, f"SELECT * FROM tenantry.{table}")
        await assert_denied(platform, a.id, f"DELETE FROM tenantry.{table}")


async def test_app_role_reads_no_tenant_table_without_switching_role(world: World, platform: Platform) -> None:
    a = await world.tenant()
    async with platform.db.app.connect() as conn:
        with pytest.raises(ProgrammingError, match="permission denied"):
            await conn.execute(text(f"SELECT * FROM t_{a.id}.devices"))
    async with platform.db.app.connect() as conn:
        attrs = (await conn.execute(text(
            "SELECT rolinherit, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"))).one()
    assert tuple(attrs) == (False, False, False)


async def test_routing_settings_do_not_leak_into_the_next_checkout(world: World, settings: Settings) -> None:
    """With one pooled connection reused across tenants (and psycopg's prepared statements kicking
    in after 5 runs), each transaction sees only its own tenant and nothing outlives it."""
    a, b = await world.tenant(), await world.tenant()
    engine = create_async_engine(app_database_url(settings, owner_database_url(settings)), pool_size=1,
                                 max_overflow=0, isolation_level="AUTOCOMMIT")
    try:
        for tenant, name in ((a, "a-1"), (b, "b-1")):
            tx = tenant_transaction(engine, tenant.id)
            await tx.execute(devices.insert().values(name=name))
            await tx.finish(commit=True)
        for round_ in range(8):
            for tenant, name in ((a, "a-1"), (b, "b-1")):
                tx = tenant_transaction(engine, tenant.id)
                names = (await tx.execute(devices.select())).all()
                await tx.finish(commit=round_ % 2 == 0)
                assert [r.name for r in names] == [name]
            async with engine.connect() as conn:
                leftover = (await conn.execute(text(
                    "SELECT current_user, current_setting('search_path')"))).one()
            assert leftover[0] == settings.app_role
            assert "t_" not in leftover[1]
        # An error mid-transaction rolls back and releases cleanly too.
        tx = tenant_transaction(engine, a.id)
        with pytest.raises(ProgrammingError):
            await tx.execute(text("SELECT * FROM no_such_table"))
        await tx.finish(commit=False)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT current_user"))).scalar_one() == settings.app_role
    finally:
        await engine.dispose()


DATA_TABLES = ("measurements", "events", "alarms", "operations", "groups", "group_devices", "external_ids",
               "provenance", "shared_templates", "audit_log",
               "device_tokens", "roles", "retention_rules", "options")


@pytest.mark.parametrize("table", DATA_TABLES)
async def test_tenant_role_cannot_touch_another_tenants_data_tables(world: World, platform: Platform,
                                                                   table: str) -> None:
    a, b = await world.tenant(), await world.tenant()
    for statement in (f"SELECT * FROM t_{b.id}.{table}", f"DELETE FROM t_{b.id}.{table}"):
        await assert_denied(platform, a.id, statement)


async def test_another_tenants_data_ids_reach_nothing(api: Api, world: World) -> None:
    a, b = await world.tenant(), await world.tenant()
    dev = await _device(api, b, "b-device")
    made = await api.gql("""mutation($d: ID!) {
        raiseAlarm(input: {deviceId: $d, type: "x", severity: MAJOR, text: "b"}) { id }
        createEvent(input: {deviceId: $d, time: "2026-01-01T00:00:00Z", type: "e", text: "b"}) { id }
        createOperation(input: {deviceId: $d, description: "b"}) { id }
        createGroup(name: "b-group") { id }
        createMeasurements(input: [{deviceId: $d, time: "2026-01-01T00:00:00Z", type: "c", series: "s", value: 1}])
        }""", {"d": dev}, token=b.token, tenant=b.id)
    ids = {k: v["id"] for k, v in made.data.items() if isinstance(v, dict)}
    # A has no data at all, so none of B's ids can coincide with one of A's own.
    attempts = {
        "alarm": ("mutation($id: ID!) { updateAlarmStatus(id: $id, status: CLEARED) { id } }", ids["raiseAlarm"]),
        "event": ('mutation($id: ID!) { updateEvent(id: $id, input: {text: "pwned"}) { id } }', ids["createEvent"]),
        "operation": ("mutation($id: ID!) { updateOperationStatus(id: $id, status: EXECUTING) { id } }",
                      ids["createOperation"]),
        "group": ("mutation($id: ID!) { deleteGroup(id: $id) }", ids["createGroup"]),
        "device": ("mutation($id: ID!) { deleteDevice(id: $id) }", dev),
        "measurements": ("query($id: ID!) { measurements(deviceId: $id) { edges { node { id } } } }", dev),
        "token": ("mutation($id: ID!) { createDeviceToken(deviceId: $id) { token } }", dev),
    }
    for name, (query, target) in attempts.items():
        result = await api.gql(query, {"id": target}, token=a.token, tenant=a.id)
        assert result.code == "NOT_FOUND", name
    listed = await api.gql("{ alarms { edges { node { id } } } events { edges { node { id } } } "
                           "operations { edges { node { id } } } groups { edges { node { id } } } }",
                           token=a.token, tenant=a.id)
    assert all(conn["edges"] == [] for conn in listed.data.values())
    intact = await api.gql("""{ alarms { edges { node { status } } } events { edges { node { text } } }
                             operations { edges { node { status } } } groups { edges { node { name } } } }""",
                           token=b.token, tenant=b.id)
    assert intact.data == {"alarms": {"edges": [{"node": {"status": "ACTIVE"}}]},
                           "events": {"edges": [{"node": {"text": "b"}}]},
                           "operations": {"edges": [{"node": {"status": "PENDING"}}]},
                           "groups": {"edges": [{"node": {"name": "b-group"}}]}}
