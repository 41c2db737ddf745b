"""Compiled reads: a query answered by ONE SQL statement whose result is the response's JSON.

For the read queries that carry volume, GraphQL execution in Python (a resolver, a record
and a value completion per field, per row) costs several times what PostgreSQL spends
building the same JSON (issue 15's measurements). The planner here decides once per
(document, operation) whether every field the operation can select has a SQL translation;
if so, each request walks the selection (fragments, aliases and @skip/@include resolved with
its variables, by graphql-core's own `collect_fields`) into one statement —
`json_build_object` per object, `json_agg` over a keyset page per connection, correlated
subqueries for nested lists and to-one relations — and writes PostgreSQL's text into the
response as it comes (`{"data":` + it + `}`), with BEGIN, the role switch and COMMIT in the
same round trip (`RequestTransaction.read_row`).

Same rules as the generic path, by construction:
- routing, permissions and the data gate are the access gate's (`Context.authorize`,
  `Context.tenant_db`), asked in the same order the resolvers ask;
- the group/device scope predicate is `Scope.devices` / `Scope.groups` compiled to SQL;
- filters are the inventory service's own (`app.services.inventory.devices.filtered`);
- page sizes and cursors go through `app.services.pagination`.
Whenever the answer would be anything but plain data — a refused caller, a rate limit, an
argument or cursor the generic path rejects, variables that do not coerce — nothing has been
sent to the database yet, and the request simply runs the generic way, which reports it
exactly as before. tests/test_compiled_reads.py runs a generated corpus on both paths under
several callers and compares the results.
"""

from __future__ import annotations

import inspect
import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    specified_rules,
)
from graphql.execution.collect_fields import FragmentDetails, collect_fields
from graphql.execution.get_variable_signature import GraphQLVariableSignature
from graphql.validation import ASTValidationRule

from app.errors import AppError
from app.graphql.engine import execution, fast_path
from app.graphql.roots import ANY, ROOTS, TENANT

if TYPE_CHECKING:
    from app.graphql.context import Context

from app.graphql.engine.compiled_roots import CONNECTION_FIELDS, EDGE_FIELDS, PAGE_INFO_FIELDS, ROOT_SQL
from app.graphql.engine.sql_json import FIELDS, MAX_KEYS, Fallback, Statement, named

__all__ = ["Fallback", "Plan", "Planner", "run"]


# --- planning (once per document and operation) -----------------------------------------------------


@dataclass(frozen=True)
class Plan:
    operation: OperationDefinitionNode
    fragments: dict[str, FragmentDetails]
    permissions: tuple[tuple[str, ...], ...]  # asked of the gate in this order, as the resolvers would
    plane: str  # TENANT or MANAGEMENT: one plane per compiled operation
    variables: list[GraphQLVariableSignature] | None  # kept: building them costs more than coercing


class Planner:
    def __init__(self, schema: GraphQLSchema, *, max_tokens: int,
                 extra_rules: tuple[type[ASTValidationRule], ...]) -> None:
        self.schema = schema
        self.max_tokens = max_tokens
        self.rules = tuple(specified_rules) + extra_rules
        self._plans: OrderedDict[tuple[str, str | None], Plan | None] = OrderedDict()

    def plan(self, query: str, operation_name: str | None) -> Plan | None:
        key = (query, operation_name)
        plans = self._plans
        if key in plans:
            plans.move_to_end(key)
            return plans[key]
        found = self._plan(query, operation_name)
        plans[key] = found
        if len(plans) > 1024:
            plans.popitem(last=False)
        return found

    def _plan(self, query: str, operation_name: str | None) -> Plan | None:
        try:
            document = fast_path._parse(query, self.max_tokens)
        except GraphQLError:
            return None
        if fast_path._validate(self.schema, document, self.rules):
            return None
        operation = _operation(document, operation_name)
        if operation is None or operation.operation != OperationType.QUERY:
            return None
        fragments: dict[str, FragmentDetails] = {}
        for definition in document.definitions:
            if isinstance(definition, FragmentDefinitionNode):
                if definition.variable_definitions:
                    return None
                fragments[definition.name.value] = FragmentDetails(definition, None)
        query_type = self.schema.query_type
        assert query_type is not None
        roots: list[str] = []
        for node in _fields(operation.selection_set, fragments):
            name = node.name.value
            if name == "__typename":
                continue
            if name not in ROOT_SQL or not _supported(query_type.fields[name], node, fragments):
                return None
            roots.append(name)
        planes = {ROOTS[r].plane for r in roots} - {ANY}
        if len(planes) > 1:
            return None
        permissions = tuple(dict.fromkeys(p for p in (ROOTS[r].permissions for r in roots) if p))
        return Plan(operation, fragments, permissions, planes.pop() if planes else ANY,
                    execution.variable_signatures(self.schema, operation.variable_definitions or ()))


