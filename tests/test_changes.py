"""The durable change log: positions gap-free in commit order under overlapping transactions,
subscriptions resumed `after:` a position, the `changes` query and named consumers, each tenant's
log out of every other's reach (GraphQL and SQL), retention and its floor."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.access.acting import tenant_switch
from app.db.naming import tenant_role, tenant_schema
from app.db.notify import append_sql
from app.runtime.platform import Platform
from app.services.data import retention
from tests.conftest import Api, TenantHandle, World
from tests.test_realtime import RAISE, Raw, _device, _listening

CHANGES = """query($after: ChangePosition, $first: Int, $types: [ChangeType!]) {
  changes(after: $after, first: $first, types: $types) {
    edges { cursor node { position type op data } } pageInfo { hasNextPage endCursor } } }"""


async def _raise(api: Api, tenant: TenantHandle, device: str, n: int, prefix: str = "a") -> None:
    for i in range(n):
        await api.gql(RAISE, {"d": device, "t": f"{prefix}{i}"}, token=tenant.token, tenant=tenant.id)


async def _changes(api: Api, tenant: TenantHandle, **variables: Any) -> Any:
    result = await api.gql(CHANGES, variables, token=tenant.token, tenant=tenant.id)
    return result


async def _append_unhindered(engine: AsyncEngine, other: TenantHandle, entry: str) -> None:
    """Another tenant's writers append and commit, in both of append_sql's forms, while a writer
    of the first tenant holds its queue and head: each tenant's log queues apart. Any wait for a
    lock over 5 s fails (lock_timeout) instead of hanging the test."""
    head = f"SELECT last FROM {tenant_schema(other.id)}.change_head"
    async with engine.connect() as conn:
        before = (await conn.exec_driver_sql(head)).scalar_one()
        await conn.exec_driver_sql("BEGIN")
        await conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
        await conn.exec_driver_sql(tenant_switch(other.id))
        for statement in append_sql(other.id, [entry]):
            await conn.exec_driver_sql(statement)
        await conn.exec_driver_sql("COMMIT")
        await conn.exec_driver_sql("BEGIN")
        await conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
        for statement in append_sql(other.id, [entry], bound=True):
            await conn.execute(text(statement), {"entries": f"[{entry}]"})
        await conn.exec_driver_sql("COMMIT")
        assert (await conn.exec_driver_sql(head)).scalar_one() == before + 2


async def test_positions_are_gap_free_in_commit_order_under_overlapping_transactions(platform: Platform,
                                                                                      world: World) -> None:
    """A serial is not enough: a transaction that drew 10 may commit after 11 is read. The head's
    row lock makes the second writer wait until the first is visible; and a reader polling while
    eight writers append never sees a position before all the ones below it."""
    tenant = await world.tenant()
    schema, entry = tenant_schema(tenant.id), '{"k":"event","o":"created","d":null,"b":{}}'
    engine = platform.db.owner
    switch = tenant_switch(tenant.id)  # as the request's COMMIT does: the statements name tables through search_path
    async with engine.connect() as first, engine.connect() as second:
        await first.exec_driver_sql("BEGIN")
        await first.exec_driver_sql(switch)
        for statement in append_sql(tenant.id, [entry]):
            await first.exec_driver_sql(statement)
        await _append_unhindered(engine, await world.tenant(), entry)  # the queue is the tenant's own
        await second.exec_driver_sql("BEGIN")
        await second.exec_driver_sql(switch)
        queue, *rest = append_sql(tenant.id, [entry, entry])
        blocked = asyncio.ensure_future(second.exec_driver_sql(queue))
        await asyncio.sleep(0.3)
        assert not blocked.done()  # queued behind the first writer until its COMMIT
        await first.exec_driver_sql("COMMIT")
        await asyncio.wait_for(blocked, 5)
        for statement in rest:
            await second.exec_driver_sql(statement)
        await second.exec_driver_sql("COMMIT")
    async with engine.connect() as conn:
        rows = (await conn.exec_driver_sql(f"SELECT position FROM {schema}.changes ORDER BY position")).all()
    assert [r[0] for r in rows] == [1, 2, 3]

    seen: list[int] = []
    done = asyncio.Event()

    async def writer() -> None:
        async with engine.connect() as conn:
            for _ in range(40):
                await conn.exec_driver_sql("BEGIN")
                await conn.exec_driver_sql(switch)
                for statement in append_sql(tenant.id, [entry] * random.randint(1, 3)):
                    await conn.exec_driver_sql(statement)
                await asyncio.sleep(random.random() / 500)
                await conn.exec_driver_sql("COMMIT")

    async def reader() -> None:
        last = 3
        async with engine.connect() as conn:
            while not done.is_set() or last < (await conn.exec_driver_sql(
                    f"SELECT last FROM {schema}.change_head")).scalar_one():
                rows = (await conn.exec_driver_sql(
                    f"SELECT position FROM {schema}.changes WHERE position > {last} ORDER BY position")).all()
                got = [r[0] for r in rows]
                assert got == list(range(last + 1, last + 1 + len(got))), f"a gap after {last}: {got[:5]}"
                seen.extend(got)
                last = got[-1] if got else last
                await asyncio.sleep(0)

    reading = asyncio.ensure_future(reader())
    await asyncio.gather(*(writer() for _ in range(8)))
    done.set()
    await asyncio.wait_for(reading, 30)
    async with engine.connect() as conn:
        last = (await conn.exec_driver_sql(f"SELECT last FROM {schema}.change_head")).scalar_one()
    assert seen == list(range(4, last + 1))
    assert last > 3 + 8 * 40


async def test_a_resumed_subscription_gets_every_change_since_in_order_then_live(server: str, api: Api, world: World,
                                                                                hub: Any) -> None:
    tenant = await world.tenant()
    device = await _device(api, tenant)
    await _raise(api, tenant, device, 5)
    log = (await _changes(api, tenant, types=["ALARM"])).data["changes"]["edges"]
    resume_from = log[1]["cursor"]  # the client saw a0 and a1
    query = "subscription($after: ChangePosition) { alarms(after: $after) { position alarm { type } } }"
    async with Raw.connect(server, {"Authorization": f"Bearer {tenant.token}", "X-Tenant-ID": tenant.id}) as raw:
        assert (await raw.receive())["type"] == "connection_ack"
        before = hub.subscription_count
        await raw.send({"id": "1", "type": "subscribe",
                        "payload": {"query": query, "variables": {"after": resume_from}}})
        await _listening(hub, before + 1)
        await _raise(api, tenant, device, 2, prefix="live")
        events = [(await raw.receive())["payload"]["data"]["alarms"] for _ in range(5)]
        with pytest.raises(TimeoutError):
            await raw.receive(0.5)  # and nothing twice
    assert [e["alarm"]["type"] for e in events] == ["a2", "a3", "a4", "live0", "live1"]
    numbers = [int(e["position"].rsplit(":", 1)[1]) for e in events]
    assert numbers == sorted(numbers)
    assert numbers[:3] == [int(c["cursor"].rsplit(":", 1)[1]) for c in log[2:]]


@pytest.mark.parametrize(("position", "says"), [
    ("nonsense", "not a change position"), ("t000000001:1", "another tenant"), ("{tenant}:999999", "ahead"),
    ("{tenant}:-1", "not a change position")])
async def test_malformed_foreign_and_future_positions_are_invalid_input(server: str, api: Api, world: World,
                                                                       position: str, says: str) -> None:
    tenant = await world.tenant()
    after = position.format(tenant=tenant.id)
    result = await _changes(api, tenant, after=after)
    assert result.errors[0]["extensions"]["code"] == "INVALID_INPUT"
    assert says in result.errors[0]["message"]
    query = "subscription($after: ChangePosition) { devices(after: $after) { position } }"
    async with Raw.connect(server, {"Authorization": f"Bearer {tenant.token}", "X-Tenant-ID": tenant.id}) as raw:
        assert (await raw.receive())["type"] == "connection_ack"
        await raw.send({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": {"after": after}}})
        refused = await raw.receive()
    assert refused["type"] == "error"
    assert refused["payload"][0]["extensions"]["code"] == "INVALID_INPUT"


async def test_retention_moves_the_floor_and_an_older_position_names_the_oldest(api: Api, world: World,
                                                                               platform: Platform) -> None:
    tenant = await world.tenant()
    device = await _device(api, tenant)
    await _raise(api, tenant, device, 4)
    edges = (await _changes(api, tenant)).data["changes"]["edges"]
    async with platform.db.owner.begin() as conn:  # the first three are old now
        await conn.execute(text(f"UPDATE {tenant_schema(tenant.id)}.changes SET logged_at = now() - interval '8 days' "
                                "WHERE position <= 3"))
    deleted = await retention.apply_to_tenant(platform.db.app, tenant.id, now=datetime.now(UTC))
    assert deleted["CHANGE"] == 3
    result = await _changes(api, tenant, after=edges[0]["cursor"])
    assert result.errors[0]["extensions"]["code"] == "INVALID_INPUT"
    assert result.errors[0]["extensions"]["oldestPosition"] == edges[3]["cursor"]
    kept = (await _changes(api, tenant)).data["changes"]["edges"]
    assert [e["cursor"] for e in kept] == [e["cursor"] for e in edges[3:]]
    assert (await _changes(api, tenant, after=edges[2]["cursor"])).data["changes"]["edges"] == kept
    later = await retention.apply_to_tenant(platform.db.app, tenant.id, now=datetime.now(UTC) + timedelta(days=1))
    assert later["CHANGE"] == 0  # a week is kept by default


async def test_changes_pages_by_cursor_and_filters_by_type(api: Api, world: World) -> None:
    tenant = await world.tenant()
    device = await _device(api, tenant)
    await _raise(api, tenant, device, 3)
    await api.gql('mutation($d: ID!) { createEvent(input: {deviceId: $d, type: "e", text: "t", '
                  'time: "2026-01-01T00:00:00Z"}) { id } }', {"d": device}, token=tenant.token, tenant=tenant.id)
    page = (await _changes(api, tenant, first=2)).data["changes"]
    assert [e["node"]["type"] for e in page["edges"]] == ["DEVICE", "ALARM"]
    assert page["pageInfo"]["hasNextPage"]
    rest = (await _changes(api, tenant, after=page["pageInfo"]["endCursor"])).data["changes"]
    assert [e["node"]["type"] for e in rest["edges"]] == ["ALARM", "ALARM", "EVENT"]
    assert not rest["pageInfo"]["hasNextPage"]
    assert rest["edges"][0]["node"]["data"]["deviceId"] == device
    events = (await _changes(api, tenant, types=["EVENT"])).data["changes"]["edges"]
    assert [e["node"]["op"] for e in events] == ["created"]


async def test_another_tenant_cannot_read_a_tenants_log_through_graphql_or_sql(api: Api, world: World,
                                                                              platform: Platform) -> None:
    a, b = await world.tenant(), await world.tenant()
    await _raise(api, a, await _device(api, a), 2)
    a_log = (await _changes(api, a)).data["changes"]["edges"]
    assert (await _changes(api, b)).data["changes"]["edges"] == []
    foreign = await _changes(api, b, after=a_log[0]["cursor"])
    assert foreign.errors[0]["extensions"]["code"] == "INVALID_INPUT"
    asked_as_a = await api.gql(CHANGES, {}, token=b.token, tenant=a.id)  # b's admin routed into a
    assert asked_as_a.errors[0]["extensions"]["code"] in {"FORBIDDEN", "NOT_FOUND"}
    async with platform.db.owner.connect() as conn:
        await conn.exec_driver_sql("BEGIN")
        await conn.exec_driver_sql(f"SET LOCAL ROLE {tenant_role(b.id)}")
        for sql in (f"SELECT * FROM {tenant_schema(a.id)}.changes",
                    f"UPDATE {tenant_schema(a.id)}.change_head SET last = last + 1",
                    f"SELECT * FROM {tenant_schema(a.id)}.event_consumers",
                    "SELECT * FROM tenantry.webhooks", "SELECT * FROM tenantry.webhook_deliveries",
                    "SELECT * FROM tenantry.shares"):
            await conn.exec_driver_sql("SAVEPOINT s")
            with pytest.raises(DBAPIError, match="permission denied"):
                await conn.exec_driver_sql(sql)
            await conn.exec_driver_sql("ROLLBACK TO SAVEPOINT s")
        await conn.exec_driver_sql("ROLLBACK")


async def test_a_reader_sees_only_the_types_its_rights_cover(api: Api, world: World) -> None:
    parent = await world.tenant(kind="ENTERPRISE")
    child = await world.tenant(parent)
    tenants = (await _changes(api, parent, types=["TENANT"])).data["changes"]["edges"]
    assert [e["node"]["data"]["id"] for e in tenants][-1] == child.id  # its subtree's lifecycle
    _, parent_level = await world.subtree_admin(parent)
    refused = await api.gql(CHANGES, {"types": ["ALARM"]}, token=parent_level, tenant=child.id)
    assert refused.errors[0]["extensions"]["code"] == "FORBIDDEN"  # no data access (parentAccess)


CONSUMER = """mutation($n: String!, $t: [ChangeType!]) { createEventConsumer(input: {name: $n, types: $t}) {
  name types position lag } }"""
READ = "query($n: String!) { eventConsumer(name: $n) { position lag changes(first: 10) { position type } } }"
ACK = "mutation($n: String!, $p: ChangePosition!) { acknowledgeEvents(consumer: $n, upTo: $p) { position lag } }"


async def test_a_named_consumer_reads_acknowledges_and_reports_lag(api: Api, world: World) -> None:
    tenant = await world.tenant()
    device = await _device(api, tenant)
    created = await api.gql(CONSUMER, {"n": "billing", "t": ["ALARM"]}, token=tenant.token, tenant=tenant.id)
    assert created.data["createEventConsumer"]["lag"] == 0
    await _raise(api, tenant, device, 3)
    read = (await api.gql(READ, {"n": "billing"}, token=tenant.token, tenant=tenant.id)).data["eventConsumer"]
    assert read["lag"] == 3
    assert [c["type"] for c in read["changes"]] == ["ALARM"] * 3
    acked = await api.gql(ACK, {"n": "billing", "p": read["changes"][1]["position"]}, token=tenant.token,
                          tenant=tenant.id)
    assert acked.data["acknowledgeEvents"]["lag"] == 1
    again = (await api.gql(READ, {"n": "billing"}, token=tenant.token, tenant=tenant.id)).data["eventConsumer"]
    assert [c["position"] for c in again["changes"]] == [read["changes"][2]["position"]]
    backwards = await api.gql(ACK, {"n": "billing", "p": read["changes"][0]["position"]}, token=tenant.token,
                              tenant=tenant.id)
    assert backwards.errors[0]["extensions"]["code"] == "INVALID_INPUT"
    bad = await api.gql(CONSUMER, {"n": "no spaces"}, token=tenant.token, tenant=tenant.id)
    assert bad.errors[0]["extensions"] == {"code": "INVALID_INPUT", "field": "name"}
    twice = await api.gql(CONSUMER, {"n": "billing"}, token=tenant.token, tenant=tenant.id)
    assert twice.errors[0]["extensions"]["code"] == "CONFLICT"
    other = await world.tenant()
    unseen = await api.gql(READ, {"n": "billing"}, token=other.token, tenant=other.id)
    assert unseen.errors[0]["extensions"]["code"] == "NOT_FOUND"


async def test_consumers_per_tenant_are_capped(api: Api, world: World, platform: Platform) -> None:
    tenant = await world.tenant()
    cap = platform.settings.consumers_per_tenant
    for n in range(cap):
        assert (await api.gql(CONSUMER, {"n": f"c{n}"}, token=tenant.token, tenant=tenant.id)).errors == []
    over = await api.gql(CONSUMER, {"n": "one-more"}, token=tenant.token, tenant=tenant.id)
    assert over.errors[0]["extensions"] == {"code": "LIMIT_EXCEEDED", "limit": "consumersPerTenant", "max": cap}
