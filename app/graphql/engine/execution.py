"""Faster graphql-core execution for the two shapes that dominate big requests.

1. Big variables (createMeasurements with 1,000-5,000 items). graphql-core coerces a
   variable by walking the value and the type together, re-inspecting the type at every
   node, after a separate pass that checks the value is not nested too deeply. Here each
   input type is compiled once into nested closures that do the same checks in the same
   order (`coerce_input_value` in graphql/utilities/coerce_input_value.py) and nothing else.
   The depth pass is skipped only where it cannot fail: for types that are not recursive
   and whose nesting is far below graphql-core's limit. Whenever a value does not coerce,
   or anything is unusual (an omitted variable, a default, a bad signature), graphql-core's
   own `get_variable_values` runs instead, so every error message is graphql-core's.

2. Big lists of plain objects (subtenantUsage: 10,000 rows x 21 fields, devices pages).
   For every field graphql-core builds a Path and a GraphQLResolveInfo, calls the resolver,
   then walks `complete_value`'s type checks. For a field that only reads an attribute (see
   `AttributeResolver`) and returns a scalar or enum, the result is the attribute passed
   through the type's `coerce_output_value`, exactly what `complete_leaf_value` returns.
   `TenantryExecutor.execute_fields` does that inline and hands every other field (and any
   field whose value is null where null is not allowed, or does not coerce) to graphql-core
   unchanged, so errors, paths and nullability propagation are graphql-core's.

Both are measured by bench/ingest.py and bench/usage.py, and tests/test_graphql_execution.py
compares them with graphql-core's own results, valid and invalid.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import Any, cast

from graphql import (
    GraphQLError,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    Undefined,
    is_leaf_type,
)
from graphql.execution import executor as graphql_executor
from graphql.execution.get_variable_signature import GraphQLVariableSignature, get_variable_signature
from graphql.execution.values import VariableValues, VariableValuesOrErrors, VariableValueSource
from graphql.language import VariableDefinitionNode
from graphql.language.parser import MAX_NESTING_DEPTH
from graphql.pyutils import Path, is_iterable
from graphql.type import is_required_input_field
from graphql.type.introspection import TypeNameMetaFieldDef
from graphql.utilities.coerce_input_value import coerce_default_value
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from app.graphql.engine.boundary import FAST

Coercer = Callable[[Any], Any]

# --- 1. variables ---------------------------------------------------------------------------

_stock_get_variable_values = graphql_executor.get_variable_values  # type: ignore[attr-defined]

# Compiled coercers per schema, by the printed variable type ("[MeasurementInput!]!");
# None where the stock path must run (recursive or very deep types).
_coercers: weakref.WeakKeyDictionary[GraphQLSchema, dict[str, Coercer | None]] = weakref.WeakKeyDictionary()

# The compiled path skips graphql-core's "nested too deeply" pre-pass. That is only exact
# when no value of the type can recurse that deep; keep a wide margin below the limit.
_MAX_COMPILED_DEPTH = MAX_NESTING_DEPTH // 4


def get_variable_values(
    schema: GraphQLSchema,
    var_def_nodes: Any,
    inputs: dict[str, Any],
    max_errors: int | None = None,
    hide_suggestions: bool = False,
) -> VariableValuesOrErrors:
    """graphql-core's `get_variable_values`, with compiled coercion for the common case."""
    compiled = _compiled_variable_values(schema, var_def_nodes, inputs)
    if compiled is not None:
        return compiled
    return _stock_get_variable_values(schema, var_def_nodes, inputs, max_errors, hide_suggestions)


def _compiled_variable_values(schema: GraphQLSchema, var_def_nodes: Any,
                              inputs: dict[str, Any]) -> VariableValues | None:
    """All variables provided and valid → their values; otherwise None (the stock path decides)."""
    signatures = variable_signatures(schema, var_def_nodes)
    return None if signatures is None else coerce_variables(schema, signatures, inputs)


def operation_variables(schema: GraphQLSchema, signatures: list[GraphQLVariableSignature] | None,
                        var_def_nodes: Any, inputs: dict[str, Any] | None) -> VariableValues | None:
    """An operation's variables for a caller that keeps its `signatures` (the compiled reads, the
    direct mutations): coerced the compiled way where it can, else graphql-core's; None when they do
    not coerce (the generic path then reports it, before anything ran)."""
    coerced = coerce_variables(schema, signatures, inputs or {}) if signatures is not None else None
    if coerced is not None:
        return coerced
    stock = get_variable_values(schema, var_def_nodes, inputs or {})  # defaults, omissions, errors
    return None if isinstance(stock, list) else stock


