"""What a GraphQL request carries, checked once for every transport (HTTP, SSE, WebSocket)."""

from __future__ import annotations

from typing import Any

from app.http.errors import RequestError
from app.http.persisted import PersistedQueries, scope_of


def unpack(payload: dict[str, Any], persisted: PersistedQueries, authorization: str | None, *,
           max_bytes: int = 0) -> tuple[str, dict[str, Any] | None, str | None]:
    """The document (resolved from a persisted query where one is named, among those the same
    credential registered), its variables and its operation name; RequestError naming what is
    malformed. A document longer than `max_bytes` characters (0: no limit) is refused before
    anything parses it: lexing a megabyte cost ~60 ms of the event loop, before authentication."""
    extensions = payload.get("extensions")
    if extensions is not None and not isinstance(extensions, dict):
        raise RequestError(400, "'extensions' must be a JSON object")
    query = persisted.resolve(payload.get("query"), extensions, scope_of(authorization))
    variables = payload.get("variables")
    operation_name = payload.get("operationName")
    if not isinstance(query, str) or not query.strip():
        raise RequestError(400, "'query' must be a non-empty string")
    if max_bytes and len(query) > max_bytes:
        raise RequestError(413, f"the document exceeds {max_bytes} characters: send values as variables",
                           code="QUERY_TOO_COMPLEX")
    if variables is not None and not isinstance(variables, dict):
        raise RequestError(400, "'variables' must be a JSON object")
    if operation_name is not None and not isinstance(operation_name, str):
        raise RequestError(400, "'operationName' must be a string")
    return query, variables, operation_name
