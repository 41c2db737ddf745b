"""app.db.prepared: the compiled paths' SQL text as prepared shapes, on real PostgreSQL connections."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from app.db import prepared
from app.db.naming import tenant_role, tenant_schema
from app.db.transaction import libpq_connection, simple_query
from app.ids import decode
from app.runtime.platform import Platform
from app.settings import Settings
from tests.conftest import Api, World


def test_a_statement_is_cut_into_its_shape_and_its_values() -> None:
    text, values, types = prepared.shape(
        "SELECT d1.id, 'x = 1', \"a = 2\" FROM devices d1 WHERE d1.id = 12 AND d1.name <> 'it''s' "
        "AND d1.type = E'a\\\\b' AND v->>'name' = 'n' AND f @> '{}' AND g >= -3 AND h = 1.5 "
        "AND k = 99999999999999999999 AND t < '2026-01-01 00:00:00+00:00'::timestamptz LIMIT 101")
    assert text == ("SELECT d1.id, 'x = 1', \"a = 2\" FROM devices d1 WHERE d1.id = $1 AND d1.name <> $2 "
                    "AND d1.type = $3 AND v->>'name' = $4 AND f @> '{}' AND g >= $5 AND h = 1.5 "
                    "AND k = 99999999999999999999 AND t < $6::timestamptz LIMIT 101")
    assert values == ("12", "'it''s'", "E'a\\\\b'", "'n'", "-3", "'2026-01-01 00:00:00+00:00'")
    assert types == ("bigint", "unknown", "unknown", "unknown", "bigint", "unknown")
    assert prepared.shape("SELECT x FROM (SELECT '{\"a\": 1}'::jsonb AS v) s")[0] == \
        "SELECT x FROM (SELECT $1::jsonb AS v) s"


async def _run(driver: Any, setup: str, sql: str) -> tuple[list[str], list[Any]]:
    """`sql` in a transaction of its own after `setup`, as app.access.acting sends it: the steps it
    went as (`steps_for`, looked at before the round trip) and its rows' first values."""
    sent: list[str] = []
    original = prepared.steps_for

    def seen(driver: Any, sql: str, new: list[tuple[Any, str]]) -> list[str]:
        steps = original(driver, sql, new)
        if not sent:  # the first attempt (a refused shape is sent again as its text)
            sent[:] = steps
        return steps

    prepared.steps_for = seen
    try:
        (last,) = await prepared.round_trip(driver, [("BEGIN", False), (setup, False), (sql, True),
                                                     ("COMMIT", False)], whole=True)
    except BaseException:
        await simple_query(driver, "ROLLBACK")
        raise
    finally:
        prepared.steps_for = original
    return sent, [last.get_value(r, 0) for r in range(last.ntuples)]


def _as(tenant_id: str, schema_of: str | None = None) -> str:
    schema = tenant_schema(schema_of or tenant_id)
    return f"SELECT set_config('search_path', '{schema}', true), set_config('role', '{tenant_role(tenant_id)}', true)"


async def test_a_prepared_shape_reads_the_tenant_it_runs_for_never_the_one_it_was_prepared_for(
        api: Api, world: World, platform: Platform) -> None:
    a, b = await world.tenant(), await world.tenant()
    ids = {}
    for t, name in ((a, "of-a"), (b, "of-b")):
        made = await api.gql('mutation($n: String!) { createDevice(input: {name: $n}) { id } }', {"n": name},
                             token=t.token, tenant=t.id)
        key = decode(made.data["createDevice"]["id"])
        assert key is not None
        ids[t.id] = key[2]
    assert ids[a.id] == ids[b.id]  # the same local id, so the same shape and values
    sql = f"SELECT (SELECT name FROM devices WHERE id = {ids[a.id]})"
    async with platform.db.app.connect() as conn:
        driver = await libpq_connection(conn)
        answers = [await _run(driver, _as(a.id), sql) for _ in range(3)]
        assert [len(steps) for steps, _ in answers] == [1, 2, 1]  # as it is, PREPARE + EXECUTE, EXECUTE
        assert {rows[0] for _, rows in answers} == {b"of-a"}
        assert answers[0][0] == [sql]  # a shape seen once is not worth a plan kept
        name = answers[1][0][0].split()[1].split("(")[0]  # PREPARE <name>(bigint) AS …
        assert answers[2][0] == [f"EXECUTE {name}({ids[a.id]})"]
        listed = await simple_query(driver, "SELECT statement, parameter_types::text FROM pg_prepared_statements "
                                            f"WHERE name = '{name}'")  # the statement: the whole query sent
        assert f"PREPARE {name}(bigint) AS SELECT (SELECT name FROM devices WHERE id = $1); EXECUTE".encode() in \
            listed[0].get_value(0, 0)
        assert listed[0].get_value(0, 1) == b"{bigint}"
        # The same statement, prepared under A, executed for B: PostgreSQL parses it again for
        # B's search_path, and B's role may not read A's schema at all.
        steps, rows = await _run(driver, _as(b.id), sql)
        assert steps == answers[2][0]
        assert rows == [b"of-b"]
        steps, rows = await _run(driver, _as(a.id), sql)
        assert steps == answers[2][0]
        assert rows == [b"of-a"]
        with pytest.raises(psycopg.Error, match=r"permission denied|does not exist"):
            await _run(driver, _as(b.id, schema_of=a.id), sql)


