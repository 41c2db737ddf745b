"""What a GraphQL request carries, checked once for every transport (HTTP, SSE, WebSocket)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request

from app.http.errors import JSON, RequestError
from app.http.persisted import ANONYMOUS, PersistedQueries, scope_of
from app.settings import Settings


def unpack(payload: dict[str, Any], persisted: PersistedQueries, authorization: str | None, *,
           max_bytes: int = 0) -> tuple[str, dict[str, Any] | None, str | None]:
    """The document (resolved from a persisted query where one is named, among those the same
    credential registered), its variables and its operation name; RequestError naming what is
    malformed. A document longer than `max_bytes` characters (0: no limit) is refused before
    anything parses it: lexing a megabyte cost ~60 ms of the event loop, before authentication."""
    extensions = payload.get("extensions")
    if extensions is not None and not isinstance(extensions, dict):
        raise RequestError(400, "'extensions' must be a JSON object")
    # The caller's scope (a hash of its credential) only matters to a persisted query: hashing it for
    # every request was a percent of a createDevice's handler CPU.
    scope = scope_of(authorization) if extensions and "persistedQuery" in extensions else ANONYMOUS
    query = persisted.resolve(payload.get("query"), extensions, scope)
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


async def read_payload(request: Request, settings: Settings) -> dict[str, Any]:
    """The request's JSON payload (GET: its query parameters), within the body limits; RequestError."""
    if request.method == "GET":
        params = request.query_params
        variables = params.get("variables")
        try:
            parsed_variables = orjson.loads(variables) if variables else None
        except orjson.JSONDecodeError as exc:
            raise RequestError(400, "variables must be JSON") from exc
        extensions = params.get("extensions")
        try:
            parsed_extensions = orjson.loads(extensions) if extensions else None
        except orjson.JSONDecodeError as exc:
            raise RequestError(400, "extensions must be JSON") from exc
        return {"query": params.get("query"), "variables": parsed_variables,
                "operationName": params.get("operationName"), "extensions": parsed_extensions}
    if request.method != "POST":
        raise RequestError(405, "GraphQL accepts GET and POST", {"Allow": "GET, POST"})
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != JSON:
        raise RequestError(415, "POST bodies must be application/json")
    limit = settings.max_body_bytes  # without any credential, twice the anonymous document limit
    if "authorization" not in request.headers and settings.max_anonymous_document_bytes:
        limit = min(limit, 2 * settings.max_anonymous_document_bytes)
    try:
        async with asyncio.timeout(settings.body_timeout_seconds or None):
            body = await _read_limited(request, limit)
    except TimeoutError as exc:  # a client trickling its body holds a connection and a task
        raise RequestError(408, f"the request body did not arrive within {settings.body_timeout_seconds:g} s",
                           {"connection": "close"}) from exc
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, "the body is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise RequestError(400, "the body must be a JSON object")
    return payload


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
