"""Mutations answered in scalars run without graphql-core's executor, and answer exactly as it does.

Two differential tests (app.graphql.engine.direct):
- a small graphql-core schema whose resolvers return every kind of bad value (null where null is
  not allowed, values that do not coerce, exceptions raised and returned, objects of another type),
  with nullable and non-null roots and leaves, several roots, aliases and variables: graphql-core's
  own `graphql()` and the direct path must give the same data and errors, and run the same resolvers;
- real mutations through the app, on two fresh tenants in step, one answered the direct way and
  one the generic way: the same statuses, data, errors and codes, with the order of keys, once
  tenant ids and timestamps are set aside.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import orjson
import pytest
from graphql import (
    GraphQLArgument,
    GraphQLError,
    GraphQLField,
    GraphQLInt,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLString,
    OperationDefinitionNode,
    graphql,
    parse,
    validate,
)
from sqlalchemy import text
from starlette.applications import Starlette

from app.db.naming import tenant_schema
from app.graphql.engine import direct
from app.graphql.engine.execution import AttributeResolver
from app.runtime.platform import Platform
from bench.common import generic_path
from tests.conftest import TenantHandle, World, nowhere
from tests.test_compiled_reads import READ_PATH, canonical, post

# --- 1. graphql-core's semantics, on a schema made to fail ---------------------------------------------


class Thing:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


class Other:
    pass


def _leaf(type_: Any, name: str) -> GraphQLField:
    return GraphQLField(type_, resolve=AttributeResolver(name))


THING = GraphQLObjectType("Thing", lambda: {
    "a": _leaf(GraphQLString, "a"),
    "b": _leaf(GraphQLNonNull(GraphQLString), "b"),
    "n": _leaf(GraphQLInt, "n"),
    "m": _leaf(GraphQLNonNull(GraphQLInt), "m"),
}, is_type_of=lambda value, _info: isinstance(value, Thing))
RAN: list[str] = []


class Raise:
    def __init__(self, error: Exception) -> None:
        self.error = error


def _root(type_: Any, value: Any) -> GraphQLField:
    async def resolve(_source: Any, info: Any, **args: Any) -> Any:
        RAN.append(f"{info.field_name}{sorted(args.items())}")
        if isinstance(value, Raise):
            raise value.error
        return value(args) if callable(value) and not isinstance(value, type) else value
    return GraphQLField(type_, {"x": GraphQLArgument(GraphQLInt)}, resolve=resolve)


FINE = Thing(a="x", b="y", n=1, m=2)
ROOTS: dict[str, Any] = {
    "fine": FINE, "nullA": Thing(a=None, b="y", n=None, m=2), "nullB": Thing(a="x", b=None, n=1, m=2),
    "badN": Thing(a="x", b="y", n="nope", m=2), "badM": Thing(a="x", b="y", n=1, m=1.5),
    "missing": Thing(a="x", n=1, m=2), "exceptionA": Thing(a=ValueError("kept a"), b="y", n=1, m=2),
    "raises": Raise(RuntimeError("resolver failed")), "raisesGraphQL": Raise(GraphQLError("told", extensions={"c": 1})),
    "none": None, "returnsError": ValueError("returned"), "other": Other(),
    "args": lambda args: Thing(a=str(args), b="y", n=args.get("x"), m=2),
}
MUTATION = GraphQLObjectType("Mutation", {
    **{name: _root(THING, value) for name, value in ROOTS.items()},
    **{f"{name}NN": _root(GraphQLNonNull(THING), value) for name, value in ROOTS.items()},
    "int": _root(GraphQLInt, 3), "intNN": _root(GraphQLNonNull(GraphQLInt), 3),
    "badInt": _root(GraphQLInt, "three"), "nullIntNN": _root(GraphQLNonNull(GraphQLInt), None),
})
SMALL = GraphQLSchema(GraphQLObjectType("Query", {"q": GraphQLField(GraphQLInt)}), MUTATION)
SELECTIONS = ["{ a b n m }", "{ m n b a __typename }", "{ a }", "{ x: a y: n __typename }", "{ n m }"]
DOCUMENTS = [
    *(f"mutation {{ {root}{nn} {selection} }}" for root in ROOTS for nn in ("", "NN") for selection in SELECTIONS),
    "mutation { int intNN badInt }", "mutation { nullIntNN int }", "mutation { int nullIntNN }",
    "mutation { first: fine { a } raises { a } last: fineNN { b } }",  # a nullable failure: execution goes on
    "mutation { first: fine { a } raisesNN { a } last: fineNN { b } }",  # a non-null one: the rest never runs
    "mutation { nullB { a b } nullBNN { a b } fine { a } }",
    "mutation { badN { a n } badMNN { n m } }",
    "mutation($x: Int) { args(x: $x) { a n } c: args(x: 7) { n } d: argsNN { n } }",
    "mutation($x: Int!) { args(x: $x) { a n } }",
]


def _plan(source: str) -> direct.MutationPlan | None:
    document = parse(source)
    assert not validate(SMALL, document), source
    operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
    return direct.plan(SMALL, document, operation)


@pytest.mark.parametrize("source", DOCUMENTS)
@pytest.mark.parametrize("variables", [{}, {"x": 5}, {"x": "five"}])
async def test_the_direct_path_completes_and_fails_as_graphql_core_does(source: str,
                                                                        variables: dict[str, Any]) -> None:
    plan = _plan(source)
    assert plan is not None, source
    RAN.clear()
    mine = await direct.run(SMALL, plan, None, variables)
    ran_mine = list(RAN)
    RAN.clear()
    theirs = await graphql(SMALL, source, variable_values=variables)
    if mine is None:  # variables that do not coerce: the generic path reports them, nothing ran
        assert ran_mine == []
        assert theirs.data is None
        assert theirs.errors
        return
    assert ran_mine == RAN, source  # the same resolvers, in the same order
    assert canonical(mine.formatted) == canonical(theirs.formatted), f"{source}\n{mine}\n{theirs}"


@pytest.mark.parametrize("source", [
    "mutation { fine { ...F } } fragment F on Thing { a }",  # fragments
    "mutation { fine { a @include(if: true) } }",  # directives
    "mutation @skip(if: false) { fine { a } }",
    "mutation { fine { a } fine { b } }",  # one response name twice: graphql-core merges them
    "mutation { fine { a a } }",
    "mutation { __typename }",
    "mutation { fine { a } ... on Mutation { int } }",
    "query { q }",
])
def test_other_operations_take_the_generic_path(source: str) -> None:
    document = parse(source)
    operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
    assert direct.plan(SMALL, document, operation) is None


# --- 2. the app's mutations, on both paths ----------------------------------------------------------------

_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


_TOKEN = re.compile(r"[A-Za-z0-9_-]{12,}")


def _neutral(value: Any, own: str, other: str) -> Any:
    """`value` with both tenants' ids (alone or inside a message) and any timestamp set aside: the two
    tenants differ there. Ids of the caller's own tenant and of the other one stay told apart."""
    if isinstance(value, dict):
        return {k: _neutral(v, own, other) for k, v in value.items()}
    if isinstance(value, list):
        return [_neutral(v, own, other) for v in value]
    if not isinstance(value, str):
        return value
    if _TIME.match(value):
        return "<time>"
    names = {own: "own", other: "other"}

    def global_id(match: re.Match[str]) -> str:
        token = match.group(0)
        try:
            decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            return token
        type_name, tenant, local = [*decoded.split(":"), "", ""][:3]
        return f"<{type_name}:{names[tenant]}:{local}>" if tenant in names else token

    return _TOKEN.sub(global_id, value).replace(own, "<own>").replace(other, "<other>")


