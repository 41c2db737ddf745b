"""Generated inputs: hostile values for every argument of every query and mutation of
schema.graphql, through the real app, as a tenant ADMIN. Whatever comes back, it is never
INTERNAL and never a 5xx: bad input is INVALID_INPUT (or NOT_FOUND, FORBIDDEN, …).

Values come from a seeded generator (reproducible) that mixes well-formed values with the
kinds that once broke the server: NUL in strings and JSON keys, ids of non-ASCII digits
('⑧', '¹') or beyond bigint, cursors naming huge ids, JSON nested hundreds of levels deep,
times that leave years 1-9999 in UTC, floats near the double range. Bounded in time.
"""

from __future__ import annotations

import base64
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from graphql import (
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLUnionType,
    build_schema,
    get_named_type,
)
from starlette.applications import Starlette

from tests.conftest import Api, World

SCHEMA = build_schema((Path(__file__).resolve().parent.parent / "schema.graphql").read_text())
BUDGET_SECONDS = 45.0
ROUNDS = 120  # as many as fit in the budget (about 20 s here)
SKIP = {"logout"}  # would end the session this test runs with (it is covered by tests/test_auth.py)


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode()


HOSTILE_STRINGS = ["", " ", "\x00", "a\x00b", "⑧", "¹", "٣", "99999999999999999999", "-1", "0", "1",
                   "9223372036854775807", "9223372036854775808", "x" * 5000, "'; DROP TABLE devices; --",
                   "😀" * 10, "=HYPERLINK(\"http://x\")", "t000000001", "management", "\ud7ff", "null",
                   "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "2026-01-01T00:00:00Z",
                   _b64("k:99999999999999999999999"), _b64("k:⑧"), _b64("t:0001-01-01T00:00:00+14:00|1"),
                   _b64("t:2026-01-01T00:00:00+00:00|99999999999999999999"), "not-base64!", "tapi_x", "tdev_x"]
HOSTILE_TIMES = ["0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00",
                 "2026-01-01T00:00:00", "2026-13-45T99:00:00Z", "2026-01-01T00:00:00Z", "yesterday", "\x00",
                 "+275760-09-13T00:00:00Z", "2026-06-01T12:00:00+05:30"]
HOSTILE_FLOATS = [0.0, -0.0, 1.5, -1e308, 1e308, 1.7976931348623157e308, 5e-324, 1e100, -1e101, 42]
HOSTILE_INTS = [0, 1, -1, 2**31 - 1, -(2**31), 500, 501, 100000]


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


HOSTILE_JSON = [{}, [], None, 1, "x", {"a\x00": 1}, {"a": "b\x00"}, _deep(500), _deep(31), {"n": 2**70},
                {"f": 1e308}, [[[[[[]]]]]], {"k" * 1000: "v"}, {"nested": {"list": [1, 2, {"x": None}]}},
                {"big": "x" * 300_000}]


class Generator:
    def __init__(self, seed: int, known_ids: list[str]) -> None:
        self.rng = random.Random(seed)
        self.known_ids = known_ids

    def value(self, type_: GraphQLInputType, depth: int = 0) -> Any:
        rng = self.rng
        if isinstance(type_, GraphQLNonNull):
            return self.value(type_.of_type, depth)
        if rng.random() < 0.08:
            return None
        if isinstance(type_, GraphQLList):
            return [self.value(type_.of_type, depth + 1) for _ in range(rng.choice([0, 1, 1, 2, 3]))]
        if isinstance(type_, GraphQLInputObjectType):
            if depth > 4:
                return None
            return {name: self.value(field.type, depth + 1) for name, field in type_.fields.items()
                    if isinstance(field.type, GraphQLNonNull) or rng.random() < 0.6}
        if isinstance(type_, GraphQLEnumType):
            return rng.choice([*type_.values, "NOT_A_VALUE"]) if rng.random() < 0.95 else 7
        assert isinstance(type_, GraphQLScalarType), type_
        return self.scalar(type_.name)

    def scalar(self, name: str) -> Any:
        rng = self.rng
        if name == "ID":
            return rng.choice([*self.known_ids, *HOSTILE_STRINGS, 1, -5, 2**63])
        if name in ("String",):
            return rng.choice(HOSTILE_STRINGS)
        if name == "Int":
            return rng.choice(HOSTILE_INTS)
        if name == "Float":
            return rng.choice(HOSTILE_FLOATS)
        if name == "Boolean":
            return rng.choice([True, False])
        if name == "DateTime":
            return rng.choice(HOSTILE_TIMES)
        if name == "Date":
            return rng.choice(["2026-01-01", "0001-01-01", "9999-12-31", "2026-02-30", "x", "2026-01-01T00:00:00Z"])
        if name == "JSON":
            return rng.choice(HOSTILE_JSON)
        if name == "Long":
            return rng.choice([0, 1, -1, 2**63 - 1, 2**63, "12", "⑧"])
        return rng.choice(HOSTILE_STRINGS)


