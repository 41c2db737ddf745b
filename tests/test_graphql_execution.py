"""The fast execution paths (app.graphql.engine.execution) give graphql-core's results, valid or not.

Each case runs twice: through graphql-core's own functions and through ours, on a small
schema that has every shape the compiled code handles (non-null, lists, nested lists,
defaults, out names, oneOf, enums, custom scalars, recursion) and on Tenantry's schema.
"""

from __future__ import annotations

import asyncio
import copy
from datetime import datetime
from typing import Any

import pytest
from graphql import (
    GraphQLArgument,
    GraphQLEnumType,
    GraphQLField,
    GraphQLFloat,
    GraphQLID,
    GraphQLInputField,
    GraphQLInputObjectType,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLString,
    execute,
    parse,
)
from graphql.execution import executor as graphql_executor
from graphql.execution.executor import Executor
from graphql.utilities import coerce_input_value

from app.graphql.engine import execution
from app.graphql.engine.execution import AttributeResolver, TenantryExecutor, coercer
from app.graphql.schema import build_schema


def _even(value: Any) -> int:
    if not isinstance(value, int) or value % 2:
        raise ValueError("odd")
    return value


EVEN = GraphQLScalarType("Even", serialize=_even, parse_value=_even)
COLOUR = GraphQLEnumType("Colour", {"RED": 1, "GREEN": 2})
NODE: GraphQLInputObjectType = GraphQLInputObjectType("Node", lambda: {"name": GraphQLInputField(GraphQLString),
                                               "next": GraphQLInputField(NODE)})
CHOICE = GraphQLInputObjectType("Choice", {"a": GraphQLInputField(GraphQLInt), "b": GraphQLInputField(GraphQLString)},
                                is_one_of=True)
ITEM = GraphQLInputObjectType("Item", {
    "id": GraphQLInputField(GraphQLNonNull(GraphQLID)),
    "size": GraphQLInputField(GraphQLNonNull(GraphQLFloat)),
    "label": GraphQLInputField(GraphQLString),
    "count": GraphQLInputField(GraphQLInt, default_value=3),
    "colour": GraphQLInputField(COLOUR, out_name="paint"),
    "even": GraphQLInputField(EVEN),
    "grid": GraphQLInputField(GraphQLList(GraphQLList(GraphQLNonNull(GraphQLInt)))),
    "choice": GraphQLInputField(CHOICE),
}, out_type=lambda value: ("item", sorted(value.items())))


class Row:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


async def _later(value: Any) -> Any:
    await asyncio.sleep(0)
    return value


def _fail(source: Any, info: Any) -> Any:
    raise ValueError("resolver failed")


ROW: GraphQLObjectType = GraphQLObjectType("Row", lambda: {
    "name": GraphQLField(GraphQLNonNull(GraphQLString), resolve=AttributeResolver("name")),
    "note": GraphQLField(GraphQLString, resolve=AttributeResolver("note")),
    "count": GraphQLField(GraphQLInt, resolve=AttributeResolver("count")),
    "must": GraphQLField(GraphQLNonNull(GraphQLInt), resolve=AttributeResolver("must")),
    "colour": GraphQLField(COLOUR, resolve=AttributeResolver("colour")),
    "even": GraphQLField(EVEN, resolve=AttributeResolver("even")),
    "tags": GraphQLField(GraphQLList(GraphQLString), resolve=AttributeResolver("tags")),
    "later": GraphQLField(GraphQLString, resolve=lambda row, info: _later(row.name)),
    "broken": GraphQLField(GraphQLString, resolve=_fail),
    "child": GraphQLField(ROW, resolve=AttributeResolver("child")),
    "plain": GraphQLField(GraphQLString),  # graphql-core's default resolver
})
ROWS = [Row(name="a", note=None, count=1, must=1, colour=1, even=2, tags=["x"], child=None, plain="p"),
        Row(name="b", note="n", count=2**40, must=2, colour=2, even=3, tags=None, plain="q",
            child=Row(name="c", note="m", count=None, must=None, colour=9, even=None, tags=[], child=None, plain=None)),
        Row(name=None, note=5, count="7", must=3, colour=None, even=4, tags=[1], child=None, plain=1)]

SCHEMA = GraphQLSchema(GraphQLObjectType("Query", {
    "rows": GraphQLField(GraphQLList(ROW), resolve=lambda *_: ROWS),
    "strict": GraphQLField(GraphQLNonNull(GraphQLList(GraphQLNonNull(ROW))), resolve=lambda *_: ROWS),
    "echo": GraphQLField(GraphQLString, args={
        "items": GraphQLArgument(GraphQLList(GraphQLNonNull(ITEM))), "node": GraphQLArgument(NODE),
        "n": GraphQLArgument(GraphQLInt)}, resolve=lambda _s, _i, **args: repr(sorted(args.items()))),
}))

