"""Compiled reads, the SQL being built: one statement per plane and request, each root field a
column of JSON (the services' own relation statements nested as correlated subqueries), with
how Python turns that JSON into the response's value (`Part`). app.graphql.engine.compiled plans
and runs it; app.graphql.engine.compiled_roots translates the root fields.

Objects travel as JSON arrays (`json_build_array`, no keys) and connections as their keyset page
of one row more (no window, no FILTER), a root connection as rows rather than an aggregate
(app.graphql.engine.sql_pages.page_rows); Python names the values, encodes global ids and cursors
(app.ids, app.services.pagination themselves) and decides hasNextPage. Measured for 100 devices
(docs/compiled-reads.md): 0.10 ms of PostgreSQL CPU against 0.39 ms for the same response built
as JSON objects in SQL, for about 0.1 ms more of server CPU. The usage reports too: for 10,000 tenants'
summaries PostgreSQL sends 2 MB of arrays instead of 6.3 MB of objects (it writes a space around every
colon and after every comma), and the request takes 110 ms instead of 119."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import psycopg
from graphql import (
    GraphQLError,
    GraphQLField,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    OperationDefinitionNode,
)
from graphql.execution.collect_fields import FieldDetails, FragmentDetails, collect_subfields
from graphql.execution.values import VariableValues, get_argument_values
from psycopg import sql
from sqlalchemy import ColumnElement, Select, literal_column
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.util import LRUCache
from strawberry.utils.str_converters import to_camel_case

from app.access.principal import Routed
from app.access.scope import Scope
from app.errors import AppError
from app.ids import current_tenant, encoder
from app.models.management import USAGE_COUNTERS, USAGE_SNAPSHOTS
from app.services.data import alarms as alarm_service
from app.services.inventory import relations as inventory
from app.services.people import users as user_service
from app.services.sessions import login as login_service
from app.services.usage import statistics as usage_service

if TYPE_CHECKING:
    from app.graphql.context import Context

_DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
MAX_KEYS = 50  # json_build_object takes at most 100 arguments
# datetime.isoformat() of a UTC time: six fractional digits, none at all when they are all zero.
ISO = "replace(to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'), '.000000+', '+')"


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|__\[POSTCOMPILE_(\w+)\]|%%")
_COMPILED: Any = LRUCache(1000)  # statement shape → SQLAlchemy's compiled form (its own cache, as in execution)


class Fallback(Exception):
    """This request takes the generic path; nothing was sent to the database for it."""


Decode = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Part:
    """A selection as SQL (one JSON value) and how Python turns that value into the response's:
    None, when it already is (a scalar, or JSON built as objects in SQL)."""

    sql: str
    decode: Decode | None = None
    # A connection as a root field: its page's statement, each value a column (and its totalCount's, or
    # None), read as rows rather than one JSON aggregate (app.graphql.engine.sql_pages.connection).
    rows: tuple[str, str | None] | None = None


# --- the SQL being built ----------------------------------------------------------------------------


class Statement:
    def __init__(self, schema: GraphQLSchema, operation: OperationDefinitionNode,
                 fragments: dict[str, FragmentDetails], variables: VariableValues, routed: Routed | None,
                 context: Context) -> None:
        self.schema = schema
        self._routed = routed  # None: only roots that need no tenant (`me`) are compiled
        self.context = context  # the request's management plane and platform (lookups a root makes first)
        self.operation = operation
        self.fragments = fragments
        self.variables = variables
        self.cap = context.cap
        self.setup: list[str] = []  # statements of the same transaction to run first (settings)
        self.tenant_of_rows = ""  # usage: the tenant its day rows belong to
        # Conditions the generic path checks first (a device in scope): if one fails, the
        # request takes the generic path, in the same (read-only) transaction, for its error.
        self.guards: list[str] = []
        self._aliases = 0

    @property
    def routed(self) -> Routed:
        assert self._routed is not None, "planned: every root that reads a tenant needs one"
        return self._routed

    @property
    def scope(self) -> Scope:
        return self.routed.scope

    @staticmethod
    def bind(value: Any) -> str:
        """A value as a SQL literal, quoted by psycopg's own adapters: the statement goes by the
        simple protocol (with BEGIN, the role switch and COMMIT in one round trip), which takes
        no parameters. Integers, the common case, are written as they are; times in UTC, since
        Python keeps zones up to ±23:59 that PostgreSQL's input refuses beyond ±15:59."""
        if type(value) is int:
            return str(value)
        if isinstance(value, datetime) and value.tzinfo is not None:
            value = value.astimezone(UTC)
        try:
            return sql.Literal(value).as_string(None)
        except psycopg.Error as exc:  # a value PostgreSQL cannot hold (a NUL character): the generic path
            raise Fallback from exc

    def alias(self, stem: str) -> str:
        self._aliases += 1
        return f"{stem}{self._aliases}"

    @staticmethod
    def clause(element: ClauseElement) -> str:
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
                return ", ".join(Statement.bind(v) for v in value)
            process = processors.get(name)
            return Statement.bind(process(value) if process is not None else value)

        return _PLACEHOLDER.sub(literal, compiled.string)

    def subfields(self, type_: GraphQLObjectType, details: list[FieldDetails]) -> dict[str, list[FieldDetails]]:
        return collect_subfields(self.schema, self.fragments, self.variables, self.operation, type_,
                                 details).grouped_field_set

    def arguments(self, field: GraphQLField, details: list[FieldDetails]) -> dict[str, Any]:
        try:
            return get_argument_values(field, details[0].node, self.variables)
        except GraphQLError as exc:
            raise Fallback from exc

    def object(self, type_: GraphQLObjectType, details: list[FieldDetails], row: str) -> Part:
        """The selection on `type_`, reading the row aliased `row`: a JSON array of its values that
        Python names (null stays None)."""
        parts = self.values(type_, details, row)
        return Part(f"json_build_array({', '.join(p.sql for _, p in parts)})",
                    named_values(tuple(n for n, _ in parts), tuple(p.decode for _, p in parts)))

    def values(self, type_: GraphQLObjectType, details: list[FieldDetails], row: str) -> list[tuple[str, Part]]:
        """Each field of the selection on `type_` by response name, reading the row aliased `row`."""
        fields = self.subfields(type_, details)
        if len(fields) > MAX_KEYS:
            raise Fallback
        resolvers = FIELDS[type_.name]
        parts: list[tuple[str, Part]] = []
        for response_name, field_details in fields.items():
            name = field_details[0].node.name.value
            part = Part(f"'{type_.name}'") if name == "__typename" else \
                resolvers[name](self, type_.fields[name], field_details, row)
            parts.append((response_name, part))
        return parts


