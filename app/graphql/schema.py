"""The GraphQL schema, assembled from the per-domain types and tuned for speed.

Parsing and validation are cached (a small request otherwise spends most of its time
re-validating the same document), in one extension (app.graphql.engine.fast_path). The depth
and alias rules are built ONCE here: the stock limiter extensions create a new rule class
per request, which changes the validation cache key every time and silently disables the
cache (strawberry #4635).
"""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import GraphQLError, GraphQLObjectType
from graphql.validation import ASTValidationRule
from strawberry.extensions import (
    MaxAliasesLimiter,
    QueryDepthLimiter,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext

from app.graphql.engine import boundary, execution, inputs
from app.graphql.engine.execution import AttributeResolver, TenantryExecutor
from app.graphql.engine.fast_path import FastPath
from app.graphql.scalars import SCALAR_MAP
from app.graphql.types.changes import ChangeMutations, ChangeQueries, ShareMutations, ShareQueries
from app.graphql.types.connectivity import ConnectivityMutations, ConnectivityQueries
from app.graphql.types.custom_roles import AccessMutations, AccessQueries
from app.graphql.types.data import DataMutations, DataQueries, install_ingest_path
from app.graphql.types.device_templates import TemplateMutations, TemplateQueries
from app.graphql.types.inventory import DeviceMutations, DeviceQueries
from app.graphql.types.nodes import NodeQueries
from app.graphql.types.options import OptionMutations, OptionQueries
from app.graphql.types.people import PeopleMutations, PeopleQueries
from app.graphql.types.realtime import Subscriptions
from app.graphql.types.sessions import AuthMutations, AuthQueries, SignUpMutations
from app.graphql.types.sharing import MigrationMutations, SharingMutations, SharingQueries
from app.graphql.types.tenants import TenantMutations, TenantQueries
from app.graphql.types.usage import UsageQueries
from app.settings import Settings

Query = merge_types("Query", (AuthQueries, TenantQueries, DeviceQueries, DataQueries, AccessQueries, UsageQueries,
                              PeopleQueries, SharingQueries, TemplateQueries, OptionQueries, ChangeQueries,
                              ShareQueries, ConnectivityQueries, NodeQueries))
Mutation = merge_types("Mutation", (AuthMutations, SignUpMutations, TenantMutations, DeviceMutations, DataMutations,
                                    AccessMutations, PeopleMutations, SharingMutations, MigrationMutations,
                                    TemplateMutations, OptionMutations, ChangeMutations,
                                    ShareMutations, ConnectivityMutations))


class TenantrySchema(strawberry.Schema):
    extra_validation_rules: tuple[type[ASTValidationRule], ...] = ()  # beyond graphql's specified rules

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        """Errors are classified and logged (with request id) by the HTTP endpoint, once."""


def _direct_attribute_resolvers(schema: TenantrySchema) -> int:
    """Mark plain attribute fields so that they resolve without Strawberry's three calls.

    A "basic" Strawberry field (no resolver, no extensions) resolves through
    `_get_basic_result` → `StrawberryField.get_result` → `getattr`. An `AttributeResolver`
    is exactly that getattr, and lets `TenantryExecutor` read scalar attributes inline (big
    lists: 10,000 usage summaries x 21 fields, 100 devices x 8 fields). Returns how many
    fields were replaced.
    """
    replaced = 0
    for type_ in schema._schema.type_map.values():
        if type_.name.startswith("__") or not isinstance(type_, GraphQLObjectType):
            continue
        for field in type_.fields.values():
            definition = (field.extensions or {}).get(GraphQLCoreConverter.DEFINITION_BACKREF)
            if definition is None or not getattr(field.resolve, "_is_default", False):
                continue
            if definition.base_resolver is not None or definition.extensions:
                continue
            field.resolve = AttributeResolver(definition.python_name)
            replaced += 1
    return replaced


def build_schema(settings: Settings | None = None) -> TenantrySchema:
    s = settings or Settings()
    rules: list[Any] = [  # the rule classes, taken out of the stock extensions once
        *QueryDepthLimiter(max_depth=s.max_query_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=s.max_query_aliases).validation_rules,
    ]
    schema = TenantrySchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscriptions,
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        extensions=[lambda: FastPath(max_tokens=s.max_query_tokens, extra_rules=rules)],
        execution_context_class=TenantryExecutor,
    )
    schema.extra_validation_rules = tuple(rules)
    boundary.install(schema._schema)  # before any coercion is compiled (execution.install)
    _direct_attribute_resolvers(schema)
    install_ingest_path(schema._schema)
    inputs.install(schema.schema_converter.type_map)
    execution.install()
    return schema