def variable_signatures(schema: GraphQLSchema, var_def_nodes: Any) -> list[GraphQLVariableSignature] | None:
    """The operation's variable signatures (None where one is invalid), which a caller running
    the same document many times can keep (app.graphql.engine.compiled)."""
    signatures = []
    node: VariableDefinitionNode
    for node in var_def_nodes:
        signature = get_variable_signature(schema, node)
        if isinstance(signature, GraphQLError):
            return None
        signatures.append(signature)
    return signatures


def coerce_variables(schema: GraphQLSchema, signatures: list[GraphQLVariableSignature],
                     inputs: dict[str, Any]) -> VariableValues | None:
    """The compiled coercion of all variables, or None (then `get_variable_values` decides)."""
    sources: dict[str, VariableValueSource] = {}
    coerced: dict[str, Any] = {}
    for signature in signatures:
        value = inputs.get(signature.name, Undefined)
        if value is Undefined:
            return None
        coerce = coercer(schema, signature.type)
        if coerce is None:
            return None
        result = coerce(value)
        if result is Undefined:
            return None
        sources[signature.name] = VariableValueSource(signature, value)
        coerced[signature.name] = result
    return VariableValues(sources, coerced)


def coercer(schema: GraphQLSchema, type_: GraphQLInputType) -> Coercer | None:
    """The compiled equivalent of `coerce_input_value(value, type_)`, or None if not compiled."""
    per_schema = _coercers.get(schema)
    if per_schema is None:
        per_schema = _coercers[schema] = {}
    key = str(type_)
    if key not in per_schema:
        per_schema[key] = _compile(type_, open_objects=()) if _depth(type_, ()) <= _MAX_COMPILED_DEPTH \
            else None
    return per_schema[key]


def _depth(type_: GraphQLInputType, open_objects: tuple[str, ...]) -> int:
    """How deep input_is_nested_too_deeply could count for values of this type (recursion: infinite)."""
    if isinstance(type_, GraphQLNonNull):
        return _depth(type_.of_type, open_objects)
    if isinstance(type_, GraphQLList):
        return 1 + _depth(type_.of_type, open_objects)
    if isinstance(type_, GraphQLInputObjectType):
        if type_.name in open_objects:
            return MAX_NESTING_DEPTH + 1
        inner = (type_.name, *open_objects)
        return 1 + max((_depth(f.type, inner) for f in type_.fields.values()), default=0)
    return 0


def _compile(type_: GraphQLInputType, open_objects: tuple[str, ...]) -> Coercer:
    """A coercer for a possibly-null value of `type_`, mirroring `coerce_input_value`."""
    if isinstance(type_, GraphQLNonNull):
        body = _compile_body(type_.of_type, open_objects)

        def non_null(value: Any) -> Any:
            if value is None or value is Undefined:
                return Undefined
            return body(value)

        return non_null
    body = _compile_body(type_, open_objects)

    def nullable(value: Any) -> Any:
        if value is None or value is Undefined:
            return None
        return body(value)

    return nullable


def _compile_body(type_: GraphQLInputType, open_objects: tuple[str, ...]) -> Coercer:
    """A coercer for a value of the nullable type `type_` that is known not to be null."""
    if isinstance(type_, GraphQLList):
        item = _compile(type_.of_type, open_objects)

        def list_body(value: Any) -> Any:
            if not is_iterable(value):  # a single value is a list of one
                single = item(value)
                return Undefined if single is Undefined else [single]
            out: list[Any] = []
            append = out.append
            for item_value in value:
                coerced = item(item_value)
                if coerced is Undefined:
                    return Undefined
                append(coerced)
            return out

        return list_body
    if isinstance(type_, GraphQLInputObjectType):
        return _compile_input_object(type_, open_objects)
    assert is_leaf_type(type_), type_
    coerce_leaf = type_.coerce_input_value

    def leaf_body(value: Any) -> Any:
        try:
            return coerce_leaf(value)
        except Exception:  # as graphql-core: a value the scalar refuses is no value
            return Undefined

    return leaf_body


# Returned by a shortcut (see `shortcut`) for a value it does not take: the compiled body decides.
DECLINE: Any = object()
_SHORTCUT = "_tenantry_shortcut"


def shortcut(type_: GraphQLInputObjectType, coerce: Coercer) -> None:
    """Give an input object type a hand-written coercion for its common case, tried first.

    `coerce(value)` returns either exactly what `coerce_input_value(value, type_)` would
    (out_type included), or DECLINE, after which the compiled body below runs as without it.
    It is for a type coerced thousands of times a request (a measurement batch), where a
    body written for the type's own fields is about three times faster than the generic one;
    tests/test_graphql_execution.py compares it with graphql-core's, valid values and invalid.
    Set it before the schema's first request: coercers are compiled once and kept.
    """
    setattr(type_, _SHORTCUT, coerce)