def named_values(names: tuple[str, ...], decodes: tuple[Decode | None, ...], start: int = 0) -> Decode:
    """An object's values (a JSON array from `start` on, or None) as its response names and values:
    zipped in C, then only the values that need it decoded (a page's rows are most of its Python)."""
    decoded = tuple((name, decode) for name, decode in zip(names, decodes, strict=True) if decode is not None)
    end = start + len(names)

    def values_named(values: list[Any] | None) -> dict[str, Any] | None:
        if values is None:
            return None
        named = dict(zip(names, values[start:end] if start else values, strict=True))
        for name, decode in decoded:
            named[name] = decode(named[name])
        return named

    return values_named


def listed(decode: Decode | None) -> Decode | None:
    """A list of values each decoded by `decode`."""
    if decode is None:
        return None
    return lambda values: [decode(v) for v in values]


def named(field: GraphQLField) -> GraphQLObjectType:
    type_ = field.type
    while isinstance(type_, GraphQLNonNull | GraphQLList):
        type_ = type_.of_type
    assert isinstance(type_, GraphQLObjectType)
    return type_


# --- field translations -----------------------------------------------------------------------------

Resolve = Callable[[Statement, GraphQLField, list[FieldDetails], str], Part]


def _column(name: str, fmt: str = "{c}") -> Resolve:
    def resolve(q: Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> Part:
        return Part(fmt.format(c=f"{row}.{name}"))

    return resolve


def _null(q: Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> Part:
    """A field only subscriptions fill (an object's change-log `position`): null in a query."""
    return Part("NULL")


def outer(row: str, column: str) -> ColumnElement[Any]:
    """The enclosing row's column, for a service's relation statement nested as a correlated subquery."""
    return literal_column(f"{row}.{column}")


@lru_cache(maxsize=4096)
def _relation_sql(build: Callable[..., Select[Any]], scope: Scope | None, row: str, column: str,
                  args: tuple[Any, ...] = (), *, limited: bool = False) -> str:
    """A service's relation statement for the enclosing row's `row.column`, rendered once per
    (relation, scope, row alias, arguments): building one (its scope predicate above all) costs
    about 0.4 ms, as much as the rest of a compiled request. The aggregate orders the rows, so the
    statement's own ORDER BY goes unless a LIMIT needs it (a sorted subquery is not flattened)."""
    keys = outer(row, column)
    statement = build(keys, *args) if scope is None else build(scope, keys, *args)
    return Statement.clause(statement if limited else statement.order_by(None))


def _many(q: Statement, field: GraphQLField, details: list[FieldDetails], sql: str, order: str) -> Part:
    """A list relation: the service's statement (rendered), aggregated in its order (`order`
    names the statement's own ORDER BY, on the alias `{r}`)."""
    r = q.alias("r")
    item = q.object(named(field), details, r)
    return Part(f"COALESCE((SELECT json_agg({item.sql} ORDER BY {order.format(r=r)}) FROM ({sql}) {r}), '[]'::json)",
                listed(item.decode))


def _one(q: Statement, field: GraphQLField, details: list[FieldDetails], sql: str) -> Part:
    """A to-one relation: the service's statement's row, or null."""
    x = q.alias("x")
    item = q.object(named(field), details, x)
    return Part(f"(SELECT {item.sql} FROM ({sql}) {x})", item.decode)


def _alarms(scope: Scope, keys: ColumnElement[Any], status: tuple[str, ...], limit: int) -> Select[Any]:
    return alarm_service.alarms_statement(scope, keys, status=status, limit=limit)


def _device_parent(q: Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> Part:
    return _one(q, field, details, _relation_sql(inventory.devices_statement, q.scope, row, "parent_id"))


def _device_children(q: Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> Part:
    """Device.children: the oldest `first` (0-500) child devices, as the loader reads them."""
    from app.graphql.types.inventory import CHILDREN_CAP

    first = q.arguments(field, details)["first"]
    if not 0 <= first <= CHILDREN_CAP:
        raise Fallback  # the generic path answers INVALID_INPUT
    sql = _relation_sql(inventory.children_statement, q.scope, row, "id", (first,), limited=True)
    return _many(q, field, details, sql, "{r}.id")


def _device_groups(q: Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> Part:
    return _many(q, field, details, _relation_sql(inventory.groups_statement, q.scope, row, "id"), "{r}.id")


def _device_alarms(q: Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> Part:
    """Device.alarms: the newest `first` (0-100) alarms of the device, as the loader reads them."""
    from app.graphql.types.inventory import ALARM_PAGE_CAP

    args = q.arguments(field, details)
    first = args["first"]
    if not 0 <= first <= ALARM_PAGE_CAP:
        raise Fallback  # the generic path answers INVALID_INPUT
    statuses = tuple(sorted({s.value for s in args.get("status") or ()}))
    sql = _relation_sql(_alarms, q.scope, row, "id", (statuses, first), limited=True)
    return _many(q, field, details, sql, "{r}.id DESC")


def _device_external_ids(q: Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> Part:
    return _many(q, field, details, _relation_sql(inventory.external_ids_statement, None, row, "id"),
                 "{r}.type, {r}.value")


def _global(type_name: str, column: str) -> Resolve:
    """The column's global id (app.ids.encode: base64url of "Type:tenant:n", unpadded) for the
    request's tenant, encoded in Python from the number; NULL stays NULL."""
    def resolve(q: Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> Part:
        return Part(f"{row}.{column}", encoder(type_name, current_tenant()))

    return resolve


_DEVICE_ID = _global("Device", "device_id")


def _same_row(q: Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> Part:
    """A to-one object read from the enclosing row itself (a membership row carries its tenant's columns)."""
    return q.object(named(field), details, row)


def _memberships(q: Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> Part:
    return _many(q, field, details, _relation_sql(login_service.memberships_statement, None, row, "id"),
                 "{r}.depth, {r}.domain")


def _membership_user(q: Statement, field: GraphQLField, details: list[FieldDetails], row: str) -> Part:
    return _one(q, field, details, _relation_sql(user_service.user_statement, None, row, "user_id"))

TENANT_FIELDS = {"id": "id", "domain": "domain", "company": "company", "kind": "kind", "status": "status",
                  "parentId": "parent_id", "depth": "depth", "allowCreateTenants": "allow_create_tenants",
                  "contactName": "contact_name", "contactEmail": "contact_email",
                  "customProperties": "custom_properties", "template": "template", "createdAt": "created_at",
                  "updatedAt": "updated_at", "schemaVersion": "schema_version", "parentAccess": "parent_access"}

FIELDS: dict[str, dict[str, Resolve]] = {
    "Device": {"id": _global("Device", "id"), "name": _column("name"), "type": _column("type"),
               "owner": _column("owner"), "fragments": _column("fragments"), "createdAt": _column("created_at", ISO),
               "updatedAt": _column("updated_at", ISO), "parentId": _global("Device", "parent_id"),
               "requiredInterval": _column("required_interval"), "availability": _column("availability"),
               "parent": _device_parent,
               "children": _device_children, "groups": _device_groups, "externalIds": _device_external_ids,
               "alarms": _device_alarms},
    "Me": {"user": _same_row, "memberships": _memberships},
    "User": {"id": _column("id", "{c}::text"), "email": _column("email")},
    "Membership": {"tenant": _same_row, "role": _column("role"), "scope": _column("scope"),
                   "user": _membership_user},
    "Group": {"id": _global("Group", "id"), "name": _column("name"), "parentId": _global("Group", "parent_id"),
              "createdAt": _column("created_at", ISO)},  # and the connections (sql_pages)
    "ExternalIdentity": {"type": _column("type"), "value": _column("value")},
    "Tenant": {name: _column(column, ISO if column in ("created_at", "updated_at") else "{c}")
               for name, column in TENANT_FIELDS.items()},
    "Alarm": {"id": _global("Alarm", "id"), "deviceId": _DEVICE_ID, "type": _column("type"),
              "severity": _column("severity"), "status": _column("status"), "text": _column("text"),
              "count": _column("count"), "firstRaisedAt": _column("first_raised_at", ISO),
              "lastRaisedAt": _column("last_raised_at", ISO), "updatedAt": _column("updated_at", ISO)},
    "Event": {"id": _global("Event", "id"), "deviceId": _DEVICE_ID, "time": _column("time", ISO),
              "type": _column("type"), "text": _column("text"), "attributes": _column("attributes"),
              "createdAt": _column("created_at", ISO), "updatedAt": _column("updated_at", ISO), "position": _null},
    "Measurement": {"id": _global("Measurement", "id"), "deviceId": _DEVICE_ID, "time": _column("time", ISO),
                    "type": _column("type"), "series": _column("series"), "value": _column("value"),
                    "unit": _column("unit"), "position": _null},
    "SeriesPoint": {"series": _column("series"), "bucket": _column("bucket", ISO), "min": _column("min"),
                    "max": _column("max"), "avg": _column("avg"), "count": _column("count"), "sum": _column("sum")},
    "Operation": {"id": _global("Operation", "id"), "deviceId": _DEVICE_ID, "status": _column("status"),
                  "description": _column("description"), "payload": _column("payload"),
                  "failureReason": _column("failure_reason"), "createdAt": _column("created_at", ISO),
                  "updatedAt": _column("updated_at", ISO), "position": _null},
    "UsageDay": {
        "day": _column("day", "to_char({c}, 'YYYY-MM-DD')"),
        "tenantId": lambda q, field, details, row: Part(q.bind(q.tenant_of_rows)),
        **{to_camel_case(c): _column(c) for c in (*USAGE_COUNTERS, *USAGE_SNAPSHOTS)},
        "totalResourceCreateAndUpdateCount": lambda q, field, details, row: Part("(" + " + ".join(
            f"{row}.{c}" for c in usage_service.CREATE_UPDATE) + ")"),
    },
    "TenantUsageSummary": {
        "tenantId": _column("id"), "tenantDomain": _column("domain"), "tenantCompany": _column("company"),
        "parentTenantId": _column("parent_id"), "status": _column("status"),
        "creationTime": _column("created_at", ISO), "deletionTime": _column("deleted_at", ISO),
        "customProperties": _column("custom_properties"),
        **{to_camel_case(c): _column(c) for c in (*USAGE_COUNTERS, *USAGE_SNAPSHOTS, "peak_device_count",
                                                  "peak_storage_size")},
        "totalResourceCreateAndUpdateCount": lambda q, field, details, row: Part("(" + " + ".join(
            f"{row}.{c}" for c in usage_service.CREATE_UPDATE) + ")"),
    },
}


def checked(build: Callable[[], Any]) -> Any:
    """A service's checks as the generic path runs them: a refusal takes the generic path."""
    try:
        return build()
    except AppError as exc:
        raise Fallback from exc
