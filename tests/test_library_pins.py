"""Every reach into a library's internals, checked against the library's own behaviour (each is
pinned to a minor range in pyproject.toml; a new minor release must pass these first)."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import graphql
import psycopg
import pytest
from graphql import GraphQLInputObjectType
from sqlalchemy import literal, select, text
from strawberry.types.arguments import convert_argument
from strawberry.types.base import StrawberryObjectDefinition

from app.access.acting import tenant_transaction
from app.access.scope import UNRESTRICTED, Scope
from app.db import transaction as db_transaction
from app.graphql.engine import sql_json
from app.graphql.schema import build_schema
from app.graphql.types.data import _already_built, _new_measurement
from app.ids import decode
from app.runtime.platform import Platform
from app.services.data import alarms
from app.services.inventory import devices, relations
from tests.conftest import Api, World

ROOT = Path(__file__).resolve().parent.parent


def test_each_library_whose_internals_we_use_is_pinned_to_a_minor_range() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {d.split(">=")[0].split("[")[0]: d for d in dependencies}
    for name in ("strawberry-graphql", "graphql-core", "sqlalchemy", "psycopg", "uvicorn"):
        assert ",<" in pins[name], f"{name} reaches internals and must have an upper bound: {pins[name]}"


def test_strawberrys_private_schema_is_the_schema_it_serves() -> None:
    """`TenantrySchema._schema` (strawberry's graphql-core schema) is what every engine module runs on."""
    schema = build_schema()

    def shape(s: graphql.GraphQLSchema) -> dict[str, list[str]]:
        return {name: sorted(getattr(t, "fields", None) or getattr(t, "values", None) or [])
                for name, t in s.type_map.items() if not name.startswith("__")}

    assert shape(schema._schema) == shape(graphql.build_schema(schema.as_str()))


def test_the_create_measurements_resolver_is_replaced_and_builds_records_directly() -> None:
    """install_ingest_path swaps strawberry's resolver of createMeasurements for one that takes
    graphql-core's coerced list as it is (bench/ingest.py measures why)."""
    graphql_schema = build_schema()._schema
    assert graphql_schema.mutation_type is not None
    resolve = graphql_schema.mutation_type.fields["createMeasurements"].resolve
    assert resolve is not None
    assert resolve.__qualname__ == "install_ingest_path.<locals>.resolve"
    measurement_input = graphql_schema.type_map["MeasurementInput"]
    assert isinstance(measurement_input, GraphQLInputObjectType)
    assert measurement_input.out_type is _new_measurement
    # Every other mutation keeps strawberry's own resolver.
    others = {name: f.resolve for name, f in graphql_schema.mutation_type.fields.items()
              if name != "createMeasurements"}
    assert all(r is not None and "install_ingest_path" not in r.__qualname__ for r in others.values())


async def test_the_replaced_resolver_refuses_bad_items_as_graphql_core_does(api: Api, world: World) -> None:
    t = await world.tenant()
    device = (await api.gql('mutation { createDevice(input: {name: "m"}) { id } }', token=t.token,
                            tenant=t.id)).data["createDevice"]["id"]
    query = "mutation($i: [MeasurementInput!]!) { createMeasurements(input: $i) }"
    good = {"deviceId": device, "time": "2026-01-01T00:00:00Z", "type": "c", "series": "s", "value": 1.5}
    assert (await api.gql(query, {"i": [good, {**good, "value": 2.5}]}, token=t.token,
                          tenant=t.id)).data["createMeasurements"] == 2
    missing = {k: v for k, v in good.items() if k != "time"}
    refused = await api.gql(query, {"i": [good, missing]}, token=t.token, tenant=t.id)
    assert refused.code == "INVALID_INPUT"
    assert "time" in refused.errors[0]["message"]


async def test_sqlalchemys_statement_cache_renders_statements_that_answer_as_sqlalchemy_runs_them(
        api: Api, world: World, platform: Platform) -> None:
    """sql_json.Statement.clause renders through SQLAlchemy's private `_compile_w_cache` and bind
    processors, its values as psycopg literals: the text must answer exactly what SQLAlchemy's own
    execution of the statement (with bound parameters) answers."""
    t = await world.tenant()
    made = await api.gql('mutation { gw: createDevice(input: {name: "it\'s %% a \\\\ name", fragments: {a: [1]}}) '
                         '{ id } }', token=t.token, tenant=t.id)
    gw = decode(made.data["gw"]["id"])
    assert gw is not None
    await api.gql('mutation($p: ID!) { createDevice(input: {name: "child", parentId: $p}) { id } }',
                  {"p": made.data["gw"]["id"]}, token=t.token, tenant=t.id)
    statements = [
        select(literal("it's %% a \\ name"), literal(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)),
               literal(1.5), literal(None)),
        relations.children_statement(UNRESTRICTED, [gw[2], 999], 1),
        relations.devices_statement(UNRESTRICTED, []),
        relations.groups_statement(Scope(group_ids=(1, 2)), [gw[2]]),
        alarms.alarms_statement(UNRESTRICTED, [gw[2]], status=("ACTIVE", "CLEARED"), limit=3),
        select(devices.DEVICE_COLUMNS[0]).where(devices.DEVICE_COLUMNS[1] == "it's %% a \\ name"),
    ]
    rendered = [sql_json.Statement.clause(s) for s in statements]
    tx = tenant_transaction(platform.db.app, t.id)
    try:
        for statement, sql in zip(statements, rendered, strict=True):
            expected = [tuple(r) for r in (await tx.execute(statement)).all()]
            assert [tuple(r) for r in (await tx.execute(text(sql))).all()] == expected, sql
    finally:
        await tx.finish(commit=False)


