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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    specified_rules,
)
from graphql.execution.collect_fields import FieldDetails, FragmentDetails, collect_fields, collect_subfields
from graphql.execution.get_variable_signature import GraphQLVariableSignature
from graphql.execution.values import VariableValues, get_argument_values
from graphql.validation import ASTValidationRule
from psycopg import sql
from sqlalchemy import column as sql_column
from sqlalchemy import table
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.util import LRUCache
from strawberry.utils.str_converters import to_camel_case, to_snake_case

from app.access.principal import Routed
from app.access.scope import Scope
from app.errors import AppError
from app.graphql.engine import execution, fast_path
from app.graphql.roots import ANY, ROOTS, TENANT
from app.ids import current_tenant
from app.models.management import USAGE_COUNTERS, USAGE_SNAPSHOTS
from app.services.data import alarms as alarm_service
from app.services.data import events as event_service
from app.services.data import measurements as measurement_service
from app.services.data import operations as operation_service
from app.services.inventory import devices as inventory
from app.services.tenants import queries as tenant_service
from app.services.usage import statistics as usage_service

if TYPE_CHECKING:
    from app.graphql.context import Context

_DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
_MAX_KEYS = 50  # json_build_object takes at most 100 arguments
# datetime.isoformat() of a UTC time: six fractional digits, none at all when they are all zero.
_ISO = "replace(to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'), '.000000+', '+')"
# encode_cursor of an integer key: urlsafe base64 of "k:<digits>". Plain base64 is the same
# here: no 6-bit group of "k", ":" and ASCII digits reaches 62 or 63 ("+", "/"), and a 64-bit
# key gives at most 28 characters, far below the 76 at which PostgreSQL wraps lines.
_CURSOR = "encode(convert_to('k:' || {c}::text, 'UTF8'), 'base64')"


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|__\[POSTCOMPILE_(\w+)\]|%%")
_COMPILED: Any = LRUCache(1000)  # statement shape → SQLAlchemy's compiled form (its own cache, as in execution)


class Fallback(Exception):
    """This request takes the generic path; nothing was sent to the database for it."""


# --- the SQL being built ----------------------------------------------------------------------------


class _Statement:
    def __init__(self, schema: GraphQLSchema, operation: OperationDefinitionNode,
                 fragments: dict[str, FragmentDetails], variables: VariableValues, routed: Routed,
                 context: Context) -> None:
        self.schema = schema
        self.routed = routed
        self.context = context  # the request's management plane and platform (lookups a root makes first)
        self.operation = operation
        self.fragments = fragments
        self.variables = variables
        self.scope = routed.scope
        self.cap = context.cap
        self.setup: list[str] = []  # statements of the same transaction to run first (settings)
        self.tenant_of_rows = ""  # usage: the tenant its day rows belong to
        # Conditions the generic path checks first (a device in scope): if one fails, the
        # request takes the generic path, in the same (read-only) transaction, for its error.
        self.guards: list[str] = []
        self._aliases = 0

    @staticmethod
    def bind(value: Any) -> str:
        """A value as a SQL literal, quoted by psycopg's own adapters: the statement goes by the
        simple protocol (with BEGIN, the role switch and COMMIT in one round trip), which takes
        no parameters. Integers, the common case, are written as they are."""
        if type(value) is int:
            return str(value)
        try:
            return sql.Literal(value).as_string(None)
        except psycopg.Error as exc:  # a value PostgreSQL cannot hold (a NUL character): the generic path
            raise Fallback from exc

    def alias(self, stem: str) -> str:
        self._aliases += 1
        return f"{stem}{self._aliases}"

    def clause(self, element: ClauseElement) -> str:
        """A SQLAlchemy statement or condition from the services, its parameters as literals.

        Compiled once per statement shape (SQLAlchemy's own cache key, which leaves the values
        out); each request only renders its values into the cached text."""
        compiled: Any
        compiled, extracted, _, _ = element._compile_w_cache(
            _DIALECT, compiled_cache=_COMPILED, column_keys=[])
        values = compiled.construct_params(extracted_parameters=extracted)
        expanding = (compiled.bind_names[b] for b in compiled.post_compile_params)
        if any(not values.get(name, True) for name in expanding):
            # An empty IN list: SQLAlchemy renders its own always-false form (rare; not cached).
            compiled = element.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
            values = compiled.params
        processors: dict[str, Any] = compiled._bind_processors  # as SQLAlchemy sends them (JSON serialised)

        def literal(match: re.Match[str]) -> str:
            if match.group(0) == "%%":  # pyformat's escape, pointless without parameters
                return "%"
            name = match.group(1) or match.group(2)
            value = values[name]
            if match.group(2) is not None:  # an expanding IN list
                return ", ".join(self.bind(v) for v in value)
            process = processors.get(name)
            return self.bind(process(value) if process is not None else value)

        return _PLACEHOLDER.sub(literal, compiled.string)

    def subfields(self, type_: GraphQLObjectType, details: list[FieldDetails]) -> dict[str, list[FieldDetails]]:
        return collect_subfields(self.schema, self.fragments, self.variables, self.operation, type_,
                                 details).grouped_field_set

    def arguments(self, field: GraphQLField, details: list[FieldDetails]) -> dict[str, Any]:
        try:
            return get_argument_values(field, details[0].node, self.variables)
        except GraphQLError as exc:
            raise Fallback from exc

    def object(self, type_: GraphQLObjectType, details: list[FieldDetails], row: str) -> str:
        """json_build_object of the selection on `type_`, reading the row aliased `row`."""
        fields = self.subfields(type_, details)
        if len(fields) > _MAX_KEYS:
            raise Fallback
        resolvers = _FIELDS[type_.name]
        parts = []
        for response_name, field_details in fields.items():
            name = field_details[0].node.name.value
            if name == "__typename":
                expr = f"'{type_.name}'"
            else:
                expr = resolvers[name](self, type_.fields[name], field_details, row)
            parts.append(f"'{response_name}', {expr}")
        return f"json_build_object({', '.join(parts)})"