async def test_psycopgs_own_deallocate_all_leaves_no_shape_named_that_is_gone(
        api: Api, world: World, platform: Platform) -> None:
    """psycopg prepares the generic path's statements and deallocates ALL on a rollback it runs."""
    t = await world.tenant()
    sql = "SELECT (SELECT count(*) FROM devices WHERE id > 0)"
    async with platform.db.app.connect() as conn:
        driver = await libpq_connection(conn)
        for _ in range(3):
            await _run(driver, _as(t.id), sql)
        for _ in range(6):  # past psycopg's prepare_threshold: it holds a statement of its own now
            await driver.execute("SELECT %s::int", [1])
        await driver.execute("BEGIN")
        await driver.rollback()  # psycopg: ROLLBACK, then DEALLOCATE ALL
        first, rows = await _run(driver, _as(t.id), sql)
        assert first[0].startswith("PREPARE")
        assert rows == [b"0"]
        steps, rows = await _run(driver, _as(t.id), sql)
        assert len(steps) == 1
        assert steps[0].startswith("EXECUTE")
        assert rows == [b"0"]
        for _ in range(6):
            await driver.execute("SELECT %s::int", [1])
        await driver.execute("BEGIN")
        await driver.execute("ROLLBACK")  # a ROLLBACK psycopg sees: its DEALLOCATE ALL follows at once
        again, rows = await _run(driver, _as(t.id), sql)
        assert again[0].startswith("PREPARE")
        assert again[0].split()[1] != first[0].split()[1]
        assert rows == [b"0"]


async def test_through_graphql_each_tenant_reads_its_own_device_from_the_shape_both_use(
        api: Api, world: World) -> None:
    """Two tenants' first devices share a local id, so their compiled `device(id)` statements share
    a shape and its values: prepared by whichever came first, each still reads its own."""
    a, b = await world.tenant(), await world.tenant()
    made = {}
    for t, name in ((a, "mine-a"), (b, "mine-b")):
        answer = await api.gql('mutation($n: String!) { createDevice(input: {name: $n}) { id } }', {"n": name},
                               token=t.token, tenant=t.id)
        made[t.id] = answer.data["createDevice"]["id"]
    for _ in range(4):
        for t, name in ((a, "mine-a"), (b, "mine-b")):
            answer = await api.gql("query($id: ID!) { device(id: $id) { name } }", {"id": made[t.id]},
                                   token=t.token, tenant=t.id)
            assert answer.data == {"device": {"name": name}}
            other = b if t is a else a
            crossed = await api.gql("query($id: ID!) { device(id: $id) { name } }", {"id": made[other.id]},
                                    token=t.token, tenant=t.id)
            assert crossed.data in ({"device": None}, None)


async def test_a_shape_postgresql_cannot_prepare_is_sent_as_its_text_and_answers(
        world: World, platform: Platform) -> None:
    """A value whose type nothing around it tells (here cast to `unknown`): PREPARE fails, and the
    round trip, which began the transaction, is rolled back and sent again as the text."""
    t = await world.tenant()
    sql = "SELECT json_build_array('never prepared'::unknown, 7)::text"
    async with platform.db.app.connect() as conn:
        driver = await libpq_connection(conn)
        answers = [await _run(driver, _as(t.id), sql) for _ in range(3)]
        assert [rows for _, rows in answers] == [[b'["never prepared", 7]']] * 3
        assert answers[1][0][0].startswith("PREPARE")  # tried once, refused by PostgreSQL
        assert answers[2][0] == [sql]  # and not again
        for _ in range(3):  # any other failure is the statement's own, prepared or not
            with pytest.raises(psycopg.errors.DivisionByZero):
                await _run(driver, _as(t.id), "SELECT (SELECT 1 / 0 WHERE 2 = 2)")