async def test_one_simple_protocol_round_trip_answers_as_psycopg_does(platform: Platform) -> None:
    """app.db.transaction.simple_query drives libpq through psycopg's generators (internals): every result of
    a multi-statement query, and the first failure raised as psycopg raises it."""
    async with platform.db.app.connect() as conn:
        driver = await db_transaction.libpq_connection(conn)
        assert driver is (await conn.get_raw_connection()).driver_connection  # SQLAlchemy's private handle
        results = await db_transaction.simple_query(driver, "SELECT 1, 'a'; SELECT 'b'")
        assert [[r.get_value(0, n) for n in range(r.nfields)] for r in results] == [[b"1", b"a"], [b"b"]]
        with pytest.raises(psycopg.errors.UndefinedTable) as ours:
            await db_transaction.simple_query(driver, "SELECT 1; SELECT * FROM no_such_table")
        with pytest.raises(psycopg.errors.UndefinedTable) as theirs:
            await driver.execute("SELECT * FROM no_such_table")
        assert ours.value.sqlstate == theirs.value.sqlstate == "42P01"


def _raw_input(type_: Any, depth: int = 0) -> Any:
    """A well-formed raw value of a graphql-core input type, every field given (to depth 3)."""
    if isinstance(type_, graphql.GraphQLNonNull):
        return _raw_input(type_.of_type, depth)
    if isinstance(type_, graphql.GraphQLList):
        return [_raw_input(type_.of_type, depth)]
    if isinstance(type_, graphql.GraphQLEnumType):
        return next(iter(type_.values))
    if isinstance(type_, GraphQLInputObjectType):
        return {name: _raw_input(field.type, depth + 1) for name, field in type_.fields.items()
                if depth < 3 or isinstance(field.type, graphql.GraphQLNonNull)}
    for candidate in ("RGV2aWNlOnQxOjE", 1, 1.5, True, "2026-01-02T03:04:05+00:00", "2026-01-02", {"a": [1]}, "s"):
        try:
            type_.parse_value(candidate)
            return candidate
        except Exception:  # the scalar's own refusal: try the next kind of value
            continue
    raise AssertionError(f"no value for {type_}")


def test_strawberrys_inputs_are_built_in_one_pass_as_its_own_walk_builds_them() -> None:
    """app.graphql.engine.inputs replaces Strawberry's per-field walk (`from_input`, a Strawberry
    hook) for every input type: both must build the same objects from the same coerced values."""
    schema = build_schema()
    converter = schema.schema_converter
    definitions = {name: c.definition for name, c in converter.type_map.items()
                   if isinstance(c.definition, StrawberryObjectDefinition) and c.definition.is_input}
    assert len(definitions) > 20
    ours = {name: d.from_input for name, d in definitions.items()}
    assert all(ours.values())
    for name, definition in definitions.items():
        gql_type = schema._schema.type_map[name]
        coerced = graphql.coerce_input_value(_raw_input(gql_type), gql_type)  # type: ignore[arg-type]
        built = convert_argument(coerced, definition.origin, converter.scalar_registry, schema.config)
        for other in definitions.values():  # Strawberry's own walk, all the way down
            if other.from_input is not _already_built:  # type: ignore[comparison-overlap]
                other.from_input = None
        try:
            theirs = convert_argument(coerced, definition.origin, converter.scalar_registry, schema.config)
        finally:
            for other_name, other in definitions.items():
                other.from_input = ours[other_name]
        assert built == theirs, name
