"""Mutations whose answer is scalars, run without graphql-core's executor.

A mutation such as `createDevice(input: …) { id name }` spends a third of its handler's CPU
outside its resolver (py-spy, bench/peer.py case f): Strawberry's operation wrapper, building
graphql-core's executor, collecting fields, and completing a handful of values. Here, for an
operation whose root fields each return a scalar, an enum, or an object of which only plain
attribute fields are selected (`AttributeResolver`, no arguments, no directives, no fragments),
each root field's own resolver — Strawberry's, so argument conversion, field extensions and
`Info` are untouched — is called serially with a GraphQLResolveInfo built as graphql-core builds
it, and its value is completed inline by graphql-core's rules:

- an error in the arguments, the resolver or a completion is located as `located_error` locates
  it; a nullable field becomes null and execution goes on, a non-null one nulls its parent, and
  a non-null root nulls `data` and stops the fields after it (serial execution);
- a null where null is not allowed is graphql-core's "Cannot return null for non-nullable field",
  a value the object type disowns (`is_type_of`) its "Expected value of type", and a scalar is
  completed by graphql-core's own `complete_leaf_value`.

Anything else takes the generic path (`Schema.execute`): other operations, selections with
lists, nested objects, fragments or directives, and requests whose variables do not coerce
the fast way (nothing has run yet, so graphql-core reports them as before). The schema's only
extension (app.graphql.engine.fast_path) parses and validates, which the planner does with the
same caches. tests/test_direct_mutations.py runs both paths on the same mutations — real ones
through the app, and a small schema whose resolvers return every kind of bad value — and
compares the answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeGuard, cast

from graphql import (
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    GraphQLError,
    GraphQLField,
    GraphQLLeafType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    is_leaf_type,
    located_error,
)
from graphql.execution.executor import Executor
from graphql.execution.get_variable_signature import GraphQLVariableSignature
from graphql.execution.values import get_argument_values
from graphql.language import DocumentNode
from graphql.pyutils import Path, gather_with_cancel, inspect
from graphql.type.definition import GraphQLResolveInfoHelpers
from strawberry.execution import optimized_is_awaitable

from app.graphql.engine import execution

__all__ = ["MutationPlan", "plan", "run"]

# What Strawberry's executor checks values with (graphql-core's signature wants a TypeGuard).
_is_awaitable = cast(Callable[[Any], TypeGuard[Awaitable[Any]]], optimized_is_awaitable)


@dataclass(frozen=True)
class _Leaf:
    response_name: str
    name: str  # the field's name, for the non-null error's "Type.field"
    attribute: str | None  # None: __typename
    type: GraphQLLeafType
    non_null: bool
    node: FieldNode


@dataclass(frozen=True)
class _Root:
    response_name: str
    field: GraphQLField
    node: FieldNode
    non_null: bool
    leaf: GraphQLLeafType | None  # the field's type when it is a scalar or enum
    object: GraphQLObjectType | None  # else its object type, of which `leaves` are selected
    leaves: tuple[_Leaf, ...]


@dataclass(frozen=True)
class MutationPlan:
    operation: OperationDefinitionNode
    fragments: dict[str, FragmentDefinitionNode]
    roots: tuple[_Root, ...]
    variables: list[GraphQLVariableSignature] | None


def plan(schema: GraphQLSchema, document: DocumentNode, operation: OperationDefinitionNode) -> MutationPlan | None:
    """The direct plan of a valid mutation operation, or None when it takes the generic path."""
    mutation = schema.mutation_type
    if operation.operation != OperationType.MUTATION or mutation is None or operation.directives:
        return None
    selected = _plain_fields(operation.selection_set.selections)
    if selected is None:  # a fragment or a directive at the root
        return None
    roots: list[_Root] = []
    for node in selected:
        field = mutation.fields.get(node.name.value)
        if field is None or field.resolve is None:
            return None
        non_null = isinstance(field.type, GraphQLNonNull)
        type_ = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
        if is_leaf_type(type_) and node.selection_set is None:
            roots.append(_Root(_response_name(node), field, node, non_null, type_, None, ()))
            continue
        leaves = _leaves(type_, node) if isinstance(type_, GraphQLObjectType) else None
        if leaves is None:
            return None
        roots.append(_Root(_response_name(node), field, node, non_null, None, type_, leaves))
    if not roots or len({r.response_name for r in roots}) != len(roots):
        return None  # a response name selected twice: graphql-core merges the fields
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    return MutationPlan(operation, fragments, tuple(roots),
                        execution.variable_signatures(schema, operation.variable_definitions or ()))


def _plain_fields(selections: Sequence[Any]) -> list[FieldNode] | None:
    if all(isinstance(s, FieldNode) and not s.directives for s in selections):
        return list(selections)
    return None


def _response_name(node: FieldNode) -> str:
    return node.alias.value if node.alias else node.name.value


def _leaves(type_: GraphQLObjectType, node: FieldNode) -> tuple[_Leaf, ...] | None:
    selected = _plain_fields(node.selection_set.selections) if node.selection_set else None
    if not selected:
        return None
    leaves: list[_Leaf] = []
    for child in selected:
        found = execution.inline_leaf(type_, child)  # the fields TenantryExecutor reads inline
        if found is None:
            return None
        attribute, leaf, non_null = found
        leaves.append(_Leaf(_response_name(child), child.name.value, attribute, leaf, non_null, child))
    if len({leaf.response_name for leaf in leaves}) != len(leaves):
        return None
    return tuple(leaves)


# --- running ----------------------------------------------------------------------------------------


async def run(schema: GraphQLSchema, mutation_plan: MutationPlan, context: Any,
              variables: dict[str, Any] | None) -> ExecutionResult | None:
    """The operation's result, or None before anything ran (then the generic path runs it)."""
    coerced = execution.operation_variables(schema, mutation_plan.variables,
                                            mutation_plan.operation.variable_definitions or (), variables)
    if coerced is None:  # they do not coerce: the generic path reports it, nothing has run
        return None
    mutation = schema.mutation_type
    assert mutation is not None
    pending: list[Awaitable[Any]] = []
    helpers = GraphQLResolveInfoHelpers(gather=lambda values: gather_with_cancel(*values),
                                        track=lambda values: pending.extend(v for v in values if _is_awaitable(v)))
    data: dict[str, Any] = {}
    errors: list[GraphQLError] = []
    nulled = False
    try:
        for root in mutation_plan.roots:
            path = Path(None, root.response_name, mutation.name)
            info = GraphQLResolveInfo(root.node.name.value, [root.node], root.field.type, mutation, path, schema,
                                      mutation_plan.fragments, None, mutation_plan.operation, coerced, context,
                                      _is_awaitable, None, helpers)
            try:
                args = get_argument_values(root.field, root.node, coerced) \
                    if root.field.args or root.node.arguments else {}
                result = root.field.resolve(None, info, **args)  # type: ignore[misc]
                if _is_awaitable(result):
                    result = await result
                value = await _complete(root, result, info, path, errors)
            except Exception as exc:
                errors.append(located_error(exc, [root.node], path.as_list()))
                if root.non_null:
                    nulled = True  # serial execution stops: the fields after this one do not run
                    break
                value = None
            data[root.response_name] = value
    finally:
        for work in pending:  # work a resolver asked to have settled before the operation ends
            with suppress(Exception):  # settled and observed, as graphql-core's tracked work is
                await work
    return ExecutionResult(None if nulled else data, errors or None)