GOOD = {"id": 1, "size": 2, "label": "x", "colour": "RED", "even": 4, "grid": [[1, 2], [3]], "choice": {"a": 1}}
ITEM_VALUES: list[Any] = [
    [GOOD], GOOD, [], None, [GOOD, {"id": "7", "size": 1.5}],
    [{**GOOD, "count": None}], [{**GOOD, "label": None}], [{**GOOD, "grid": 5}], [{**GOOD, "grid": [5]}],
    [{**GOOD, "grid": [[None]]}], [{**GOOD, "grid": [["1"]]}], [{**GOOD, "grid": None}],
    [{"size": 1}], [{**GOOD, "id": None}], [{**GOOD, "extra": 1}], [{**GOOD, "size": "big"}],
    [{**GOOD, "size": float("inf")}], [{**GOOD, "id": 1.5}], [{**GOOD, "colour": "BLUE"}], [{**GOOD, "colour": 1}],
    [{**GOOD, "even": 3}], [{**GOOD, "choice": {"a": 1, "b": "x"}}], [{**GOOD, "choice": {"a": None}}],
    [{**GOOD, "choice": {}}], [{**GOOD, "count": 2**40}], [{**GOOD, "count": True}], [GOOD, None], ["x"], [[GOOD]],
    "nope", 1, {"id": 1}, [{**GOOD, "paint": "RED"}],
]


def _item_type() -> Any:
    return GraphQLList(GraphQLNonNull(ITEM))


@pytest.mark.parametrize("value", ITEM_VALUES, ids=range(len(ITEM_VALUES)))
def test_compiled_coercion_equals_graphql_core(value: Any) -> None:
    for type_ in (_item_type(), GraphQLNonNull(_item_type()), ITEM, GraphQLNonNull(ITEM), CHOICE):
        compiled = coercer(SCHEMA, type_)
        assert compiled is not None, type_
        expected = coerce_input_value(copy.deepcopy(value), type_)
        assert compiled(copy.deepcopy(value)) == expected, (type_, value)


def test_recursive_input_types_keep_graphql_cores_path() -> None:
    # Values of a recursive type can nest without bound: only graphql-core's own pass can
    # refuse the ones nested too deeply, so the compiled path declines the type.
    assert coercer(SCHEMA, NODE) is None
    deep: dict[str, Any] = {"name": "end"}
    for _ in range(400):
        deep = {"name": "n", "next": deep}
    nodes = parse("query($n: Node) { echo(node: $n) }").definitions[0].variable_definitions  # type: ignore[attr-defined]
    ours = execution.get_variable_values(SCHEMA, nodes, {"n": deep})
    assert isinstance(ours, list)
    assert ours[0].message == "Variable values are nested too deeply."


VARIABLE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("query($i: [Item!]) { echo(items: $i) }", {"i": ITEM_VALUES[0]}),
    ("query($i: [Item!]) { echo(items: $i) }", {"i": [{**GOOD, "size": "big"}]}),
    ("query($i: [Item!]!) { echo(items: $i) }", {}),
    ("query($i: [Item!]) { echo(items: $i) }", {}),
    ("query($i: [Item!] = [{id: 1, size: 1}]) { echo(items: $i) }", {}),
    ("query($i: [Item!], $n: Int) { echo(items: $i, n: $n) }", {"i": [GOOD], "n": 2**40}),
    ("query($i: [Item!], $n: Int) { echo(items: $i, n: $n) }", {"i": [GOOD], "n": None}),
    ("query($i: [Nope!]) { echo(items: $i) }", {"i": []}),
]


@pytest.mark.parametrize(("query", "variables"), VARIABLE_CASES, ids=range(len(VARIABLE_CASES)))
def test_variables_equal_graphql_cores(query: str, variables: dict[str, Any]) -> None:
    nodes = parse(query).definitions[0].variable_definitions  # type: ignore[attr-defined]
    stock = execution._stock_get_variable_values(SCHEMA, nodes, copy.deepcopy(variables))
    ours = execution.get_variable_values(SCHEMA, nodes, copy.deepcopy(variables))
    if isinstance(stock, list):
        assert isinstance(ours, list)
        assert [e.formatted for e in ours] == [e.formatted for e in stock]
    else:
        assert not isinstance(ours, list)
        assert ours.coerced == stock.coerced
        assert {k: (s.signature.name, s.value) for k, s in ours.sources.items()} == \
            {k: (s.signature.name, s.value) for k, s in stock.sources.items()}


def test_the_executor_uses_the_compiled_variables() -> None:
    build_schema()
    assert graphql_executor.get_variable_values is execution.get_variable_values  # type: ignore[attr-defined]


QUERIES = [
    "{ rows { name note count must colour even tags plain } }",
    "{ rows { __typename name n2: name ...F child { name note must colour __typename } } } "
    "fragment F on Row { note count }",
    "{ rows { name later broken note } }",
    "{ strict { name } }",
    "{ strict { must note } }",
    "{ rows { note @skip(if: true) name @include(if: false) count } }",
    "{ rows { child { child { name } } } }",
    "{ __typename rows { __typename } }",
]