def _compile_input_object(type_: GraphQLInputObjectType, open_objects: tuple[str, ...]) -> Coercer:
    body = _compile_input_fields(type_, open_objects)
    fast: Coercer | None = getattr(type_, _SHORTCUT, None)
    if fast is None:
        return body

    def shortcut_or_body(value: Any) -> Any:
        coerced = fast(value)
        return body(value) if coerced is DECLINE else coerced

    return shortcut_or_body


def _compile_input_fields(type_: GraphQLInputObjectType, open_objects: tuple[str, ...]) -> Coercer:
    fields = type_.fields
    inner = (type_.name, *open_objects)
    # (name, out name, field, required, non-null, body of the nullable type, fast check): the fast
    # check (app.graphql.engine.boundary.FAST) is true only of a present value its scalar's coercion
    # returns unchanged, so such a value is taken as it is, with no call through the coercion.
    plan = []
    for name, field in fields.items():
        non_null = isinstance(field.type, GraphQLNonNull)
        nullable_type = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
        fast = FAST.get(nullable_type.name) if isinstance(nullable_type, GraphQLScalarType) else None
        plan.append((name, field.out_name or name, field, is_required_input_field(field), non_null,
                     _compile_body(nullable_type, inner), fast))
    out_type = type_.out_type
    one_of = type_.is_one_of
    names = frozenset(fields)

    def object_body(value: Any) -> Any:
        if not isinstance(value, dict):
            return Undefined
        defined = 0
        if one_of or not value.keys() <= names:  # else every key is a field: nothing to count or refuse
            for field_name, field_value in value.items():
                if field_value is Undefined:
                    continue
                defined += 1
                if field_name not in fields:
                    return Undefined
        out: dict[str, Any] = {}
        for name, out_name, field, required, non_null, body, fast in plan:
            field_value = value.get(name, Undefined)
            if fast is not None and fast(field_value):
                out[out_name] = field_value
                continue
            if field_value is Undefined:
                if required:
                    return Undefined
                default = coerce_default_value(field)
                if default is not Undefined:
                    out[out_name] = default
                continue
            if field_value is None:
                if non_null:
                    return Undefined
                out[out_name] = None
                continue
            coerced = body(field_value)
            if coerced is Undefined:
                return Undefined
            out[out_name] = coerced
        if one_of:
            keys = list(out)
            if defined != 1 or len(keys) != 1 or out[keys[0]] is None:
                return Undefined
        return out_type(out)

    return object_body


def install() -> None:
    """Route graphql-core's executor through the compiled coercion (idempotent).

    `Executor.build` calls the module-level `get_variable_values`; there is no hook for it,
    and copying `build` would fork sixty lines of graphql-core. Replacing that one name keeps
    the behaviour (see the module docstring) and falls back to the original function.
    """
    graphql_executor.get_variable_values = get_variable_values  # type: ignore[attr-defined]


# --- 2. plain fields ------------------------------------------------------------------------