def _selection(field: GraphQLField, depth: int = 0) -> str:
    named = get_named_type(field.type)
    if isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
        leaves = [name for name, f in named.fields.items()
                  if isinstance(get_named_type(f.type), GraphQLScalarType | GraphQLEnumType) and not f.args]
        nested = [f"{name} {_selection(f, depth + 1)}" for name, f in named.fields.items()
                  if depth < 1 and not f.args and isinstance(get_named_type(f.type), GraphQLObjectType)]
        return "{ " + " ".join(["__typename", *leaves[:12], *nested[:3]]) + " }"
    if isinstance(named, GraphQLUnionType):
        return "{ __typename }"
    return ""


def _document(kind: str, name: str, field: GraphQLField) -> str:
    if not field.args:
        return f"{kind} {{ {name} {_selection(field)} }}"
    params = ", ".join(f"${arg}: {arg_def.type}" for arg, arg_def in field.args.items())
    args = ", ".join(f"{arg}: ${arg}" for arg in field.args)
    return f"{kind}({params}) {{ {name}({args}) {_selection(field)} }}"


async def test_no_generated_input_is_answered_internal_or_5xx(api: Api, world: World, app: Starlette) -> None:
    # Its own client address: its failed anonymous logins must not throttle other tests' logins.
    transport = httpx.ASGITransport(app=app, client=("203.0.113.77", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://tenantry.test") as http:
        await _fuzz(api, world, http)


async def _fuzz(api: Api, world: World, http: httpx.AsyncClient) -> None:
    t = await world.tenant()
    device = (await api.gql('mutation { createDevice(input: {name: "fuzz"}) { id } }', token=t.token,
                            tenant=t.id)).data["createDevice"]["id"]
    operations = [("query", name, f) for name, f in SCHEMA.query_type.fields.items()]  # type: ignore[union-attr]
    operations += [("mutation", name, f) for name, f in SCHEMA.mutation_type.fields.items()  # type: ignore[union-attr]
                   if name not in SKIP]
    failures: list[str] = []
    outcomes: Counter[str] = Counter()
    sent = 0
    deadline = time.monotonic() + BUDGET_SECONDS
    for round_ in range(ROUNDS):
        gen = Generator(seed=round_, known_ids=[device, t.id, "1"])
        # Every third round anonymous: login, sign-up and invitation previews run unauthenticated.
        headers = {"authorization": f"Bearer {t.token}", "x-tenant-id": t.id} if round_ % 3 else {}
        for kind, name, field in operations:
            if time.monotonic() > deadline:
                break
            variables = {arg: gen.value(arg_def.type) for arg, arg_def in field.args.items()}
            response = await http.post(
                "/graphql", json={"query": _document(kind, name, field), "variables": variables},
                headers={**headers, "accept": "application/graphql-response+json"})
            sent += 1
            body = response.json()
            codes = {e.get("extensions", {}).get("code") for e in body.get("errors") or []}
            outcomes[("resolved" if body.get("data") is not None or any(e.get("path") for e in body.get("errors") or [])
                      else "refused at coercion")] += 1
            if response.status_code >= 500 or "INTERNAL" in codes:
                failures.append(f"{name} {str(variables)[:300]} -> {response.status_code} {str(body)[:300]}")
    assert sent >= 3 * len(operations), "the budget ran out before every operation was tried three times"
    print(f"{sent} requests: {dict(outcomes)}")  # shown with pytest -s
    assert outcomes["resolved"] > sent // 4, outcomes  # most inputs must reach the resolvers
    assert failures == [], f"{len(failures)} of {sent}:\n" + "\n".join(failures[:15])
