"""Compiled reads, the root fields of Query: each as the service's own page or statement, with
its checks as the generic path runs them (a refusal takes the generic path)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any
from uuid import UUID

import orjson
from graphql import (
    GraphQLField,
)
from graphql.execution.collect_fields import FieldDetails
from strawberry.utils.str_converters import to_snake_case

from app.access.scope import Scope, scope_sql
from app.errors import AppError
from app.graphql.engine.sql_json import (
    TENANT_FIELDS,
    Fallback,
    Part,
    Statement,
    checked,
    listed,
    named,
)
from app.graphql.engine.sql_pages import Page, connection, key_cursor, time_cursor
from app.services.data import alarms as alarm_service
from app.services.data import events as event_service
from app.services.data import measurements as measurement_service
from app.services.data import operations as operation_service
from app.services.inventory import devices as inventory
from app.services.people import users as user_service
from app.services.tenants import queries as tenant_service
from app.services.usage import statistics as usage_service


def _root_devices(q: Statement, field: GraphQLField, details: list[FieldDetails]) -> Part:
    from app.graphql.types.inventory import DeviceFilter, _filter  # the resolver's own conversion (and errors)

    args = q.arguments(field, details)
    given = args.get("filter")
    f = checked(lambda: _filter(DeviceFilter(**{to_snake_case(k): v for k, v in given.items()})
                                 if given is not None else None))
    first, after = args.get("first"), args.get("after")
    if f is None or f.fragments is None:  # hashable: rendered once per (scope, filter, page)
        rows, size = checked(lambda: _device_page_sql(q.scope, f, first, after, q.cap))
        return connection(q, field, details, Page(rows, size, ("id",), key_cursor,
                                                    lambda: _device_count_sql(q.scope, f)))
    stmt, size = checked(lambda: inventory.device_page(q.scope, filter=f, first=first, after=after, cap=q.cap))
    return connection(q, field, details, Page(q.clause(stmt), size, ("id",), key_cursor,
                                                lambda: q.clause(inventory.count_statement(q.scope, f))))


@lru_cache(maxsize=4096)
def _device_page_sql(scope: Scope, f: inventory.DeviceFilter | None, first: int | None, after: str | None,
                     cap: int) -> tuple[str, int]:
    """A devices page, rendered once: building and rendering it each time was as much CPU as a
    small page's whole answer. Its checks raise each time (exceptions are not cached)."""
    stmt, size = inventory.device_page(scope, filter=f, first=first, after=after, cap=cap)
    return Statement.clause(stmt), size


@lru_cache(maxsize=4096)
def _device_count_sql(scope: Scope, f: inventory.DeviceFilter | None) -> str:
    return Statement.clause(inventory.count_statement(scope, f))


def _by_id(q: Statement, field: GraphQLField, details: list[FieldDetails], table: str) -> Part:
    """device(id) / group(id): the row in scope, or null (an id that parses as none names nothing)."""
    key = checked(lambda: inventory.parse_id(q.arguments(field, details)["id"], table[:-1]))
    if key is None:
        return Part("NULL::json")
    r = q.alias(table[0])
    item = q.object(named(field), details, r)
    return Part(f"(SELECT {item.sql} FROM {table} {r} WHERE {r}.id = {q.bind(key)} "
                f"AND {scope_sql(q.scope, table, f'{r}.id')})", item.decode)


def _root_device(q: Statement, field: GraphQLField, details: list[FieldDetails]) -> Part:
    return _by_id(q, field, details, "devices")


def _root_groups(q: Statement, field: GraphQLField, details: list[FieldDetails]) -> Part:
    args = q.arguments(field, details)
    parent = args.get("parentId")
    stmt, size = checked(lambda: inventory.group_page(
        q.scope, first=args.get("first"), after=args.get("after"), cap=q.cap,
        parent_id=inventory.require_id(parent, "group") if parent is not None else None,
        roots_only=parent is None and q.scope.unrestricted))
    return connection(q, field, details, Page(q.clause(stmt), size, ("id",), key_cursor))