@pytest.mark.parametrize("query", QUERIES, ids=range(len(QUERIES)))
async def test_inline_fields_equal_graphql_cores(query: str) -> None:
    async def run(executor: type[Executor[Any]]) -> tuple[Any, list[Any]]:
        result = execute(SCHEMA, parse(query), executor_class=executor)
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        errors = sorted((e.formatted for e in result.errors or ()), key=repr)  # type: ignore[union-attr]
        return result.data, errors  # type: ignore[union-attr]

    stock = await run(Executor)
    ours = await run(TenantryExecutor)
    assert ours == stock
    assert repr(ours[0]) == repr(stock[0])  # the same key order, too


async def test_inline_fields_cover_what_they_claim() -> None:
    """The plan inlines plain attribute leaves, and hands everything else to graphql-core."""
    executor = TenantryExecutor.build(SCHEMA, parse("{ rows { name count later child { name } plain __typename } }"))
    assert isinstance(executor, TenantryExecutor)
    result = executor.execute_operation()
    if asyncio.iscoroutine(result):
        await result
    plans = {tuple(entry[0] for entry in plan.inline): list(plan.rest) for plan in executor._plans.values()}
    assert plans[("name", "count", "__typename")] == ["later", "child", "plain"]
    assert plans[("name",)] == []


DEVICE = "RGV2aWNlOnQxOjE"
MEASUREMENT = {"deviceId": DEVICE, "time": "2026-01-01T00:00:00Z", "type": "t", "series": "s", "value": 1.5,
               "unit": "C"}
MEASUREMENT_VALUES: list[Any] = [
    MEASUREMENT, {**MEASUREMENT, "unit": None}, {k: v for k, v in MEASUREMENT.items() if k != "unit"},
    {**MEASUREMENT, "time": "2026-01-01T00:00:00.123+00:00"}, {**MEASUREMENT, "time": "2026-01-01T02:00:00+02:00"},
    {**MEASUREMENT, "time": "2026-01-01T00:00:00.1234567Z"}, {**MEASUREMENT, "time": "2026-W01-4T00:00:00Z"},
    {**MEASUREMENT, "time": "2026-01-01T00:00:00"}, {**MEASUREMENT, "time": "2026-01"}, {**MEASUREMENT, "time": 5},
    {**MEASUREMENT, "time": "yesterday"}, {**MEASUREMENT, "time": "9999-12-31T23:00:00-05:00"},
    {**MEASUREMENT, "value": 2}, {**MEASUREMENT, "value": "2"}, {**MEASUREMENT, "value": True},
    {**MEASUREMENT, "value": 1e300}, {**MEASUREMENT, "value": float("nan")}, {**MEASUREMENT, "value": None},
    {**MEASUREMENT, "deviceId": 7}, {**MEASUREMENT, "deviceId": "a\x00"}, {**MEASUREMENT, "type": "a\x00"},
    {**MEASUREMENT, "series": "a\x00"}, {**MEASUREMENT, "unit": "a\x00"}, {**MEASUREMENT, "unit": 5},
    {**MEASUREMENT, "extra": 1}, {k: v for k, v in MEASUREMENT.items() if k != "series"},
    {**MEASUREMENT, "series": None}, "x", [MEASUREMENT],
]


@pytest.mark.parametrize("value", MEASUREMENT_VALUES, ids=range(len(MEASUREMENT_VALUES)))
def test_the_measurement_shortcut_equals_graphql_core(value: Any) -> None:
    # MeasurementInput has a hand-written coercion for its common case (execution.shortcut).
    # Besides graphql-core's result it carries the time's text where COPY takes it unchanged.
    schema = build_schema()._schema
    assert schema.mutation_type is not None
    type_ = schema.mutation_type.fields["createMeasurements"].args["input"].type
    compiled = coercer(schema, type_)
    assert compiled is not None
    expected = coerce_input_value(copy.deepcopy([value]), type_)
    got = compiled(copy.deepcopy([value]))
    texts = [item.time_text for item in got] if isinstance(got, list) else []
    if isinstance(got, list):
        got = [item._replace(time_text=None) for item in got]
    assert got == expected
    for item, text in zip(expected if isinstance(expected, list) else [], texts, strict=True):
        assert text is None or datetime.fromisoformat(text) == item.time
    measurement_input = schema.type_map["MeasurementInput"]
    shortcut_taken = execution.DECLINE is not getattr(measurement_input, "_tenantry_shortcut")(copy.deepcopy(value))
    assert shortcut_taken == (value in MEASUREMENT_VALUES[:8])  # the zone is checked later (service)
    assert bool(texts and texts[0]) == (value in MEASUREMENT_VALUES[:4])


def test_tenantry_schema_inlines_plain_fields_and_compiles_measurements() -> None:
    schema = build_schema()._schema
    assert schema.mutation_type is not None
    argument = schema.mutation_type.fields["createMeasurements"].args["input"]
    assert coercer(schema, argument.type) is not None
    summary = schema.type_map["TenantUsageSummary"]
    assert isinstance(summary, GraphQLObjectType)
    assert all(isinstance(field.resolve, AttributeResolver) for field in summary.fields.values())