@lru_cache(maxsize=4096)
def _scope_sql(scope: Scope, kind: str, column: str) -> str:
    """Scope's own predicate (devices or groups) on `row.column`, as SQL with its ids inlined
    (they are integers), cached per scope."""
    row, name = column.split(".")
    target = table(row, sql_column(name)).c[name]
    predicate = scope.devices(target) if kind == "devices" else scope.groups(target)
    return str(predicate.compile(dialect=_DIALECT, compile_kwargs={"literal_binds": True}))


def _named(field: GraphQLField) -> GraphQLObjectType:
    type_ = field.type
    while isinstance(type_, GraphQLNonNull | GraphQLList):
        type_ = type_.of_type
    assert isinstance(type_, GraphQLObjectType)
    return type_


# --- field translations -----------------------------------------------------------------------------

Resolve = Callable[[_Statement, GraphQLField, list[FieldDetails], str], str]


def _column(name: str, fmt: str = "{c}") -> Resolve:
    def resolve(q: _Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> str:
        return fmt.format(c=f"{row}.{name}")

    return resolve


def _device_parent(q: _Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> str:
    p = q.alias("p")
    return (f"(SELECT {q.object(_named(field), details, p)} FROM devices {p} "
            f"WHERE {p}.id = {row}.parent_id AND {_scope_sql(q.scope, 'devices', f'{p}.id')})")


def _device_children(q: _Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> str:
    c = q.alias("c")
    return (f"COALESCE((SELECT json_agg({q.object(_named(field), details, c)} ORDER BY {c}.id) FROM devices {c} "
            f"WHERE {c}.parent_id = {row}.id AND {_scope_sql(q.scope, 'devices', f'{c}.id')}), '[]'::json)")


def _device_groups(q: _Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> str:
    g, m = q.alias("g"), q.alias("m")
    return (f"COALESCE((SELECT json_agg({q.object(_named(field), details, g)} ORDER BY {g}.id) FROM groups {g} "
            f"JOIN group_devices {m} ON {m}.group_id = {g}.id WHERE {m}.device_id = {row}.id "
            f"AND {_scope_sql(q.scope, 'groups', f'{g}.id')}), '[]'::json)")


def _device_alarms(q: _Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> str:
    """Device.alarms: the newest `first` (0-100) alarms of the device, as alarms_of_devices."""
    from app.graphql.types.inventory import ALARM_PAGE_CAP

    args = q.arguments(field, details)
    first = args["first"]
    if not 0 <= first <= ALARM_PAGE_CAP:
        raise Fallback  # the generic path answers INVALID_INPUT
    statuses = sorted({s.value for s in args.get("status") or ()})
    a = q.alias("a")
    status = f" AND {a}.status IN ({', '.join(q.bind(s) for s in statuses)})" if statuses else ""
    return (f"COALESCE((SELECT json_agg({q.object(_named(field), details, a)} ORDER BY {a}.id DESC) FROM "
            f"(SELECT * FROM alarms {a} WHERE {a}.device_id = {row}.id AND "
            f"{_scope_sql(q.scope, 'devices', f'{a}.device_id')}{status} ORDER BY {a}.id DESC LIMIT {first}) {a}), "
            f"'[]'::json)")


def _device_external_ids(q: _Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> str:
    x = q.alias("x")
    return (f"COALESCE((SELECT json_agg({q.object(_named(field), details, x)} ORDER BY {x}.type, {x}.value) "
            f"FROM external_ids {x} WHERE {x}.device_id = {row}.id), '[]'::json)")


def _global(type_name: str, column: str) -> Resolve:
    """The column's global id (app.ids.encode: base64url of "Type:tenant:n", unpadded) for the
    request's tenant; NULL stays NULL. PostgreSQL's base64 breaks lines only after 76 characters,
    beyond the longest id."""
    def resolve(q: _Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> str:
        prefix = q.bind(f"{type_name}:{current_tenant()}:")
        return (f"rtrim(translate(encode(convert_to({prefix} || {row}.{column}::text, 'UTF8'), 'base64'), "
                f"'+/', '-_'), '=')")

    return resolve


_DEVICE_ID = _global("Device", "device_id")

_TENANT_FIELDS = {"id": "id", "domain": "domain", "company": "company", "kind": "kind", "status": "status",
                  "parentId": "parent_id", "depth": "depth", "allowCreateTenants": "allow_create_tenants",
                  "contactName": "contact_name", "contactEmail": "contact_email",
                  "customProperties": "custom_properties", "template": "template", "createdAt": "created_at",
                  "updatedAt": "updated_at", "schemaVersion": "schema_version", "parentAccess": "parent_access"}

_FIELDS: dict[str, dict[str, Resolve]] = {
    "Device": {"id": _global("Device", "id"), "name": _column("name"), "type": _column("type"),
               "owner": _column("owner"), "fragments": _column("fragments"), "createdAt": _column("created_at", _ISO),
               "updatedAt": _column("updated_at", _ISO), "parentId": _global("Device", "parent_id"),
               "parent": _device_parent,
               "children": _device_children, "groups": _device_groups, "externalIds": _device_external_ids,
               "alarms": _device_alarms},
    "Group": {"id": _global("Group", "id"), "name": _column("name"), "parentId": _global("Group", "parent_id"),
              "createdAt": _column("created_at", _ISO)},
    "ExternalIdentity": {"type": _column("type"), "value": _column("value")},
    "Tenant": {name: _column(column, _ISO if column in ("created_at", "updated_at") else "{c}")
               for name, column in _TENANT_FIELDS.items()},
    "Alarm": {"id": _global("Alarm", "id"), "deviceId": _DEVICE_ID, "type": _column("type"),
              "severity": _column("severity"), "status": _column("status"), "text": _column("text"),
              "count": _column("count"), "firstRaisedAt": _column("first_raised_at", _ISO),
              "lastRaisedAt": _column("last_raised_at", _ISO), "updatedAt": _column("updated_at", _ISO)},
    "Event": {"id": _global("Event", "id"), "deviceId": _DEVICE_ID, "time": _column("time", _ISO),
              "type": _column("type"), "text": _column("text"), "attributes": _column("attributes"),
              "createdAt": _column("created_at", _ISO), "updatedAt": _column("updated_at", _ISO)},
    "Measurement": {"id": _global("Measurement", "id"), "deviceId": _DEVICE_ID, "time": _column("time", _ISO),
                    "type": _column("type"), "series": _column("series"), "value": _column("value"),
                    "unit": _column("unit")},
    "SeriesPoint": {"series": _column("series"), "bucket": _column("bucket", _ISO), "min": _column("min"),
                    "max": _column("max"), "avg": _column("avg"), "count": _column("count"), "sum": _column("sum")},
    "Operation": {"id": _global("Operation", "id"), "deviceId": _DEVICE_ID, "status": _column("status"),
                  "description": _column("description"), "payload": _column("payload"),
                  "failureReason": _column("failure_reason"), "createdAt": _column("created_at", _ISO),
                  "updatedAt": _column("updated_at", _ISO)},
    "UsageDay": {
        "day": _column("day", "to_char({c}, 'YYYY-MM-DD')"),
        "tenantId": lambda q, field, details, row: q.bind(q.tenant_of_rows),
        **{to_camel_case(c): _column(c) for c in (*USAGE_COUNTERS, *USAGE_SNAPSHOTS)},
        "totalResourceCreateAndUpdateCount": lambda q, field, details, row: "(" + " + ".join(
            f"{row}.{c}" for c in usage_service.CREATE_UPDATE) + ")",
    },
    "TenantUsageSummary": {
        "tenantId": _column("id"), "tenantDomain": _column("domain"), "tenantCompany": _column("company"),
        "parentTenantId": _column("parent_id"), "status": _column("status"),
        "creationTime": _column("created_at", _ISO), "deletionTime": _column("deleted_at", _ISO),
        "customProperties": _column("custom_properties"),
        **{to_camel_case(c): _column(c) for c in (*USAGE_COUNTERS, *USAGE_SNAPSHOTS, "peak_device_count",
                                                  "peak_storage_size")},
        "totalResourceCreateAndUpdateCount": lambda q, field, details, row: "(" + " + ".join(
            f"{row}.{c}" for c in usage_service.CREATE_UPDATE) + ")",
    },
}


def _int_cursor(row: str) -> str:
    return _CURSOR.format(c=f"{row}.id")


def _time_cursor(row: str) -> str:
    """encode_time_cursor: urlsafe base64 of "t:<time.isoformat()>|<id>"."""
    key = f"'t:' || {_ISO.format(c=f'{row}.time')} || '|' || {row}.id::text"
    return f"replace(translate(encode(convert_to({key}, 'UTF8'), 'base64'), '+/', '-_'), E'\\n', '')"


@dataclass(frozen=True)
class _Page:
    """A service's page: its statement's rows (size + 1, in key order) as SQL."""

    rows: str
    size: int
    key: tuple[str, ...]  # the columns of the order: ("id",) or ("time", "id")
    cursor: Callable[[str], str]  # a row's cursor, as SQL on the row alias given
    # totalCount's statement, built only when the selection asks for it (None: null, as the generic path)
    count: Callable[[], ClauseElement] | None = None


def _connection(q: _Statement, field: GraphQLField, details: list[FieldDetails], page: _Page) -> str:
    """The generic path's Connection over a service's page: edges of the first `size` rows,
    hasNextPage from the extra row, endCursor the last edge's cursor."""
    connection_type = _named(field)
    e, s = q.alias("e"), q.alias("s")
    size = str(page.size)
    fields = q.subfields(connection_type, details)
    parts = []
    for response_name, field_details in fields.items():
        name = field_details[0].node.name.value
        if name == "__typename":
            expr = f"'{connection_type.name}'"
        elif name == "edges":
            edge_type = _named(connection_type.fields["edges"])
            node_type = _named(edge_type.fields["node"])
            edge_parts = []
            for edge_name, edge_details in q.subfields(edge_type, field_details).items():
                what = edge_details[0].node.name.value
                if what == "__typename":
                    edge_parts.append(f"'{edge_name}', '{edge_type.name}'")
                elif what == "cursor":
                    edge_parts.append(f"'{edge_name}', {page.cursor(e)}")
                else:
                    edge_parts.append(f"'{edge_name}', {q.object(node_type, edge_details, e)}")
            expr = (f"COALESCE(json_agg(json_build_object({', '.join(edge_parts)}) ORDER BY {e}._n) "
                    f"FILTER (WHERE {e}._n <= {size}), '[]'::json)")
        elif name == "pageInfo":
            info_parts = []
            for info_name, info_details in q.subfields(_named(connection_type.fields["pageInfo"]),
                                                        field_details).items():
                what = info_details[0].node.name.value
                if what == "__typename":
                    info_parts.append(f"'{info_name}', 'PageInfo'")
                elif what == "hasNextPage":
                    info_parts.append(f"'{info_name}', count(*) > {size}")
                elif page.cursor is _int_cursor:  # ascending ids: the last edge's is the largest (no sort)
                    last = f"max({e}.id) FILTER (WHERE {e}._n <= {size})"
                    info_parts.append(f"'{info_name}', {_CURSOR.format(c=last)}")
                else:
                    info_parts.append(f"'{info_name}', (array_agg({page.cursor(e)} ORDER BY {e}._n DESC) "
                                      f"FILTER (WHERE {e}._n <= {size}))[1]")
            expr = f"json_build_object({', '.join(info_parts)})"
        else:  # totalCount
            expr = f"({q.clause(page.count())})" if page.count is not None else "NULL::int"
        parts.append(f"'{response_name}', {expr}")
    if len(parts) > _MAX_KEYS:
        raise Fallback
    order = ", ".join(f"{s}.{k}" for k in page.key)
    # Only the columns the selection reads pass the window (PostgreSQL then leaves the others
    # out of the service's statement too): a page of 100 devices asked for three fields
    # otherwise carried every device's fragments through.
    built = ", ".join(parts)
    used = sorted((set(re.findall(rf"\b{e}\.(\w+)", built)) | set(page.key)) - {"_n"})
    columns = ", ".join(f"{s}.{c}" for c in used)
    # GROUP BY (): one row, also when the selection aggregates nothing (pageInfo { __typename }).
    return (f"(SELECT json_build_object({built}) FROM (SELECT {columns}, row_number() OVER (ORDER BY {order}) "
            f"AS _n FROM ({page.rows}) {s}) {e} GROUP BY ())")


def _checked(build: Callable[[], Any]) -> Any:
    """A service's checks as the generic path runs them: a refusal takes the generic path."""
    try:
        return build()
    except AppError as exc:
        raise Fallback from exc


def _root_devices(q: _Statement, field: GraphQLField, details: list[FieldDetails]) -> str:
    from app.graphql.types.inventory import DeviceFilter, _filter  # the resolver's own conversion (and errors)

    args = q.arguments(field, details)
    given = args.get("filter")
    f = _checked(lambda: _filter(DeviceFilter(**{to_snake_case(k): v for k, v in given.items()})
                                 if given is not None else None))
    stmt, size = _checked(lambda: inventory.device_page(q.scope, filter=f, first=args.get("first"),
                                                        after=args.get("after"), cap=q.cap))
    return _connection(q, field, details, _Page(q.clause(stmt), size, ("id",), _int_cursor,
                                                lambda: inventory.count_statement(q.scope, f)))


def _by_id(q: _Statement, field: GraphQLField, details: list[FieldDetails], table: str) -> str:
    """device(id) / group(id): the row in scope, or null (an id that parses as none names nothing)."""
    key = _checked(lambda: inventory.parse_id(q.arguments(field, details)["id"], table[:-1]))
    if key is None:
        return "NULL::json"
    r = q.alias(table[0])
    return (f"(SELECT {q.object(_named(field), details, r)} FROM {table} {r} WHERE {r}.id = {q.bind(key)} "
            f"AND {_scope_sql(q.scope, table, f'{r}.id')})")


def _root_device(q: _Statement, field: GraphQLField, details: list[FieldDetails]) -> str:
    return _by_id(q, field, details, "devices")


def _root_groups(q: _Statement, field: GraphQLField, details: list[FieldDetails]) -> str:
    args = q.arguments(field, details)
    parent = args.get("parentId")
    stmt, size = _checked(lambda: inventory.group_page(
        q.scope, first=args.get("first"), after=args.get("after"), cap=q.cap,
        parent_id=inventory.require_id(parent, "group") if parent is not None else None,
        roots_only=parent is None and q.scope.unrestricted))
    return _connection(q, field, details, _Page(q.clause(stmt), size, ("id",), _int_cursor))


def _root_alarms(q: _Statement, field: GraphQLField, details: list[FieldDetails]) -> str:
    from app.graphql.types.data import AlarmFilter, alarm_filter  # the resolver's own conversion

    args = q.arguments(field, details)
    given = args.get("filter")
    f = alarm_filter(AlarmFilter(**{to_snake_case(k): v for k, v in given.items()})
                     if given is not None else None)
    stmt, size = _checked(lambda: alarm_service.alarm_page(q.scope, filter=f, first=args.get("first"),
                                                           after=args.get("after"), cap=q.cap))
    return _connection(q, field, details, _Page(q.clause(stmt), size, ("id",), _int_cursor))


def _root_operations(q: _Statement, field: GraphQLField, details: list[FieldDetails]) -> str:
    args = q.arguments(field, details)
    status = args.get("status")
    stmt, size = _checked(lambda: operation_service.operation_page(
        q.scope, device_id=args.get("deviceId"), status=status.value if status else None, first=args.get("first"),
        after=args.get("after"), cap=q.cap))
    return _connection(q, field, details, _Page(q.clause(stmt), size, ("id",), _int_cursor))


def _root_events(q: _Statement, field: GraphQLField, details: list[FieldDetails]) -> str:
    args = q.arguments(field, details)
    stmt, size = _checked(lambda: event_service.event_page(
        q.scope, device_id=args.get("deviceId"), type=args.get("type"), start=args.get("from"), end=args.get("to"),
        first=args.get("first"), after=args.get("after"), cap=q.cap))
    return _connection(q, field, details, _Page(q.clause(stmt), size, ("time", "id"), _time_cursor))


def _root_group(q: _Statement, field: GraphQLField, details: list[FieldDetails]) -> str:
    return _by_id(q, field, details, "groups")


def _root_subtenant_usage(q: _Statement, field: GraphQLField, details: list[FieldDetails]) -> str:
    args = q.arguments(field, details)
    try:
        stmt = usage_service.summary_statement(q.routed, start=args["from"], end=args["to"],
                                               include_descendants=args["includeDescendants"],
                                               include_deleted=args["includeDeleted"])
    except AppError as exc:
        raise Fallback from exc
    u = q.alias("u")
    q.setup.append(usage_service.SUMMARY_SETUP)
    return (f"(SELECT COALESCE(json_agg({q.object(_named(field), details, u)} ORDER BY {u}.id), '[]'::json) "
            f"FROM ({q.clause(stmt)}) {u})")


_CURSOR_TEXT = "replace(translate(encode(convert_to('k:' || {c}, 'UTF8'), 'base64'), '+/', '-_'), E'\\n', '')"


def _text_cursor(row: str) -> str:
    """encode_cursor of a text key (tenant ids), exactly as base64.urlsafe_b64encode writes it."""
    return _CURSOR_TEXT.format(c=f"{row}.id")


def _root_measurements(q: _Statement, field: GraphQLField, details: list[FieldDetails]) -> str:
    args = q.arguments(field, details)
    size, key = _checked(lambda: measurement_service.measurement_checks(
        device_id=args["deviceId"], start=args.get("from"), end=args.get("to"), first=args.get("first"), cap=q.cap))
    stmt = _checked(lambda: measurement_service.measurement_page(
        key, start=args.get("from"), end=args.get("to"), type=args.get("type"), series=args.get("series"),
        after=args.get("after"), size=size))
    q.guards.append(f"EXISTS ({q.clause(inventory.devices_in_scope(q.scope, [key]))})")
    return _connection(q, field, details, _Page(q.clause(stmt), size, ("time", "id"), _time_cursor))


def _root_measurement_series(q: _Statement, field: GraphQLField, details: list[FieldDetails]) -> str:
    args = q.arguments(field, details)
    key = _checked(lambda: measurement_service.series_checks(
        device_id=args["deviceId"], start=args["from"], end=args["to"], interval=args["interval"].value))
    stmt = measurement_service.series_statement(key, start=args["from"], end=args["to"],
                                                interval=args["interval"].value, type=args.get("type"),
                                                series=args.get("series"))
    q.guards.append(f"EXISTS ({q.clause(inventory.devices_in_scope(q.scope, [key]))})")
    b = q.alias("b")
    return (f"COALESCE((SELECT json_agg({q.object(_named(field), details, b)} ORDER BY {b}.series, {b}.bucket) "
            f"FROM ({q.clause(stmt)}) {b}), '[]'::json)")


async def _root_tenant_by_id(q: _Statement, field: GraphQLField, details: list[FieldDetails]) -> str:
    """`tenantById`: the caller's own tenant or a descendant it administers, else null (as its resolver)."""
    ctx = q.context
    record = await tenant_service.visible_tenant(ctx.platform, ctx.management_db, q.routed,
                                                 q.arguments(field, details)["id"])
    return _tenant_literal(q, field, details, record) if record is not None else "NULL::json"


def _root_tenants(q: _Statement, field: GraphQLField, details: list[FieldDetails]) -> str:
    from app.graphql.types.tenants import TenantFilter, tenant_filter  # the resolver's own conversion

    args = q.arguments(field, details)
    given = args.get("filter")
    f = tenant_filter(TenantFilter(**{to_snake_case(k): v for k, v in given.items()}) if given is not None else None)
    stmt, size = _checked(lambda: tenant_service.subtree_page(q.routed, first=args.get("first"),
                                                              after=args.get("after"), cap=q.cap, filter=f))
    return _connection(q, field, details, _Page(q.clause(stmt), size, ("id",), _text_cursor,
                                                lambda: tenant_service.count_subtree_statement(q.routed)))


def _root_tenant(q: _Statement, field: GraphQLField, details: list[FieldDetails]) -> str:
    """`tenant`: the routed tenant's record as the gate holds it (the generic resolver reads no
    table either), written as a JSON literal."""
    return _tenant_literal(q, field, details, q.routed.tenant)


def _tenant_literal(q: _Statement, field: GraphQLField, details: list[FieldDetails], record: Any) -> str:
    values: dict[str, Any] = {}
    for response_name, field_details in q.subfields(_named(field), details).items():
        name = field_details[0].node.name.value
        if name == "__typename":
            values[response_name] = "Tenant"
            continue
        value = getattr(record, _TENANT_FIELDS[name])
        values[response_name] = value.isoformat() if isinstance(value, datetime) else value
    return q.bind(orjson.dumps(values).decode()) + "::json"


async def _root_usage(q: _Statement, field: GraphQLField, details: list[FieldDetails]) -> str:
    args = q.arguments(field, details)
    try:
        record = await usage_service.readable_tenant(q.context.management_db, q.routed, args.get("tenantId"),
                                                     q.context.platform.registry)
        stmt = usage_service.daily_statement(tenant_id=record.id, start=args["from"], end=args["to"])
    except AppError as exc:
        raise Fallback from exc
    u = q.alias("u")
    q.tenant_of_rows = record.id
    return (f"(SELECT COALESCE(json_agg({q.object(_named(field), details, u)} ORDER BY {u}.day), '[]'::json) "
            f"FROM ({q.clause(stmt)}) {u})")


# Root fields and their translations; what each asks of the gate first is app.graphql.roots'.
_ROOTS: dict[str, Callable[[_Statement, GraphQLField, list[FieldDetails]], Any]] = {
    "device": _root_device,
    "devices": _root_devices,
    "group": _root_group,
    "groups": _root_groups,
    "alarms": _root_alarms,
    "events": _root_events,
    "measurements": _root_measurements,
    "measurementSeries": _root_measurement_series,
    "operations": _root_operations,
    "subtenantUsage": _root_subtenant_usage,
    "usage": _root_usage,
    "tenant": _root_tenant,
    "tenants": _root_tenants,
    "tenantById": _root_tenant_by_id,
}
# Connection types answered by `_connection`, with the fields it knows.
_CONNECTION_FIELDS = {"edges", "pageInfo", "totalCount"}
_EDGE_FIELDS = {"cursor", "node"}
_PAGE_INFO_FIELDS = {"hasNextPage", "endCursor"}


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
            if name not in _ROOTS or not _supported(query_type.fields[name], node, fragments):
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
        return _check(_named(field), node, fragments)
    except _Unsupported:
        return False


def _check(type_: GraphQLObjectType, node: FieldNode, fragments: dict[str, FragmentDetails]) -> bool:
    name = type_.name
    for child in _fields(node.selection_set, fragments):
        field_name = child.name.value
        if field_name == "__typename":
            continue
        if name.endswith("Connection"):
            if field_name not in _CONNECTION_FIELDS:
                return False
            if field_name == "totalCount":
                continue
        elif name.endswith("Edge"):
            if field_name not in _EDGE_FIELDS:
                return False
            if field_name == "cursor":
                continue
        elif name == "PageInfo":
            if field_name not in _PAGE_INFO_FIELDS:
                return False
            continue
        elif field_name not in _FIELDS.get(name, {}):
            return False
        child_type = type_.fields[field_name]
        if child.selection_set is not None and not _check(_named(child_type), child, fragments):
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
    q = _Statement(schema, plan.operation, plan.fragments, coerced, routed, context)
    roots = collect_fields(schema, plan.fragments, coerced, query_type, plan.operation).grouped_field_set
    if len(roots) > _MAX_KEYS:
        raise Fallback
    parts = []
    for response_name, details in roots.items():
        name = details[0].node.name.value
        assert _SAFE_NAME.match(response_name)
        if name == "__typename":
            parts.append(f"'{response_name}', 'Query'")
            continue
        expr = _ROOTS[name](q, query_type.fields[name], details)
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