def _root_alarms(q: Statement, field: GraphQLField, details: list[FieldDetails]) -> Part:
    from app.graphql.types.data import AlarmFilter, alarm_filter  # the resolver's own conversion

    args = q.arguments(field, details)
    given = args.get("filter")
    f = alarm_filter(AlarmFilter(**{to_snake_case(k): v for k, v in given.items()})
                     if given is not None else None)
    stmt, size = checked(lambda: alarm_service.alarm_page(q.scope, filter=f, first=args.get("first"),
                                                           after=args.get("after"), cap=q.cap))
    return connection(q, field, details, Page(q.clause(stmt), size, ("id",), key_cursor))


def _root_operations(q: Statement, field: GraphQLField, details: list[FieldDetails]) -> Part:
    args = q.arguments(field, details)
    status = args.get("status")
    stmt, size = checked(lambda: operation_service.operation_page(
        q.scope, device_id=args.get("deviceId"), status=status.value if status else None, first=args.get("first"),
        after=args.get("after"), cap=q.cap))
    return connection(q, field, details, Page(q.clause(stmt), size, ("id",), key_cursor))


def _root_events(q: Statement, field: GraphQLField, details: list[FieldDetails]) -> Part:
    args = q.arguments(field, details)
    stmt, size = checked(lambda: event_service.event_page(
        q.scope, device_id=args.get("deviceId"), type=args.get("type"), start=args.get("from"), end=args.get("to"),
        first=args.get("first"), after=args.get("after"), cap=q.cap))
    return connection(q, field, details, Page(q.clause(stmt), size, ("time", "id"), time_cursor))


def _root_group(q: Statement, field: GraphQLField, details: list[FieldDetails]) -> Part:
    return _by_id(q, field, details, "groups")


def _root_subtenant_usage(q: Statement, field: GraphQLField, details: list[FieldDetails]) -> Part:
    args = q.arguments(field, details)
    try:
        stmt = usage_service.summary_statement(q.routed, start=args["from"], end=args["to"],
                                               include_descendants=args["includeDescendants"],
                                               include_deleted=args["includeDeleted"])
    except AppError as exc:
        raise Fallback from exc
    u = q.alias("u")
    q.setup.append(usage_service.SUMMARY_SETUP)
    item = q.object(named(field), details, u)
    return Part(f"(SELECT COALESCE(json_agg({item.sql} ORDER BY {u}.id), '[]'::json) FROM ({q.clause(stmt)}) {u})",
                listed(item.decode))


def _root_measurements(q: Statement, field: GraphQLField, details: list[FieldDetails]) -> Part:
    args = q.arguments(field, details)
    size, key = checked(lambda: measurement_service.measurement_checks(
        device_id=args["deviceId"], start=args.get("from"), end=args.get("to"), first=args.get("first"), cap=q.cap))
    stmt = checked(lambda: measurement_service.measurement_page(
        key, start=args.get("from"), end=args.get("to"), type=args.get("type"), series=args.get("series"),
        after=args.get("after"), size=size))
    q.guards.append(f"EXISTS ({inventory.devices_in_scope(q.scope, [key])})")
    return connection(q, field, details, Page(q.clause(stmt), size, ("time", "id"), time_cursor))


def _root_measurement_series(q: Statement, field: GraphQLField, details: list[FieldDetails]) -> Part:
    args = q.arguments(field, details)
    key = checked(lambda: measurement_service.series_checks(
        device_id=args["deviceId"], start=args["from"], end=args["to"], interval=args["interval"].value))
    stmt = measurement_service.series_statement(key, start=args["from"], end=args["to"],
                                                interval=args["interval"].value, type=args.get("type"),
                                                series=args.get("series"))
    q.guards.append(f"EXISTS ({inventory.devices_in_scope(q.scope, [key])})")
    b = q.alias("b")
    item = q.object(named(field), details, b)
    return Part(f"COALESCE((SELECT json_agg({item.sql} ORDER BY {b}.series, {b}.bucket) "
                f"FROM ({q.clause(stmt)}) {b}), '[]'::json)", listed(item.decode))


