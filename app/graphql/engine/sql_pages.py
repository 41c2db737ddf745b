"""Compiled reads, connections: a service's keyset page as PostgreSQL sends it (its rows as JSON
arrays, one more than the page, no window) and how Python makes the generic path's Connection of
it (app.services.pagination's own cursors). app.graphql.engine.sql_json builds the objects."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson
import psycopg
from graphql import GraphQLField, GraphQLObjectType
from graphql.execution.collect_fields import FieldDetails
from psycopg.abc import Buffer
from psycopg.adapt import AdaptersMap, Loader, Transformer

from app.graphql.engine.sql_json import (
    FIELDS,
    ISO,
    MAX_KEYS,
    Fallback,
    Part,
    Statement,
    checked,
    named,
    named_values,
    outer,
)
from app.services.inventory import devices as inventory
from app.services.pagination import encode_cursor


def key_cursor(row: list[Any]) -> str:
    """encode_cursor of the row's one key, an integer or a text (its first value)."""
    return encode_cursor(row[0])


def time_cursor(row: list[Any]) -> str:
    """encode_time_cursor of the row's (time, id): the time as datetime.isoformat() writes it (ISO in SQL)."""
    return base64.urlsafe_b64encode(f"t:{row[0]}|{row[1]}".encode()).decode()


KEY_SQL = {"time": ISO}  # a key column as its cursor needs it; the others as they are


@dataclass(frozen=True)
class Page:
    """A service's page: its statement's rows (size + 1, in key order) as SQL."""

    rows: str
    size: int
    key: tuple[str, ...]  # the columns of the order: ("id",) or ("time", "id")
    cursor: Callable[[list[Any]], str]  # a row's cursor, from its key's values (the row's first values)
    # totalCount's statement, built only when the selection asks for it (None: null, as the generic path)
    count: Callable[[], str] | None = None


Build = Callable[[list[list[Any]], bool, Any], Any]  # (the page's rows, hasNextPage, totalCount) → a field's value


def connection(q: Statement, field: GraphQLField, details: list[FieldDetails], page: Page) -> Part:
    """The generic path's Connection over a service's page: edges of the first `size` rows,
    hasNextPage from the extra row, endCursor the last edge's cursor. PostgreSQL sends the rows,
    each a JSON array of the key's values and then every edge selection's values, and totalCount;
    Python builds the connection (app.services.pagination's own cursors)."""
    connection_type = named(field)
    s = q.alias("s")
    cells = [KEY_SQL.get(k, "{c}").format(c=f"{s}.{k}") for k in page.key]
    size, cursor = page.size, page.cursor
    count = "NULL::int"
    builders: list[tuple[str, Build]] = []
    for response_name, field_details in q.subfields(connection_type, details).items():
        name = field_details[0].node.name.value
        if name == "__typename":
            builders.append((response_name, _constant(connection_type.name)))
        elif name == "edges":
            builders.append((response_name, _edges(q, named(connection_type.fields["edges"]), field_details, s,
                                                   cells, cursor)))
        elif name == "pageInfo":
            builders.append((response_name, _page_info(q, connection_type, field_details, cursor)))
        else:  # totalCount
            count = f"({page.count()})" if page.count is not None else count
            builders.append((response_name, lambda rows, more, total: total))
    if len(builders) > MAX_KEYS or len(cells) > 2 * MAX_KEYS:  # json_build_array takes at most 100 arguments
        raise Fallback
    order = ", ".join(f"{s}.{k}" for k in page.key)

    def decode(value: list[Any]) -> dict[str, Any]:
        rows, total = value
        more = len(rows) > size
        if more:
            rows = rows[:size]
        return {name: build(rows, more, total) for name, build in builders}

    return Part(f"(SELECT json_build_array(COALESCE(json_agg(json_build_array({', '.join(cells)}) ORDER BY {order}), "
                f"'[]'::json), {count}) FROM ({page.rows}) {s})", decode,
                rows=(f"SELECT {', '.join(cells)} FROM ({page.rows}) {s} ORDER BY {order}",
                      f"SELECT {count}" if count != "NULL::int" else None))


class _Parsed(Loader):
    """A value as its JSON reads: a nested selection's JSON, a JSON column, a numeric (PostgreSQL
    writes a numeric's text into JSON as it is)."""

    def load(self, data: Buffer) -> Any:
        return orjson.loads(bytes(data))


class _Refused(Loader):
    """A type whose text is not what its JSON would be (times are selected as ISO text, uuids and
    dates are not selected raw): the request goes the generic way rather than answer differently."""

    def load(self, data: Buffer) -> Any:
        raise Fallback


