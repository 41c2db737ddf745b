"""Scalars beyond GraphQL's own: JSON and a 64-bit integer for byte counts."""

from __future__ import annotations

from typing import Any, NewType

import strawberry
from strawberry.scalars import JSON
from strawberry.types.scalar import ScalarDefinition

__all__ = ["JSON", "SCALAR_MAP", "Long"]

Long = NewType("Long", int)


def _parse_long(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("Long must be an integer")
    number = int(value)
    if not -(2**63) <= number < 2**63:
        raise ValueError("Long must fit in 64 bits")
    return number


SCALAR_MAP: dict[object, ScalarDefinition] = {
    Long: strawberry.scalar(
        name="Long",
        description="A 64-bit integer (byte counts and other values beyond Int's 32 bits).",
        serialize=int,
        parse_value=_parse_long,
    ),
}
