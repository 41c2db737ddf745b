"""One error format and one code → HTTP status map for every endpoint.

GraphQL over POST and GET, SSE, WebSocket, the usage export, OIDC and /metrics all format errors
here: `{"message", "extensions": {"code", …}}`, the status from the error's class (app.errors), a
Retry-After header where the error says when to retry, and `WWW-Authenticate: Bearer` with 401.
A GraphQL response with errors is 200 (the errors are in the body), 400 for a request error
answered as application/graphql-response+json, and takes the status of a retryable refusal
(RATE_LIMITED 429, UNAVAILABLE 503) so that HTTP clients and proxies can act on it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from graphql import GraphQLError
from graphql.error import GraphQLSyntaxError
from sqlalchemy import exc as sa_exc
from starlette.responses import Response

from app.errors import AppError, InvalidInput, Unavailable, status_of

if TYPE_CHECKING:
    from app.graphql.context import Context

log = logging.getLogger("tenantry.graphql")

GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"
_COMPLEXITY_MARKERS = ("exceeds maximum operation depth", "aliases found", "tokens. Parsing aborted")


class RequestError(Exception):
    """The HTTP request is not one we can run (→ its status, no execution): a wrong method, media
    type or body, or a persisted query the server does not know."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, *,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.code = code or ("INVALID_INPUT" if status < 500 else "INTERNAL")


def entry(error: AppError | RequestError) -> dict[str, Any]:
    """An error as it appears in a response's `errors` list."""
    extensions = error.extensions if isinstance(error, AppError) else {}
    return {"message": error.message, "extensions": {"code": error.code, **extensions}}


def headers_for(error: AppError | RequestError) -> dict[str, str]:
    headers = dict(error.headers) if isinstance(error, RequestError) else {}
    retry = error.extensions.get("retryAfter") if isinstance(error, AppError) else None
    if retry is not None:
        headers["retry-after"] = str(retry)
    if _status(error) == 401:
        headers["www-authenticate"] = "Bearer"
    return headers


def _status(error: AppError | RequestError) -> int:
    return error.status


def error_response(error: AppError | RequestError, media_type: str = JSON) -> Response:
    """A response carrying one error and nothing else (the request did not run)."""
    return Response(orjson.dumps({"errors": [entry(error)]}), status_code=_status(error), media_type=media_type,
                    headers=headers_for(error) or None)


def invalid(message: str, **extensions: Any) -> dict[str, Any]:
    """An INVALID_INPUT entry (a malformed message on a realtime transport)."""
    return entry(InvalidInput(message, **extensions))


def graphql_status(formatted: list[dict[str, Any]], *, request_error: bool, media_type: str
                   ) -> tuple[int, dict[str, str] | None]:
    """The status (and headers) of a GraphQL response with these formatted errors."""
    codes = {f.get("extensions", {}).get("code") for f in formatted}
    status = 400 if request_error and media_type == GRAPHQL_RESPONSE else 200
    retry = [int(f["extensions"].get("retryAfter", 1)) for f in formatted
             if f.get("extensions", {}).get("code") in _TRANSPORT and "retryAfter" in f["extensions"]]
    headers = {"retry-after": str(max(retry))} if retry else None
    if "UNAVAILABLE" in codes:  # the database could not serve this request: nothing was saved
        return status_of("UNAVAILABLE"), headers or {"retry-after": "1"}
    if codes == {"RATE_LIMITED"}:  # nothing was done: the client should slow down
        return status_of("RATE_LIMITED"), headers
    return status, headers


_TRANSPORT = {"UNAVAILABLE", "RATE_LIMITED"}


def is_request_error(error: GraphQLError) -> bool:
    """Parse, validation and variable errors carry no path: the document never ran."""
    return error.path is None and (error.original_error is None or isinstance(error.original_error, GraphQLSyntaxError))


def format_graphql_error(error: GraphQLError, request_id: str, context: Context | None) -> dict[str, Any]:
    """A GraphQL error as the client sees it: AppErrors with their code, request errors as
    INVALID_INPUT or QUERY_TOO_COMPLEX, a lost database as UNAVAILABLE, anything else masked as
    INTERNAL (and logged with the request id and tenant)."""
    formatted: dict[str, Any] = {"message": error.message}
    if error.locations:
        formatted["locations"] = [{"line": loc.line, "column": loc.column} for loc in error.locations]
    if error.path:
        formatted["path"] = error.path
    original = error.original_error
    original = as_unavailable(original) or original
    if isinstance(original, AppError):
        formatted.update(entry(original))
    elif original is None or isinstance(original, GraphQLSyntaxError):
        complex_ = any(marker in error.message for marker in _COMPLEXITY_MARKERS)
        formatted["extensions"] = {"code": "QUERY_TOO_COMPLEX" if complex_ else "INVALID_INPUT"}
    elif isinstance(original, GraphQLError):  # e.g. variable coercion inside execution
        formatted["extensions"] = {"code": "INVALID_INPUT"}
    else:
        routed = context.access.routed_or_none if context is not None else None
        tenant = routed.tenant.id if routed else (context.access.tenant_header if context is not None else None)
        log.error("unexpected error [request %s, tenant %s]: %s", request_id, tenant, error.message,
                  exc_info=original, extra={"request_id": request_id})
        formatted["message"] = f"internal error (request id {request_id})"
        formatted["extensions"] = {"code": "INTERNAL", "requestId": request_id}
    return formatted


# What PostgreSQL cancels a request's statement for (app.access.acting.request_limits), by SQLSTATE.
_TIMEOUTS = {"57014": "statement_timeout", "55P03": "lock_timeout", "25P03": "idle_in_transaction_session_timeout"}


def timed_out(error: BaseException | None) -> str | None:
    """The timeout (its PostgreSQL setting's name) that cancelled this statement, if one did. A
    query cancelled for another reason (an operator's pg_cancel_backend) is not a timeout."""
    orig = error.orig if isinstance(error, sa_exc.DBAPIError) else error
    if not isinstance(orig, psycopg.Error) or orig.sqlstate not in _TIMEOUTS:
        return None
    if orig.sqlstate == "57014" and "statement timeout" not in str(orig):
        return None
    return _TIMEOUTS[orig.sqlstate]


def as_unavailable(error: BaseException | None) -> Unavailable | None:
    """A database failure as the retryable answer it deserves (HTTP 503 + Retry-After), or None:
    one of the request's timeouts, named with its value (the request did too much, or waited on a
    lock another transaction holds), or the connection lost under it."""
    orig = error.orig if isinstance(error, sa_exc.DBAPIError) else error
    if isinstance(orig, psycopg.errors.DiskFull):  # 53100: nothing could be written
        return Unavailable("the database is out of disk space: nothing was saved, retry later", retryAfter=30,
                           database="disk full")
    timeout = timed_out(error)
    if timeout is not None:
        return Unavailable(f"the request was cancelled by the server's {timeout}: nothing was saved, retry later",
                           retryAfter=1, timeout=timeout)
    if database_unavailable(error):
        return Unavailable("the database connection was lost; nothing was saved, retry later", retryAfter=5)
    return None


def database_unavailable(error: BaseException | None) -> bool:
    """The database went away under a statement (restart, failover, connection killed)."""
    if isinstance(error, sa_exc.DBAPIError):
        return bool(error.connection_invalidated) or isinstance(error.orig, psycopg.OperationalError)
    return isinstance(error, psycopg.OperationalError)
