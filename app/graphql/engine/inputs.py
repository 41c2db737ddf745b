"""Strawberry's input objects built from graphql-core's coerced values without its per-field walk.

graphql-core has already coerced and checked every input value (app.graphql.boundary). Strawberry
then converts each input object again, field by field: it renders each field's GraphQL name,
resolves its annotation and walks its type's wrappers on every request, about a twelfth of a
createDevice's server CPU. Here each input type's fields are resolved once (on first use) and a
field whose values need no conversion (a scalar or an enum, nullable or not) is handed over as it
is; every other field (lists, nested inputs, `Maybe`, relay's GlobalID) still goes through
Strawberry's own `convert_argument`, so what the resolvers receive is unchanged
(tests/test_library_pins.py compares the two on every input type).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING
from typing import Any

from strawberry.relay import GlobalID
from strawberry.types.arguments import InputContext, _is_leaf_type, convert_argument
from strawberry.types.base import StrawberryMaybe, StrawberryObjectDefinition, StrawberryOptional, StrawberryType
from strawberry.types.enum import has_enum_definition

FromInput = Callable[[type, Mapping[str, Any], InputContext], Any]


def install(type_map: Mapping[str, Any]) -> None:
    """Give every Strawberry input type of a schema (its converter's `type_map`) the one-pass build."""
    for concrete in type_map.values():
        definition = concrete.definition
        if isinstance(definition, StrawberryObjectDefinition) and definition.is_input \
                and definition.from_input is None:
            definition.from_input = from_input(definition)


def from_input(definition: StrawberryObjectDefinition) -> FromInput:
    """`definition`'s instances from coerced values, as Strawberry's convert_argument builds them."""
    defaults = {f.python_name: None for f in definition.fields
                if f.default_value is MISSING and f.default_factory is MISSING}
    plan: list[tuple[str, str, StrawberryType | type | None]] = []

    def build(cls: type, value: Mapping[str, Any], context: InputContext) -> Any:
        if not plan and definition.fields:
            plan.extend((context.config.name_converter.from_field(f), f.python_name,
                         _converted(f.resolve_type(type_definition=definition), context))
                        for f in definition.fields)
        kwargs: dict[str, Any] = dict(defaults)
        for graphql_name, python_name, type_ in plan:
            if graphql_name in value:
                given = value[graphql_name]
                kwargs[python_name] = given if type_ is None else convert_argument(
                    given, type_, context.scalar_registry, context.config, context.info,
                    path=(*context.path, graphql_name))
        return cls(**kwargs)

    return build


def _converted(type_: Any, context: InputContext) -> StrawberryType | type | None:
    """`type_` when its values need Strawberry's conversion, None when they are handed over as given."""
    inner = type_.of_type if isinstance(type_, StrawberryOptional) and not isinstance(type_, StrawberryMaybe) \
        else type_
    if inner is GlobalID or isinstance(inner, StrawberryMaybe):
        return type_  # type: ignore[no-any-return]
    if has_enum_definition(inner) or _is_leaf_type(inner, context.scalar_registry, skip_classes=(GlobalID,)):
        return None
    return type_  # type: ignore[no-any-return]
