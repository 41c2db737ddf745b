"""Compiled reads: a query answered by ONE SQL statement per plane, without GraphQL execution.

For the read queries that carry volume, GraphQL execution in Python (a resolver, a record
and a value completion per field, per row) costs several times what PostgreSQL spends
reading the same rows (issue 15's measurements). The planner here decides once per
(document, operation) which root fields have a SQL translation for every field they can
select; each request walks the selection (fragments, aliases and @skip/@include resolved with
its variables, by graphql-core's own `collect_fields`) into one statement per plane, a column
of JSON per root field (a root connection: its page's rows, a statement of its own in the same
round trip) — objects as JSON arrays, connections as their keyset page, correlated
subqueries for nested lists and to-one relations (app.graphql.engine.sql_json, sql_pages) —
with BEGIN, the role switch and COMMIT in the same round trip (`RequestTransaction.read_results`).
Python names the values, encodes ids and cursors and orjson writes the response.

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

import orjson
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
from graphql.execution.values import VariableValues
from graphql.validation import ASTValidationRule

from app.errors import AppError
from app.graphql.engine import direct, execution, fast_path
from app.graphql.roots import MANAGEMENT, ROOTS, TENANT

if TYPE_CHECKING:
    from app.graphql.context import Context

from app.graphql.engine.compiled_roots import CONNECTION_FIELDS, EDGE_FIELDS, PAGE_INFO_FIELDS, ROOT_SQL
from app.graphql.engine.sql_json import FIELDS, Fallback, Part, Statement, named
from app.graphql.engine.sql_pages import page_rows

__all__ = ["Answer", "Fallback", "Plan", "Planner", "run"]


# --- planning (once per document and operation) -----------------------------------------------------


@dataclass(frozen=True)
class Plan:
    operation: OperationDefinitionNode
    fragments: dict[str, FragmentDetails]
    compiled: frozenset[str]  # the root fields answered in SQL; the others run the generic way
    permissions: tuple[tuple[str, ...], ...]  # asked of the gate in this order, as the resolvers would
    routed: bool  # whether a compiled root needs the caller routed to a tenant
    variables: list[GraphQLVariableSignature] | None  # kept: building them costs more than coercing


@dataclass(frozen=True)
class Answer:
    """The compiled roots' values by response name (JSON that PostgreSQL built stays its bytes, as an
    orjson.Fragment), in the operation's field order. `rest`: the response names the generic path
    answers (nothing: the whole `data` is here)."""

    pieces: dict[str, Any]
    order: tuple[str, ...]
    rest: frozenset[str]

    def data(self) -> bytes:
        return orjson.dumps({name: self.pieces[name] for name in self.order})

    def merged(self, generic: dict[str, Any] | None) -> dict[str, Any] | None:
        """The whole `data`: the generic path's values and these, in field order. Null stays null:
        a non-null root the generic path could not answer nulls all of `data`, on either path."""
        if generic is None:
            return None
        return {name: self.pieces[name] if name in self.pieces else generic[name]
                for name in self.order if name in self.pieces or name in generic}


class Planner:
    def __init__(self, schema: GraphQLSchema, *, max_tokens: int,
                 extra_rules: tuple[type[ASTValidationRule], ...]) -> None:
        self.schema = schema
        self.max_tokens = max_tokens
        self.rules = tuple(specified_rules) + extra_rules
        self._plans: OrderedDict[tuple[str, str | None], Plan | direct.MutationPlan | None] = OrderedDict()

    def plan(self, query: str, operation_name: str | None) -> Plan | None:
        """The compiled read plan of a query operation (None: it takes the generic path)."""
        found = self._cached(query, operation_name)
        return found if isinstance(found, Plan) else None

    def mutation(self, query: str, operation_name: str | None) -> direct.MutationPlan | None:
        """The direct plan of a mutation operation (app.graphql.engine.direct), or None."""
        found = self._cached(query, operation_name)
        return found if isinstance(found, direct.MutationPlan) else None

    def _cached(self, query: str, operation_name: str | None) -> Plan | direct.MutationPlan | None:
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

    def _plan(self, query: str, operation_name: str | None) -> Plan | direct.MutationPlan | None:
        try:
            document = fast_path._parse(query, self.max_tokens)
        except GraphQLError:
            return None
        if fast_path._validate(self.schema, document, self.rules):
            return None
        operation = _operation(document, operation_name)
        if operation is not None and operation.operation == OperationType.MUTATION:
            return direct.plan(self.schema, document, operation)
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
        try:
            nodes = [node for node in _fields(operation.selection_set, fragments) if node.name.value != "__typename"]
        except _Unsupported:
            return None
        # Per root field: compiled when every selection of it has a translation (aliases included).
        supported = {node.name.value for node in nodes}
        for node in nodes:
            name = node.name.value
            if name not in ROOT_SQL or not _supported(query_type.fields[name], node, fragments):
                supported.discard(name)
        if not supported:
            return None
        roots = [name for name in dict.fromkeys(node.name.value for node in nodes) if name in supported]
        permissions = tuple(dict.fromkeys(p for p in (ROOTS[r].permissions for r in roots) if p))
        return Plan(operation, fragments, frozenset(supported), permissions, any(ROOTS[r].routed for r in roots),
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


async def run(planner: Planner, plan: Plan, context: Context, variables: dict[str, Any] | None) -> Answer:
    """The compiled roots' JSON, or Fallback (before anything reached the database, or in a transaction
    that only read): the whole operation then runs the generic way."""
    schema = planner.schema
    coerced = _coerced(schema, plan, variables)
    query_type = schema.query_type
    assert query_type is not None
    roots = collect_fields(schema, plan.fragments, coerced, query_type, plan.operation).grouped_field_set
    names = {response_name: details[0].node.name.value for response_name, details in roots.items()}
    compiled = [r for r, name in names.items() if name in plan.compiled]
    if not compiled:  # @skip / @include left only generic roots
        raise Fallback
    routed, planes = await _admitted(plan, context, {ROOTS[names[r]].plane for r in compiled})
    q = Statement(schema, plan.operation, plan.fragments, coerced, routed, context)
    columns: dict[str, list[tuple[str, Part]]] = {plane: [] for plane in planes}
    guards: dict[str, list[str]] = {plane: [] for plane in planes}
    pages: list[tuple[str, str, Part]] = []  # (response name, plane, part): connections read as rows
    for response_name in compiled:
        name = names[response_name]
        assert _SAFE_NAME.match(response_name)
        plane = ROOTS[name].plane if ROOTS[name].plane in planes else next(iter(planes))
        seen = len(q.guards)
        expr = ROOT_SQL[name](q, query_type.fields[name], roots[response_name])
        if inspect.isawaitable(expr):
            expr = await expr
        if expr.rows is None:
            columns[plane].append((response_name, expr))
        else:  # a connection: its rows (and totalCount) are statements of their own
            pages.append((response_name, plane, expr))
        guards[plane] += q.guards[seen:]
    rest = frozenset(names) - frozenset(compiled)
    selects = [p for p in planes if columns[p] or guards[p]]
    statements = [(planes[p], "SELECT " + ", ".join([*(f"({e.sql})::text" for _, e in columns[p]), *guards[p]]))
                  for p in selects]
    for _, plane, part in pages:
        assert part.rows is not None
        statements += [(planes[plane], sql) for sql in part.rows if sql is not None]
    # With generic roots still to run, COMMIT waits: they read in this transaction. A failed guard
    # (checked below) sends the operation the generic way after COMMIT, in a transaction of its own.
    results, encoding = await context.management_db.read_results(
        statements, setup=list(dict.fromkeys(q.setup)), last=not rest)
    if encoding != "utf-8":  # the engine asks for UTF8: text values are taken as they are sent
        raise Fallback
    pieces: dict[str, Any] = {r: "Query" for r, name in names.items() if name == "__typename"}
    answers = iter(results)
    for plane in selects:
        pieces.update(_columns(next(answers), columns[plane], guarded=bool(guards[plane])))
    for response_name, _, part in pages:
        pieces[response_name] = _page(part, answers)
    return Answer(pieces, tuple(names), rest - pieces.keys())


async def _admitted(plan: Plan, context: Context, wanted: set[str]) -> tuple[Any, dict[str, Any]]:
    """The gate's answer for the plan's permissions, and the planes its roots read. Each plane's roots
    go in a statement of their own (on the one connection, one round trip); a root reading neither
    joins the first there is, so every plane here has a root."""
    try:
        routed = await context.routed() if plan.routed else None
        for permissions in plan.permissions:  # as Context.root asks them
            routed = await (context.authorize(permissions[0]) if len(permissions) == 1
                            else context.authorize_any(*permissions))
        planes = {TENANT: (await context.tenant_db()).plane} if TENANT in wanted else {}
        if MANAGEMENT in wanted or not planes:
            planes[MANAGEMENT] = context.management_db.plane
    except AppError as exc:
        raise Fallback from exc
    return routed, planes


def _coerced(schema: Any, plan: Plan, variables: dict[str, Any] | None) -> VariableValues:
    """The operation's variables, coerced the plan's fast way where it can, else graphql-core's."""
    coerced = execution.operation_variables(schema, plan.variables, plan.operation.variable_definitions or (),
                                            variables)
    if coerced is None:
        raise Fallback  # the generic path reports the variable errors
    return coerced


def _columns(result: Any, columns: list[tuple[str, Part]], *, guarded: bool) -> list[tuple[str, Any]]:
    """One plane's roots from its one row; the guard columns after them must all be true."""
    row = [result.get_value(0, c) for c in range(result.nfields)]
    if guarded and any(v != b"t" for v in row[len(columns):]):
        raise Fallback
    return [(response_name, _value(part, value)) for (response_name, part), value in zip(columns, row, strict=False)]


def _page(part: Part, answers: Iterator[Any]) -> Any:
    """A connection from its page's rows and (when asked) its count's one value."""
    assert part.rows is not None
    assert part.decode is not None
    rows = page_rows(next(answers))
    total = int(next(answers).get_value(0, 0)) if part.rows[1] is not None else None
    return part.decode([rows, total])


def _value(part: Part, value: bytes | None) -> Any:
    """A root's value from its column: null (NULL::json), the JSON as PostgreSQL built it, or decoded."""
    if value is None:
        return None
    return orjson.Fragment(value) if part.decode is None else part.decode(orjson.loads(value))