class Pair:
    """Two tenants set up alike; each step runs on the first the default way and on the second the
    generic way, with each tenant's own ids in the variables."""

    def __init__(self, http: httpx.AsyncClient, app: Starlette, direct_one: TenantHandle,
                 generic_one: TenantHandle) -> None:
        self.http, self.app, self.tenants = http, app, (direct_one, generic_one)
        self.ids: tuple[dict[str, str], dict[str, str]] = ({}, {})
        self.direct = 0

    async def step(self, query: str, variables: dict[str, Any] | None = None, *, keep: str | None = None,
                   tokens: tuple[str, str] | None = None) -> None:
        answers = []
        for n, tenant in enumerate(self.tenants):
            values = {k: self._value(n, v) for k, v in (variables or {}).items()}
            token = tokens[n] if tokens else tenant.token
            if n == 0:
                response = await post(self.http, token, tenant.id, query, values)
                self.direct += response.headers.get(READ_PATH) == "direct"
            else:
                with generic_path(self.app):
                    response = await post(self.http, token, tenant.id, query, values)
                assert READ_PATH not in response.headers
            body = orjson.loads(response.content)
            if keep:  # a step whose id later steps use: it must have succeeded
                assert "errors" not in body, body
                self.ids[n][keep] = next(iter(body["data"].values()))["id"]
            answers.append((response.status_code, _neutral(body, tenant.id, self.tenants[1 - n].id)))
        (mine_status, mine), (theirs_status, theirs) = answers
        assert all(e.get("extensions", {}).get("code") not in ("INTERNAL", None) for e in mine.get("errors", ())), mine
        assert mine_status == theirs_status, f"{query}\n{mine}\n{theirs}"
        assert canonical(mine) == canonical(theirs), f"{query}\n{mine}\n{theirs}"


    def _value(self, n: int, value: Any) -> Any:
        """A variable's value for tenant `n`: its own id for a kept name, "other:<name>" the other tenant's
        (values inside input objects are given as they are)."""
        if not isinstance(value, str):
            return value
        if value.startswith("other:"):
            return self.ids[1 - n][value.removeprefix("other:")]
        if value == "nowhere":  # a well-formed id of the tenant's own that names no row
            return nowhere(self.tenants[n])
        return self.ids[n].get(value, value)


