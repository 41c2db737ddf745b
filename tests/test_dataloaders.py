"""No N+1: the statements of a device list with relations do not grow with the number of devices."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from app.runtime.platform import Platform
from tests.conftest import Api, World

QUERY = """{ devices(first: 50) { edges { node { id groups { name } children { id } externalIds { value }
             alarms(status: [ACTIVE], first: 3) { type count } } } } }"""


@contextmanager
def counting(platform: Platform) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # The tenant's own statements only: registry lookups (management schema, when the 1 s
        # cache expired just then) and role switches are per request, not per device.
        if "tenantry." not in statement and "set_config" not in statement:
            statements.append(statement)

    engine = platform.db.app.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def _populate(api: Api, token: str, tenant: str, n: int) -> None:
    group = await api.gql('mutation { createGroup(name: "g") { id } }', token=token, tenant=tenant)
    group_id = group.data["createGroup"]["id"]
    for i in range(n):
        created = await api.gql("mutation($g: ID!, $s: String!) { createDevice(input: {name: $s, groupId: $g, "
                                "externalId: $s}) { id } }", {"g": group_id, "s": f"{tenant}-{i}"}, token=token,
                                tenant=tenant)
        device = created.data["createDevice"]["id"]
        await api.gql('mutation($d: ID!) { raiseAlarm(input: {deviceId: $d, type: "a", severity: MINOR, text: "a"}) '
                      "{ id } }", {"d": device}, token=token, tenant=tenant)


async def test_statement_count_is_independent_of_the_number_of_devices(api: Api, world: World,
                                                                       platform: Platform) -> None:
    few, many = await world.tenant(), await world.tenant()
    await _populate(api, few.token, few.id, 3)
    await _populate(api, many.token, many.id, 30)
    counts = []
    for t, n in ((few, 3), (many, 30)):
        with counting(platform) as statements:
            result = await api.gql(QUERY, token=t.token, tenant=t.id)
        edges = result.data["devices"]["edges"]
        assert len(edges) == n
        assert all(e["node"]["groups"] == [{"name": "g"}] and len(e["node"]["alarms"]) == 1 for e in edges)
        counts.append(len(statements))
    assert counts[0] == counts[1], counts
    assert counts[1] <= 6  # devices, groups, children, external ids, alarms (+ nothing per device)