async def test_behind_a_transaction_pooler_nothing_is_prepared(world: World, platform: Platform) -> None:
    """TENANTRY_PREPARED_STATEMENTS=0: every statement goes as its text (a pooler in transaction
    mode may send the EXECUTE to another server session than the PREPARE)."""
    assert Settings.from_env({"TENANTRY_PREPARED_STATEMENTS": "0"}).prepared_statements is False
    assert Settings.from_env({}).prepared_statements is True
    t = await world.tenant()
    sql = "SELECT (SELECT count(*) FROM devices WHERE id > 41 AND type IS DISTINCT FROM 'pooled')"  # its own shape
    async with platform.db.app.connect() as conn:
        driver = await libpq_connection(conn)
        prepared.enabled = False
        try:
            answers = [await _run(driver, _as(t.id), sql) for _ in range(3)]
        finally:
            prepared.enabled = platform.settings.prepared_statements
        assert answers == [([sql], [b"0"])] * 3
        on = [(await _run(driver, _as(t.id), sql))[0] for _ in range(2)]  # and on again: counted from now
        assert on[0] == [sql]
        assert on[1][0].startswith("PREPARE")


def test_a_shaped_statement_carries_its_shape_and_is_never_cut() -> None:
    statement = prepared.shaped("SELECT {}::jsonb -> 'a', {} = 1",
                                [("'{\"a\": \"x = 1\"}'", "unknown"), ("7", "bigint")])
    assert statement == "SELECT '{\"a\": \"x = 1\"}'::jsonb -> 'a', 7 = 1"
    assert prepared.shape(statement) == ("SELECT $1::jsonb -> 'a', $2 = 1", ("'{\"a\": \"x = 1\"}'", "7"),
                                         ("unknown", "bigint"))


async def test_every_tenant_s_writes_share_one_shape_and_land_in_its_own_log_and_audit(
        api: Api, world: World, platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit row, the change-log head and entries, and createDevice's INSERT come shaped by
    their builders (nothing cut) and name their tables through search_path: one prepared shape
    serves every tenant, each write still lands in its own tenant's tables (read back as the owner)."""
    cut: list[str] = []
    original = prepared._cut

    def counted(sql: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        cut.append(sql)
        return original(sql)

    monkeypatch.setattr(prepared, "_cut", counted)
    a, b = await world.tenant(), await world.tenant()
    made: dict[str, list[str]] = {a.id: [], b.id: []}
    for k in range(4):  # alternating, on the pool's connections: the shapes are prepared and shared
        for t in (a, b):
            name = f"{t.id}-{k}"
            answer = await api.gql('mutation($n: String!) { createDevice(input: {name: $n}) { id name } }',
                                   {"n": name}, token=t.token, tenant=t.id)
            assert answer.data == {"createDevice": {"id": answer.data["createDevice"]["id"], "name": name}}
            made[t.id].append(name)
    assert not [sql for sql in cut if "change_head" in sql or "audit_log" in sql or "INSERT INTO devices" in sql]
    assert "UPDATE change_head SET last = last + $1 WHERE id = 1" in prepared._SEEN or any(
        "UPDATE change_head SET last = last + $1 WHERE id = 1" in c.names for c in prepared._CONNECTIONS.values())
    async with platform.db.owner.connect() as conn:
        for t in (a, b):
            schema = tenant_schema(t.id)
            logged = [(r[0], r[1]) for r in (await conn.execute(text(
                f"SELECT position, body->>'name' FROM {schema}.changes WHERE kind = 'device' ORDER BY position")))]
            assert [name for _, name in logged] == made[t.id]
            positions = [p for p, _ in logged]
            assert positions == list(range(positions[0], positions[0] + 4))
            audited = (await conn.execute(text(
                f"SELECT count(*) FROM {schema}.audit_log WHERE action = 'device.created'"))).scalar_one()
            assert audited == 4
            names = (await conn.execute(text(f"SELECT array_agg(name ORDER BY id) FROM {schema}.devices"))).scalar_one()
            assert names == made[t.id]