DEVICE = "id name type fragments requiredInterval parentId __typename createdAt updatedAt"
ALARM = "id type severity status text count deviceId __typename firstRaisedAt"


async def test_the_apps_mutations_answer_alike_on_both_paths(world: World, http: httpx.AsyncClient,
                                                             app: Starlette, platform: Platform) -> None:
    parent = await world.tenant(kind="ENTERPRISE")
    pair = Pair(http, app, await world.tenant(parent), await world.tenant(parent))
    first, second = pair.tenants
    await pair.step(f'mutation {{ createDevice(input: {{name: "only-in-one", type: "t"}}) {{ {DEVICE} }} }}',
                    keep="dev")
    await pair.step(f"mutation($i: CreateDeviceInput!) {{ d: createDevice(input: $i) {{ n: name {DEVICE} }} }}",
                    {"i": {"name": "v", "fragments": {"fw": {"v": [1, 2.5, None]}}, "requiredInterval": 5}})
    await pair.step('mutation { createDevice(input: {name: ""}) { id } }')  # INVALID_INPUT, data null
    await pair.step('mutation($i: CreateDeviceInput!) { createDevice(input: $i) { id } }',
                    {"i": {"name": "nul\u0000"}})  # a variable refused at coercion: the generic path answers
    await pair.step('mutation($i: CreateDeviceInput!) { createDevice(input: $i) { id } }')  # missing variable
    await pair.step('mutation { a: createDevice(input: {name: "a"}) { id } b: createDevice(input: {name: ""}) { id }'
                    ' c: createDevice(input: {name: "never"}) { id } }')  # b fails: nothing saved, c never ran
    await pair.step('mutation($d: ID!) { updateDevice(id: $d, input: {name: "renamed"}) { id name } }',
                    {"d": "dev"})
    await pair.step('mutation($d: ID!) { updateDevice(id: $d, input: {name: "x"}) { id } }',
                    {"d": "nowhere"})  # NOT_FOUND
    await pair.step(f'mutation($d: ID!) {{ raiseAlarm(input: {{deviceId: $d, type: "hot", severity: MAJOR, '
                    f'text: "it\'s hot"}}) {{ {ALARM} }} }}', {"d": "dev"}, keep="alarm")
    await pair.step(f"mutation($a: ID!) {{ updateAlarmStatus(id: $a, status: CLEARED) {{ {ALARM} }} }}",
                    {"a": "alarm"})
    # Bad input of every kind: a clear code on both paths, never INTERNAL, nothing half-created.
    create = "mutation($i: CreateDeviceInput!) { createDevice(input: $i) { id name } }"
    await pair.step(create, {"i": {"name": "x" * 10_000}})  # over-long
    await pair.step(create, {"i": {"name": "n", "requiredInterval": 10**12}})  # beyond Int
    await pair.step(create, {"i": {"name": "n", "fragments": {"deep": [[[[[[[[[[[[1]]]]]]]]]]]]}}})
    await pair.step("mutation($p: ID) { createDevice(input: {name: \"n\", parentId: $p}) { id } }",
                    {"p": "other:dev"})  # the other tenant's device as the parent
    await pair.step(f'mutation($d: ID!) {{ raiseAlarm(input: {{deviceId: $d, type: "t", severity: MAJOR, '
                    f'text: "x"}}) {{ {ALARM} }} }}', {"d": "other:dev"})
    for time in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-02-30T00:00:00Z"):  # extreme dates
        await pair.step('mutation($d: ID!, $t: DateTime!) { createEvent(input: {deviceId: $d, time: $t, '
                        'type: "e", text: "t"}) { id type } }', {"d": "dev", "t": time})
    await pair.step('mutation { createGroup(name: "g") { id name } }', keep="group")
    await pair.step("mutation($g: ID!, $d: ID!) { addDevicesToGroup(groupId: $g, deviceIds: [$d]) }",
                    {"g": "group", "d": "dev"})
    await pair.step('mutation($d: ID!) { createMeasurements(input: [{deviceId: $d, time: "2026-01-01T00:00:00Z", '
                    'type: "c", series: "s", value: 1.5}]) }', {"d": "dev"})
    await pair.step('mutation A { createGroup(name: "a") { name } } mutation B { createGroup(name: "b") { id } }')
    await pair.step('mutation { createDevice(input: {name: "f"}) { ...D } } fragment D on Device { name }')
    await pair.step("mutation { __typename }")
    await pair.step("mutation { createDevice(input: {name: 1}) { id } }")  # invalid document
    readers = (await world.member(first, "READER"))[1], (await world.member(second, "READER"))[1]
    await pair.step('mutation { createDevice(input: {name: "r"}) { id } }', tokens=readers)  # FORBIDDEN
    await pair.step('mutation { createDevice(input: {name: "x"}) { id } }',
                    tokens=(second.token, first.token))  # another tenant's token: refused by the gate
    await pair.step("mutation($d: ID!) { deleteDevice(id: $d) }", {"d": "dev"})
    await pair.step("query { devices(first: 20) { totalCount edges { node { name } } } }")
    assert pair.direct >= 12  # the steps the direct path can answer were answered by it

    # At the SQL level: what the direct path wrote is in its tenant's schema only, logged and audited there.
    for tenant in (first, second):
        answer = await post(http, tenant.token, tenant.id, "mutation($n: String!) { createDevice(input: {name: $n}) "
                            "{ id } }", {"n": f"mine-{tenant.id}"})
        assert answer.headers[READ_PATH] == "direct"
        assert "errors" not in answer.json(), answer.text
    async with platform.db.owner.connect() as conn:
        for tenant in (first, second):
            schema = tenant_schema(tenant.id)
            names = set((await conn.execute(text(f"SELECT name FROM {schema}.devices"))).scalars())
            logged = set((await conn.execute(text(
                f"SELECT body->>'name' FROM {schema}.changes WHERE kind = 'device'"))).scalars())
            audited = set((await conn.execute(text(f"SELECT changes->0->>'new' FROM {schema}.audit_log "
                                                   "WHERE action = 'device.created'"))).scalars())
            for found in (names, logged, audited):
                assert {n for n in found if n and n.startswith("mine-")} == {f"mine-{tenant.id}"}, found
            assert "never" not in names  # the root after a failed non-null one never ran
