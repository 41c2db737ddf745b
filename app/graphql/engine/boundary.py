"""The input boundary, wired into GraphQL's coercion of values.

Every String, ID, Float, JSON and DateTime value a request carries — variables and literals,
top-level arguments and fields of input objects, in both graphql-core's coercion and the
compiled one of `app.graphql.engine.execution` — passes one check of `app.inputs` as it is coerced.
A refusal is a GraphQL coercion error, reported as INVALID_INPUT with the path of the value
(e.g. "Variable '$input' got invalid value … at 'input.name'; text cannot contain NUL").

String, ID and Float are graphql-core's shared scalar objects, so the checks are installed on
them once per process (idempotent); graphql-core is pinned to a minor range in pyproject and
tests/test_input_boundary.py checks that valid values still coerce exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from graphql import GraphQLError, GraphQLScalarType, GraphQLSchema

from app.inputs import MAX_MAGNITUDE, InputRejected, check_json, check_number, check_string

_MARK = "_tenantry_boundary"
CHECKS: dict[str, Callable[[Any], Any]] = {
    "String": check_string, "ID": check_string, "Float": check_number, "JSON": check_json,
}


def install(schema: GraphQLSchema) -> None:
    for name, check in CHECKS.items():
        type_ = schema.type_map.get(name)
        if isinstance(type_, GraphQLScalarType) and not getattr(type_, _MARK, False):
            _guard(type_, check)


# Values that need no further look, by exact type (the hot path: a batch of 1,000 measurements
# coerces some 6,000 values). Anything else goes through graphql-core's coercion and the check.
FAST: dict[str, Callable[[Any], bool]] = {
    "String": lambda v: type(v) is str and "\x00" not in v,
    "ID": lambda v: type(v) is str and "\x00" not in v,
    "Float": lambda v: type(v) is float and -MAX_MAGNITUDE <= v <= MAX_MAGNITUDE,  # NaN fails both
}


def _guard(type_: GraphQLScalarType, check: Callable[[Any], Any]) -> None:
    def checked(coerce: Callable[..., Any]) -> Callable[..., Any]:
        def coerce_and_check(*args: Any) -> Any:
            value = coerce(*args)
            if value is not None:
                try:
                    check(value)
                except InputRejected as exc:
                    raise GraphQLError(str(exc)) from None
            return value

        return coerce_and_check

    literal = type_.coerce_input_literal or type_.parse_literal  # None: graphql-core's default
    value_coercer = checked(type_.coerce_input_value)
    fast = FAST.get(type_.name)
    if fast is not None:
        slow = value_coercer

        def value_coercer(value: Any) -> Any:
            # graphql-core returns such values unchanged: the same result, one call instead of three
            return value if fast(value) else slow(value)

    literal_coercer = checked(literal)
    type_.coerce_input_value = type_.parse_value = value_coercer  # type: ignore[method-assign]
    type_.coerce_input_literal = type_.parse_literal = literal_coercer  # type: ignore[method-assign]
    setattr(type_, _MARK, True)