def _operation(document: DocumentNode, name: str | None) -> OperationDefinitionNode | None:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if name is None:
        return operations[0] if len(operations) == 1 else None
    return next((o for o in operations if o.name is not None and o.name.value == name), None)


def _fields(selection_set: SelectionSetNode | None, fragments: dict[str, FragmentDetails]) -> Iterator[FieldNode]:
    """Every field a selection set can select, whatever its directives say."""
    if selection_set is None:
        return
    for selection in selection_set.selections:
        if any(d.name.value not in {"skip", "include"} for d in selection.directives or ()):
            raise _Unsupported
        if isinstance(selection, FieldNode):
            yield selection
        elif isinstance(selection, InlineFragmentNode):
            yield from _fields(selection.selection_set, fragments)
        elif isinstance(selection, FragmentSpreadNode):
            yield from _fields(fragments[selection.name.value].definition.selection_set, fragments)


class _Unsupported(Exception):
    pass


def _supported(field: GraphQLField, node: FieldNode, fragments: dict[str, FragmentDetails]) -> bool:
    try:
        return _check(named(field), node, fragments)
    except _Unsupported:
        return False


def _check(type_: GraphQLObjectType, node: FieldNode, fragments: dict[str, FragmentDetails]) -> bool:
    name = type_.name
    for child in _fields(node.selection_set, fragments):
        field_name = child.name.value
        if field_name == "__typename":
            continue
        if name.endswith("Connection"):
            if field_name not in CONNECTION_FIELDS:
                return False
            if field_name == "totalCount":
                continue
        elif name.endswith("Edge"):
            if field_name not in EDGE_FIELDS:
                return False
            if field_name == "cursor":
                continue
        elif name == "PageInfo":
            if field_name not in PAGE_INFO_FIELDS:
                return False
            continue
        elif field_name not in FIELDS.get(name, {}):
            return False
        child_type = type_.fields[field_name]
        if child.selection_set is not None and not _check(named(child_type), child, fragments):
            return False
    return True


# --- running ----------------------------------------------------------------------------------------


_SAFE_NAME = re.compile(r"^[_A-Za-z][_0-9A-Za-z]*$")


async def run(planner: Planner, plan: Plan, context: Context, variables: dict[str, Any] | None) -> bytes:
    """The response's `data` as JSON (UTF-8), or Fallback (before anything reached the database)."""
    schema = planner.schema
    coerced = execution.coerce_variables(schema, plan.variables, variables or {}) if plan.variables is not None \
        else None
    if coerced is None:  # defaults, omissions, errors: graphql-core's own coercion decides
        stock = execution.get_variable_values(schema, plan.operation.variable_definitions or (), variables or {})
        if isinstance(stock, list):
            raise Fallback  # the generic path reports the variable errors
        coerced = stock
    try:
        routed = await context.routed()
        for permissions in plan.permissions:  # as Context.root asks them
            routed = await (context.authorize(permissions[0]) if len(permissions) == 1
                            else context.authorize_any(*permissions))
        db = await context.tenant_db() if plan.plane == TENANT else context.management_db
    except AppError as exc:
        raise Fallback from exc
    assert routed is not None
    query_type = schema.query_type
    assert query_type is not None
    q = Statement(schema, plan.operation, plan.fragments, coerced, routed, context)
    roots = collect_fields(schema, plan.fragments, coerced, query_type, plan.operation).grouped_field_set
    if len(roots) > MAX_KEYS:
        raise Fallback
    parts = []
    for response_name, details in roots.items():
        name = details[0].node.name.value
        assert _SAFE_NAME.match(response_name)
        if name == "__typename":
            parts.append(f"'{response_name}', 'Query'")
            continue
        expr = ROOT_SQL[name](q, query_type.fields[name], details)
        if inspect.isawaitable(expr):
            expr = await expr
        parts.append(f"'{response_name}', {expr}")
    statement = f"SELECT json_build_object({', '.join(parts)})::text"
    if q.guards:
        statement += f", {' AND '.join(q.guards)}"
    # With guards, COMMIT waits: the generic path may still have to run in this transaction.
    row = await db.read_row(statement, setup=list(dict.fromkeys(q.setup)), last=not q.guards)
    if q.guards and row[1] != b"t":
        raise Fallback
    data = row[0]
    assert data is not None  # json_build_object of a row is never null
    return data
