"""The input boundary (app/inputs.py, wired into coercion by app/graphql/engine/boundary.py): each kind
of value that once answered INTERNAL, or was accepted and then broke every later read."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from graphql import GraphQLFloat, GraphQLID, GraphQLString, StringValueNode

from app.graphql.schema import build_schema
from app.inputs import MAX_MAGNITUDE
from tests.conftest import Api, TenantHandle, World

MEASURE = """mutation($d: ID!, $t: DateTime!, $v: Float!) {
  createMeasurements(input: [{deviceId: $d, time: $t, type: "c", series: "t", value: $v}]) }"""


async def _device(api: Api, t: TenantHandle) -> str:
    created = await api.gql('mutation { createDevice(input: {name: "d"}) { id } }', token=t.token, tenant=t.id)
    return str(created.data["createDevice"]["id"])


@pytest.mark.parametrize(("query", "variables"), [
    ("mutation($n: String!) { createDevice(input: {name: $n}) { id } }", {"n": "a\x00b"}),
    ("mutation($f: JSON) { createDevice(input: {name: \"x\", fragments: $f}) { id } }", {"f": {"k\x00": 1}}),
    ("mutation($f: JSON) { createDevice(input: {name: \"x\", fragments: $f}) { id } }", {"f": {"k": ["\x00"]}}),
    ("query($k: String!) { devices(filter: {hasFragment: $k}) { totalCount } }", {"k": "\x00"}),
    ('mutation { createDevice(input: {name: "a\\u0000b"}) { id } }', {}),
    ("mutation($e: String!) { login(email: $e, password: \"x\") { accessToken } }", {"e": "\x00@x.test"}),
])
async def test_nul_anywhere_is_invalid_input(api: Api, world: World, query: str, variables: dict[str, Any]) -> None:
    t = await world.tenant()
    result = await api.gql(query, variables, token=t.token, tenant=t.id)
    assert result.code == "INVALID_INPUT", result.body
    assert "NUL" in result.errors[0]["message"]


async def test_json_nested_too_deep_or_too_big_is_invalid_input(api: Api, world: World) -> None:
    t = await world.tenant()
    deep: Any = 1
    for _ in range(500):
        deep = {"a": deep}
    query = "mutation($f: JSON) { createDevice(input: {name: \"x\", fragments: $f}) { id } }"
    for fragments in (deep, {"big": "x" * 300_000}):
        result = await api.gql(query, {"f": fragments}, token=t.token, tenant=t.id)
        assert result.code == "INVALID_INPUT", str(result.body)[:300]
    # A literal integer beyond 64 bits (JSON bodies parse such numbers as floats, which is fine).
    literal = await api.gql('mutation { createDevice(input: {name: "x", fragments: {n: 1180591620717411303424}}) '
                            "{ id } }", token=t.token, tenant=t.id)
    assert literal.code == "INVALID_INPUT", literal.body


@pytest.mark.parametrize("local", ["⑧", "¹", "٣", "99999999999999999999", "-1", "0", "9223372036854775808", "1"])
async def test_ids_that_are_not_global_ids_of_ascii_bigint_digits_are_invalid_input(api: Api, world: World,
                                                                                   local: str) -> None:
    """Bare numbers (the rows' per-tenant numbers) and forged global ids alike: only the API's ids."""
    t = await world.tenant()
    forged = base64.urlsafe_b64encode(f"Device:{t.id}:{local}".encode()).rstrip(b"=").decode()
    for bad_id in (local, forged):
        found = await api.gql("query($d: ID!) { device(id: $d) { id } }", {"d": bad_id}, token=t.token, tenant=t.id)
        if bad_id == forged and local == "1":  # well-formed: names no device here
            assert found.data["device"] is None
            continue
        assert found.code == "INVALID_INPUT", (bad_id, found.body)
        write = await api.gql("mutation($d: ID!) { deleteDevice(id: $d) }", {"d": bad_id}, token=t.token,
                              tenant=t.id)
        assert write.code == "INVALID_INPUT"


async def test_cursors_are_validated_never_trusted(api: Api, world: World) -> None:
    t = await world.tenant()
    device = await _device(api, t)
    for raw in ("k:99999999999999999999999", "k:⑧", "k:-5", "t:0001-01-01T00:00:00+14:00|1",
                "t:2026-01-01T00:00:00+00:00|99999999999999999999", "t:2026-01-01T00:00:00|1", "k:a\x00"):
        cursor = base64.urlsafe_b64encode(raw.encode()).decode()
        for query in ("query($a: String) { devices(after: $a) { totalCount } }",
                      "query($a: String) { auditLog(after: $a) { edges { cursor } } }",
                      "query($a: String) { invitations(after: $a) { edges { cursor } } }"):
            result = await api.gql(query, {"a": cursor}, token=t.token, tenant=t.id)
            assert result.code == "INVALID_INPUT", (raw, query, result.body)
        if "\x00" in raw:  # a member cursor is an email position: anything but NUL is one
            members = await api.gql("query($a: String) { members(after: $a) { edges { cursor } } }", {"a": cursor},
                                    token=t.token, tenant=t.id)
            assert members.code == "INVALID_INPUT", members.body
        measured = await api.gql("query($d: ID!, $a: String) { measurements(deviceId: $d, after: $a) "
                                 "{ edges { cursor } } }", {"d": device, "a": cursor}, token=t.token, tenant=t.id)
        assert measured.code == "INVALID_INPUT", (raw, measured.body)


async def test_times_outside_years_1_to_9999_in_utc_are_refused_and_reads_keep_working(
        api: Api, world: World) -> None:
    """Regression: 0001-01-01T00:00:00+14:00 was stored as 1 BC, and from then on every
    measurements(deviceId) without `from` answered INTERNAL."""
    t = await world.tenant()
    device = await _device(api, t)
    for time in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        refused = await api.gql(MEASURE, {"d": device, "t": time, "v": 1.0}, token=t.token, tenant=t.id)
        assert refused.code == "INVALID_INPUT", refused.body
    for time in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-01-01T00:00:00+14:00"):
        stored = await api.gql(MEASURE, {"d": device, "t": time, "v": 1.0}, token=t.token, tenant=t.id)
        assert stored.data["createMeasurements"] == 1
    read = await api.gql("query($d: ID!) { measurements(deviceId: $d) { edges { node { time } } } }", {"d": device},
                         token=t.token, tenant=t.id)
    assert [e["node"]["time"][:4] for e in read.data["measurements"]["edges"]] == ["0001", "2025", "9999"]


async def test_values_are_finite_and_bounded_so_aggregates_never_overflow(api: Api, world: World) -> None:
    """Regression: values near 1.8e308 were accepted, and measurementSeries over their bucket
    then overflowed."""
    t = await world.tenant()
    device = await _device(api, t)
    for value in (1.7976931348623157e308, -1e308, MAX_MAGNITUDE * 10):
        refused = await api.gql(MEASURE, {"d": device, "t": "2026-01-01T00:00:00Z", "v": value}, token=t.token,
                                tenant=t.id)
        assert refused.code == "INVALID_INPUT", refused.body
    for second in range(3):
        stored = await api.gql(MEASURE, {"d": device, "t": f"2026-01-01T00:00:0{second}Z", "v": MAX_MAGNITUDE},
                               token=t.token, tenant=t.id)
        assert stored.data["createMeasurements"] == 1
    series = await api.gql('query($d: ID!) { measurementSeries(deviceId: $d, from: "2026-01-01T00:00:00Z", '
                           'to: "2026-01-02T00:00:00Z", interval: DAY) { count sum max } }', {"d": device},
                           token=t.token, tenant=t.id)
    assert series.data["measurementSeries"] == [{"count": 3, "sum": 3 * MAX_MAGNITUDE, "max": MAX_MAGNITUDE}]


def test_valid_values_coerce_exactly_as_graphql_core_does() -> None:
    """The boundary wraps graphql-core's own coercion (pinned minor range): accepted values
    come out unchanged, only refused ones differ."""
    build_schema()  # installs the checks (idempotently)
    for value in ("", "plain", "😀" * 3, "x" * 10_000, "0", "t000000001"):
        assert GraphQLString.coerce_input_value(value) == value
        assert GraphQLString.parse_literal(StringValueNode(value=value)) == value
        assert GraphQLID.coerce_input_value(value) == value
    assert GraphQLID.coerce_input_value(12) == "12"
    for number in (0, 1.5, -2, MAX_MAGNITUDE, -MAX_MAGNITUDE, 5e-324):
        assert GraphQLFloat.coerce_input_value(number) == float(number)
    build_schema()  # a second schema does not wrap the shared scalars twice
    assert GraphQLString.coerce_input_value("once") == "once"