async def _complete(root: _Root, result: Any, info: GraphQLResolveInfo[Any], path: Path,
                    errors: list[GraphQLError]) -> Any:
    """A root field's value, completed as graphql-core's `complete_value` completes it."""
    if isinstance(result, Exception):
        raise result
    if result is None:
        if root.non_null:
            raise TypeError(f"Cannot return null for non-nullable field {info.parent_type}.{info.field_name}.")
        return None
    if root.leaf is not None:
        return Executor.complete_leaf_value(root.leaf, result)
    type_ = root.object
    assert type_ is not None
    if type_.is_type_of is not None:
        owned = type_.is_type_of(result, info)
        if _is_awaitable(owned):
            owned = await owned
        if not owned:
            raise GraphQLError(f"Expected value of type '{type_}' but got: {inspect(result)}.", [root.node])
    values: dict[str, Any] = {}
    for leaf in root.leaves:
        try:
            value = type_.name if leaf.attribute is None else getattr(result, leaf.attribute)
            if isinstance(value, Exception):
                raise value
            if value is None:
                if leaf.non_null:
                    raise TypeError(f"Cannot return null for non-nullable field {type_}.{leaf.name}.")
                values[leaf.response_name] = None
                continue
            values[leaf.response_name] = Executor.complete_leaf_value(leaf.type, value)
        except Exception as exc:
            error = located_error(exc, [leaf.node], Path(path, leaf.response_name, type_.name).as_list())
            if leaf.non_null:
                raise error from None  # nulls the object, as graphql-core's propagation does
            errors.append(error)
            values[leaf.response_name] = None
    return values