class AttributeResolver:
    """A field resolver that returns `getattr(source, name)` and does nothing else.

    Installed for Strawberry fields without resolver or extensions (see
    app.graphql.schema); the executor below recognises it and reads the attribute inline.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, source: Any, info: Any, **kwargs: Any) -> Any:
        return getattr(source, self.name)


# A field of a plan: (response name, attribute or None for __typename, leaf type, non-null,
# the field's details for graphql-core). Fields not in the plan run through graphql-core.
_Inline = tuple[str, str | None, GraphQLLeafType, bool, Any]


class _Plan:
    __slots__ = ("inline", "keep", "order", "rest")

    def __init__(self, keep: Any, inline: list[_Inline], rest: dict[str, Any], order: list[str]) -> None:
        self.keep = keep  # the grouped field set, kept alive so that its id stays unique
        self.inline = inline
        self.rest = rest  # the grouped field set of the other fields, in order
        self.order = order  # every response name, in order


class TenantryExecutor(StrawberryGraphQLCoreExecutionContext):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plans: dict[int, _Plan] = {}
        # Plans by selection (type, response names, field nodes of the cached document), shared by a
        # subscription's per-event copies: each event collects its field sets anew, so `_plans`
        # (by object identity, what a request's list items share) would miss on every event.
        self._selection_plans: dict[tuple[object, ...], _Plan] = {}
        manager = self.middleware_manager
        # Middleware wraps every resolver; with any, all fields take graphql-core's path.
        self._inline_allowed = manager is None or manager._middleware_resolvers is None

    def execute_collected_root_fields(self, root_type: GraphQLObjectType, root_value: Any, grouped_field_set: Any,
                                      serially: bool, new_defer_usages: Any) -> Any:
        # The roots the compiled read path answered (app.graphql.engine.compiled) are not run again;
        # the endpoint merges their JSON into this result in field order.
        answered = getattr(self.context_value, "answered_roots", None)
        if answered and root_type is self.schema.query_type:
            grouped_field_set = {k: v for k, v in grouped_field_set.items() if k not in answered}
        return super().execute_collected_root_fields(root_type, root_value, grouped_field_set, serially,
                                                     new_defer_usages)

    def execute_fields(self, parent_type: GraphQLObjectType, source_value: Any, path: Path | None,
                       grouped_field_set: Any, position_context: Any) -> Any:
        if not self._inline_allowed:
            return super().execute_fields(parent_type, source_value, path, grouped_field_set, position_context)
        plan = self._plans.get(id(grouped_field_set))
        if plan is None or plan.keep is not grouped_field_set:
            plan = self._plans[id(grouped_field_set)] = self._plan_for(parent_type, grouped_field_set)
        if not plan.inline:
            return super().execute_fields(parent_type, source_value, path, grouped_field_set, position_context)

        results: dict[str, Any] = dict.fromkeys(plan.order)  # response order = selection order
        rest = plan.rest
        copied = False
        for response_name, attribute, leaf, non_null, details in plan.inline:
            try:
                value = parent_type.name if attribute is None else getattr(source_value, attribute)
                if value is None:
                    if not non_null:
                        continue  # already None
                else:
                    coerced = leaf.coerce_output_value(value)
                    if coerced is not None and coerced is not Undefined:
                        results[response_name] = coerced
                        continue
            except Exception:  # noqa: S110 — handed over below; graphql-core re-runs and reports it
                pass
            # null where null is not allowed, or a value that does not coerce: graphql-core
            # runs this field too and reports the error exactly as it would have
            if not copied:
                rest, copied = dict(rest), True
            rest[response_name] = details
        if not rest:
            return results
        if copied:  # keep selection order among the fields handed over
            rest = {name: rest[name] for name in plan.order if name in rest}
        others = super().execute_fields(parent_type, source_value, path, rest, position_context)
        if self.is_awaitable(others):
            return self._merge_later(results, rest, others)
        return self._merge(results, rest, cast(dict[str, Any], others))

    @staticmethod
    def _merge(results: dict[str, Any], handed_over: dict[str, Any], others: dict[str, Any]) -> dict[str, Any]:
        for name in handed_over:
            if name in others:
                results[name] = others[name]
            else:  # graphql-core leaves out a field it does not know
                del results[name]
        return results

    async def _merge_later(self, results: dict[str, Any], handed_over: dict[str, Any],
                           others: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        return self._merge(results, handed_over, await others)

    def build_per_event_executor(self, payload: Any) -> Any:
        executor = cast(TenantryExecutor, super().build_per_event_executor(payload))
        executor._plans = {}  # this event's field sets; the selection plans stay shared
        return executor

    def _plan_for(self, parent_type: GraphQLObjectType, grouped_field_set: Any) -> _Plan:
        key = (parent_type.name, *((name, id(details[0].node)) for name, details in grouped_field_set.items()))
        known = self._selection_plans.get(key)
        if known is None:
            known = self._selection_plans[key] = self._plan(parent_type, grouped_field_set)
            return known
        return _Plan(grouped_field_set, known.inline, known.rest, known.order)

    def _plan(self, parent_type: GraphQLObjectType, grouped_field_set: Any) -> _Plan:
        inline: list[_Inline] = []
        rest: dict[str, Any] = {}
        for response_name, details in grouped_field_set.items():
            leaf = inline_leaf(parent_type, details[0].node)
            if leaf is None:
                rest[response_name] = details
                continue
            inline.append((response_name, *leaf, details))
        return _Plan(grouped_field_set, inline, rest, list(grouped_field_set))


def inline_leaf(parent_type: GraphQLObjectType, node: Any) -> tuple[str | None, GraphQLLeafType, bool] | None:
    """How a field is read inline — (its attribute, None for __typename; its scalar or enum type;
    whether it is non-null) — or None when graphql-core must run it: a resolver of its own,
    arguments, or a type that is not a leaf. Shared by this executor and the direct mutations."""
    name = node.name.value
    field = TypeNameMetaFieldDef if name == "__typename" else parent_type.fields.get(name)
    if field is None:
        return None
    attribute: str | None = None
    if name != "__typename":
        if not isinstance(field.resolve, AttributeResolver) or field.args or node.arguments:
            return None
        attribute = field.resolve.name
    non_null = isinstance(field.type, GraphQLNonNull)
    leaf = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
    return (attribute, leaf, non_null) if is_leaf_type(leaf) else None
