"""What an operation may cost, estimated before anything runs (issue 27's bounded cost per request).

The estimate is the number of objects the response can hold: a composite field resolved once
counts 1 for each time its parent is there; a connection's `edges`/`nodes` count its page size
(`first`/`last` up to the page-size cap; without them, the page the server then answers, 50); a
list with `first` (`Device.alarms`, `Device.children`) counts its `first` (or that argument's
default); an unpaged list (`subtenantUsage`) counts at `list_estimate` items. Scalars are
free: they ride on their object. Introspection (`__schema`, `__type`) is not counted (depth and
token limits bound it, and production serves it to verified callers only).

Over `limit` the operation is refused with QUERY_TOO_COMPLEX and `extensions.cost`/`limit`, on
HTTP, SSE and WebSocket alike, before any SQL. Documents whose page sizes are literals are
estimated once (cached by text); those that take them from variables, each time (a walk over
the document, tens of microseconds).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    NamedTypeNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
)
from graphql.type import GraphQLOutputType

from app.errors import QueryTooComplex
from app.graphql.engine import fast_path
from app.services.pagination import DEFAULT_PAGE_SIZE

SIZE_ARGUMENTS = ("first", "last")
ITEM_FIELDS = ("edges", "nodes")  # a connection's items: its page size counts them


class _Variable(Exception):
    pass


class CostModel:
    def __init__(self, schema: GraphQLSchema, *, limit: int, page_cap: int, list_estimate: int,
                 max_tokens: int) -> None:
        self.schema = schema
        self.limit = limit
        self.page_cap = page_cap
        self.list_estimate = list_estimate
        self.max_tokens = max_tokens
        self._static = lru_cache(maxsize=2048)(self._static_cost)

    def check(self, query: str, operation_name: str | None, variables: dict[str, Any] | None) -> int:
        """The operation's estimated cost; QUERY_TOO_COMPLEX over the limit. A document that does not
        parse or names no operation costs 0 here: execution reports it as it always has."""
        if self.limit <= 0:
            return 0
        cost = self._static(query, operation_name)
        if cost is None:
            document = fast_path._parse(query, self.max_tokens)
            cost = self.estimate(document, operation_name, variables or {})
        if cost > self.limit:
            raise QueryTooComplex(f"this operation may cost {cost}, more than the limit of {self.limit}: ask for "
                                  "smaller pages (first) or fewer nested lists", cost=cost, limit=self.limit)
        return cost

    def _static_cost(self, query: str, operation_name: str | None) -> int | None:
        try:
            document = fast_path._parse(query, self.max_tokens)
        except GraphQLError:
            return 0
        try:
            return self.estimate(document, operation_name, None)
        except _Variable:
            return None

    def estimate(self, document: DocumentNode, operation_name: str | None,
                 variables: dict[str, Any] | None) -> int:
        """`variables` None: raise _Variable where a page size comes from one."""
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)
                      and (operation_name is None or (d.name is not None and d.name.value == operation_name))]
        if len(operations) != 1:
            return 0
        root = self.schema.get_root_type(operations[0].operation)
        if root is None:
            return 0
        walk = _Walk(self, {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)},
                     variables)
        return walk.selections(root, operations[0].selection_set, 1, None)


class _Walk:
    def __init__(self, model: CostModel, fragments: dict[str, FragmentDefinitionNode],
                 variables: dict[str, Any] | None) -> None:
        self.model = model
        self.fragments = fragments
        self.variables = variables

    def selections(self, parent: GraphQLObjectType | GraphQLInterfaceType, selection_set: SelectionSetNode | None,
                   times: int, items: int | None) -> int:
        """The cost of a selection on `parent`, which is there `times` times (`items`: the page
        size when `parent` is a connection)."""
        total = 0
        for owner, field in self._fields(parent, selection_set, set()):
            total += self.field(owner, field, times, items)
        return total

    def _fields(self, parent: GraphQLObjectType | GraphQLInterfaceType, selection_set: SelectionSetNode | None,
                seen: set[str]) -> Iterator[tuple[GraphQLObjectType | GraphQLInterfaceType, FieldNode]]:
        for selection in selection_set.selections if selection_set else ():
            condition: NamedTypeNode | None
            if isinstance(selection, FieldNode):
                yield parent, selection
                continue
            if isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is None or name in seen:  # unknown or cyclic: validation refuses it
                    continue
                condition, inner = fragment.type_condition, fragment.selection_set
                seen = seen | {name}
            elif isinstance(selection, InlineFragmentNode):
                condition, inner = selection.type_condition, selection.selection_set
            else:
                continue
            owner = self.model.schema.get_type(condition.name.value) if condition else parent
            if isinstance(owner, GraphQLObjectType | GraphQLInterfaceType):
                yield from self._fields(owner, inner, seen)

    def field(self, parent: GraphQLObjectType | GraphQLInterfaceType, node: FieldNode, times: int,
              items: int | None) -> int:
        name = node.name.value
        definition = parent.fields.get(name) if not name.startswith("__") else None
        if definition is None:
            return 0
        kind: GraphQLOutputType = definition.type
        if isinstance(kind, GraphQLNonNull):
            kind = kind.of_type
        count = times
        if isinstance(kind, GraphQLList):
            count = times * (items if items is not None and name in ITEM_FIELDS else
                             self.size(node, definition.args, self.model.list_estimate))
            kind = kind.of_type
            while isinstance(kind, GraphQLNonNull | GraphQLList):
                kind = kind.of_type
        if not isinstance(kind, GraphQLObjectType | GraphQLInterfaceType):
            return 0  # scalars and enums ride on their object
        page = (self.size(node, definition.args, min(DEFAULT_PAGE_SIZE, self.model.page_cap))
                if _is_connection(kind) else None)
        return count + self.selections(kind, node.selection_set, count, page)

    def size(self, node: FieldNode, arguments: dict[str, Any], default: int) -> int:
        """A list's or page's size from `first`/`last` (a literal or a variable), at most the cap."""
        for argument in node.arguments or ():
            if argument.name.value not in SIZE_ARGUMENTS:
                continue
            value = argument.value
            if isinstance(value, VariableNode):
                if self.variables is None:
                    raise _Variable
                given = self.variables.get(value.name.value)
                if isinstance(given, int) and not isinstance(given, bool):
                    return max(0, min(given, self.model.page_cap))
                return default
            if isinstance(value, IntValueNode):
                return max(0, min(int(value.value), self.model.page_cap))
        for name in SIZE_ARGUMENTS:
            declared = arguments.get(name)
            if declared is not None and isinstance(declared.default_value, int):
                return max(0, min(declared.default_value, self.model.page_cap))
        return default


def _is_connection(kind: GraphQLObjectType | GraphQLInterfaceType) -> bool:
    return any(name in kind.fields for name in ITEM_FIELDS) and "pageInfo" in kind.fields
