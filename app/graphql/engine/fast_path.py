"""One schema extension doing the work of four: cached parsing with a token cap, the
limiter rules, and cached validation.

Each Strawberry extension costs a few generator hops per phase on every request; merging
ParserCache + MaxTokensLimiter + AddValidationRules + ValidationCache into one keeps their
behaviour and drops that overhead (see bench/routing.py). The rule classes are created
once, so the validation cache key is stable across requests (strawberry #4635).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

from graphql import GraphQLError, GraphQLSchema, parse, validate
from graphql.language import DocumentNode
from graphql.validation import ASTValidationRule
from strawberry.extensions import SchemaExtension


def _parse(query: str, max_tokens: int) -> DocumentNode:
    """The document, parsed once per text; a document that does not parse is refused again from the
    cache too (a client repeating a bad one cost a full parse each time, before authentication)."""
    outcome = _parsed(query, max_tokens)
    if isinstance(outcome, GraphQLError):
        raise outcome.with_traceback(None)  # the same error; no traceback piling up across raises
    return outcome


@lru_cache(maxsize=1024)
def _parsed(query: str, max_tokens: int) -> DocumentNode | GraphQLError:
    try:
        return parse(query, max_tokens=max_tokens)
    except GraphQLError as exc:
        return exc


@lru_cache(maxsize=1024)
def _validate(
    schema: GraphQLSchema, document: DocumentNode, rules: tuple[type[ASTValidationRule], ...]
) -> list[GraphQLError]:
    return validate(schema, document, rules)


def cache_info() -> dict[str, Any]:
    return {"parse": _parsed.cache_info(), "validate": _validate.cache_info()}


class FastPath(SchemaExtension):
    def __init__(self, *, max_tokens: int, extra_rules: Sequence[type[ASTValidationRule]]) -> None:
        self.max_tokens = max_tokens
        self.extra_rules = tuple(extra_rules)

    def on_operation(self) -> Iterator[None]:
        ctx = self.execution_context
        ctx.validation_rules = tuple(ctx.validation_rules) + self.extra_rules
        yield

    def on_parse(self) -> Iterator[None]:
        ctx = self.execution_context
        assert ctx.query is not None
        ctx.graphql_document = _parse(ctx.query, self.max_tokens)
        yield

    def on_validate(self) -> Iterator[None]:
        ctx = self.execution_context
        assert ctx.graphql_document is not None
        ctx.pre_execution_errors = _validate(
            ctx.schema._schema, ctx.graphql_document, tuple(ctx.validation_rules)
        )
        yield