async def _root_tenant_by_id(q: Statement, field: GraphQLField, details: list[FieldDetails]) -> Part:
    """`tenantById`: the caller's own tenant or a descendant it administers, else null (as its resolver)."""
    ctx = q.context
    record = await tenant_service.visible_tenant(ctx.platform, ctx.management_db, q.routed,
                                                 q.arguments(field, details)["id"])
    return _tenant_literal(q, field, details, record) if record is not None else Part("NULL::json")


def _root_tenants(q: Statement, field: GraphQLField, details: list[FieldDetails]) -> Part:
    from app.graphql.types.tenants import TenantFilter, tenant_filter  # the resolver's own conversion

    args = q.arguments(field, details)
    given = args.get("filter")
    f = tenant_filter(TenantFilter(**{to_snake_case(k): v for k, v in given.items()}) if given is not None else None)
    stmt, size = checked(lambda: tenant_service.subtree_page(q.routed, first=args.get("first"),
                                                              after=args.get("after"), cap=q.cap, filter=f))
    return connection(q, field, details, Page(q.clause(stmt), size, ("id",), key_cursor,
                                                lambda: q.clause(tenant_service.count_subtree_statement(q.routed))))


def _root_tenant(q: Statement, field: GraphQLField, details: list[FieldDetails]) -> Part:
    """`tenant`: the routed tenant's record as the gate holds it (the generic resolver reads no
    table either), written as a JSON literal."""
    return _tenant_literal(q, field, details, q.routed.tenant)


def _tenant_literal(q: Statement, field: GraphQLField, details: list[FieldDetails], record: Any) -> Part:
    values: dict[str, Any] = {}
    for response_name, field_details in q.subfields(named(field), details).items():
        name = field_details[0].node.name.value
        if name == "__typename":
            values[response_name] = "Tenant"
            continue
        value = getattr(record, TENANT_FIELDS[name])
        values[response_name] = value.isoformat() if isinstance(value, datetime) else value
    return Part(q.bind(orjson.dumps(values).decode()) + "::json")


async def _root_usage(q: Statement, field: GraphQLField, details: list[FieldDetails]) -> Part:
    args = q.arguments(field, details)
    try:
        record = await usage_service.readable_tenant(q.context.management_db, q.routed, args.get("tenantId"),
                                                     q.context.platform.registry)
        stmt = usage_service.daily_statement(tenant_id=record.id, start=args["from"], end=args["to"])
    except AppError as exc:
        raise Fallback from exc
    u = q.alias("u")
    q.tenant_of_rows = record.id
    item = q.object(named(field), details, u)
    return Part(f"(SELECT COALESCE(json_agg({item.sql} ORDER BY {u}.day), '[]'::json) FROM ({q.clause(stmt)}) {u})",
                listed(item.decode))


async def _root_me(q: Statement, field: GraphQLField, details: list[FieldDetails]) -> Part:
    """`me`: the signed-in user's row and memberships. A caller that is not a user takes the generic
    path, and so does one whose account is gone or disabled (the guard), for its UNAUTHENTICATED."""
    try:
        principal = await q.context.user()
    except AppError as exc:
        raise Fallback from exc
    user = _active_user_sql(principal.user_id)
    q.guards.append(f"EXISTS ({user})")
    u = q.alias("u")
    item = q.object(named(field), details, u)
    return Part(f"(SELECT {item.sql} FROM ({user}) {u})", item.decode)


@lru_cache(maxsize=4096)
def _active_user_sql(user_id: UUID) -> str:
    """Rendered once per user: building and rendering it was a tenth of a dashboard request's CPU."""
    return Statement.clause(user_service.user_statement(user_id, active=True))


# Root fields and their translations; what each asks of the gate first is app.graphql.roots'.
ROOT_SQL: dict[str, Callable[[Statement, GraphQLField, list[FieldDetails]], Any]] = {
    "me": _root_me,
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
# Connection types answered by `connection`, with the fields it knows.
CONNECTION_FIELDS = {"edges", "pageInfo", "totalCount"}
EDGE_FIELDS = {"cursor", "node"}
PAGE_INFO_FIELDS = {"hasNextPage", "endCursor"}