_ROW_TYPES = AdaptersMap(psycopg.adapters)
for _name in ("json", "jsonb", "numeric"):
    _ROW_TYPES.register_loader(_name, _Parsed)
for _name in ("uuid", "date", "time", "timetz", "timestamp", "timestamptz", "interval", "bytea"):
    _ROW_TYPES.register_loader(_name, _Refused)


@dataclass(frozen=True)
class _Rows:
    adapters: AdaptersMap = _ROW_TYPES
    connection: None = None  # text as UTF-8 (the engine asks the server for client_encoding UTF8)


def page_rows(result: Any) -> list[list[Any]]:
    """A page statement's rows (libpq's result) as the JSON aggregate would have read: each value by
    psycopg's C loaders for its type (a page of 100 in a fifth of the CPU of decoding them in
    Python), JSON and numerics parsed as JSON. For PostgreSQL, rows cost two thirds of the CPU of
    json_agg over json_build_array (docs/compiled-reads.md)."""
    loader = Transformer(_Rows())
    loader.set_pgresult(result)
    return loader.load_rows(0, result.ntuples, list)


def _constant(value: str) -> Build:
    return lambda rows, more, total: value


def _edges(q: Statement, edge_type: GraphQLObjectType, details: list[FieldDetails], s: str, cells: list[str],
           cursor: Callable[[list[Any]], str]) -> Build:
    """An edges selection's values, appended to the rows' `cells`, and how the rows become its edges."""
    getters: list[tuple[str, Callable[[list[Any]], Any]]] = []
    for edge_name, edge_details in q.subfields(edge_type, details).items():
        what = edge_details[0].node.name.value
        if what == "__typename":
            getters.append((edge_name, _same(edge_type.name)))
        elif what == "cursor":
            getters.append((edge_name, cursor))
        else:  # node: its values go in the row itself (one json_build_array a row less: 15% of a page's CPU)
            parts = q.values(named(edge_type.fields["node"]), edge_details, s)
            start = len(cells)
            cells.extend(p.sql for _, p in parts)
            getters.append((edge_name, named_values(tuple(n for n, _ in parts), tuple(p.decode for _, p in parts),
                                                    start)))
    if len(getters) == 2:  # edges { cursor node }, as nearly every client asks: no loop per row
        (first, get_first), (second, get_second) = getters
        return lambda rows, more, total: [{first: get_first(row), second: get_second(row)} for row in rows]

    def edges(rows: list[list[Any]], more: bool, total: Any) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            edge = {}
            for name, get in getters:
                edge[name] = get(row)
            out.append(edge)
        return out

    return edges


def _same(value: str) -> Callable[[list[Any]], str]:
    return lambda row: value


def _page_info(q: Statement, connection_type: GraphQLObjectType, details: list[FieldDetails],
               cursor: Callable[[list[Any]], str]) -> Build:
    builders: list[tuple[str, Build]] = []
    for info_name, info_details in q.subfields(named(connection_type.fields["pageInfo"]), details).items():
        what = info_details[0].node.name.value
        if what == "__typename":
            builders.append((info_name, _constant("PageInfo")))
        elif what == "hasNextPage":
            builders.append((info_name, lambda rows, more, total: more))
        else:  # endCursor: the last edge's
            builders.append((info_name, lambda rows, more, total: cursor(rows[-1]) if rows else None))
    return lambda rows, more, total: {name: build(rows, more, total) for name, build in builders}


def _group_devices(q: Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> Part:
    """Group.devices: the generic resolver's page (the devices in the group, or in it and all its
    subgroups, within scope), correlated on the enclosing group's row."""
    args = q.arguments(field, details)
    in_group = inventory.DeviceFilter(group_id=cast(int, outer(row, "id")),
                                      include_subgroups=bool(args.get("includeSubgroups")))
    stmt, size = checked(lambda: inventory.device_page(q.scope, filter=in_group, first=args.get("first"),
                                                        after=args.get("after"), cap=q.cap))
    return connection(q, field, details, Page(q.clause(stmt), size, ("id",), key_cursor,
                                                lambda: q.clause(inventory.count_statement(q.scope, in_group))))


def _group_subgroups(q: Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> Part:
    """Group.subgroups: the generic resolver's page of the group's children (in scope), correlated."""
    args = q.arguments(field, details)
    stmt, size = checked(lambda: inventory.group_page(q.scope, first=args.get("first"), after=args.get("after"),
                                                       cap=q.cap, parent_id=cast(int, outer(row, "id"))))
    return connection(q, field, details, Page(q.clause(stmt), size, ("id",), key_cursor))


# Connections inside an object, so built on this module's pages.
FIELDS["Group"].update(devices=_group_devices, subgroups=_group_subgroups)
