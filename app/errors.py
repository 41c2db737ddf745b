"""Errors that reach API clients, each with a stable `extensions.code` and its HTTP status.

Services raise these; every endpoint formats them through one function (app.http.errors), which
reads the code and status from the class. Anything else is masked as INTERNAL. Each class's
docstring says when it happens: docs/errors.md is generated from them (`catalogue()`), and a
test keeps the two equal.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AppError(Exception):
    """A bug: an unexpected exception, masked (the message names the request id, which the server
    logs with the exception). Bad input never produces it."""

    code: ClassVar[str] = "INTERNAL"
    status: ClassVar[int] = 500
    # Whether a GraphQL response carrying this error takes its status too (otherwise a GraphQL
    # response is 200, or 400 for a request error with application/graphql-response+json):
    # the retryable refusals, which HTTP clients and proxies act on.
    transport: ClassVar[bool] = False

    def __init__(self, message: str, **extensions: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extensions = extensions


class Unauthenticated(AppError):
    """No valid credentials: a missing, expired, revoked or malformed token, a wrong password, an
    operation that needs a login."""

    code = "UNAUTHENTICATED"
    status = 401


class Forbidden(AppError):
    """The caller is known but lacks the permission, the membership or the data access (parentAccess)
    this needs; `extensions.permission` names a missing permission."""

    code = "FORBIDDEN"
    status = 403


class NotFound(AppError):
    """No such object in what the caller may see (another tenant's objects are never found)."""

    code = "NOT_FOUND"
    status = 404


class Conflict(AppError):
    """The request clashes with the current state: a taken domain or name, a tenant with live children,
    the same Idempotency-Key with another body, an invitation already used."""

    code = "CONFLICT"
    status = 409


class InvalidInput(AppError):
    """A value outside what the field accepts (`extensions.field` names it), a document that does not
    parse or validate, a bad cursor or id."""

    code = "INVALID_INPUT"
    status = 400


class TenantSuspended(AppError):
    """The tenant (or an ancestor) is suspended: nothing in it may change until it is activated."""

    code = "TENANT_SUSPENDED"
    status = 403


class LimitExceeded(AppError):
    """A tenant limit would be exceeded (devices, users, subtenants, storage, subscriptions, …);
    `extensions.limit` names it."""

    code = "LIMIT_EXCEEDED"
    status = 403

    def __init__(self, message: str, *, limit: str, **extensions: Any) -> None:
        super().__init__(message, limit=limit, **extensions)


class RateLimited(AppError):
    """Too many requests or failed logins in a window; `extensions.limit` names the limit and
    Retry-After says when to try again. Nothing was done."""

    code = "RATE_LIMITED"
    status = 429
    transport = True

    def __init__(self, message: str, *, limit: str, **extensions: Any) -> None:
        super().__init__(message, limit=limit, **extensions)


class QueryTooComplex(AppError):
    """The document is too deep, too long, has too many aliases or tokens, or its estimated cost is
    over the limit (`extensions.cost`, `extensions.limit`); refused before anything ran."""

    code = "QUERY_TOO_COMPLEX"
    status = 400


class Unavailable(AppError):
    """The database cannot serve this request now (unreachable, out of connections, recovering, out
    of disk: `extensions.database` says which where known), one of the request's timeouts cancelled
    it (`extensions.timeout` names it), or the server or this tenant is at its in-flight cap:
    Retry-After says when to retry; nothing was done — except with `extensions.commitOutcome:
    "UNKNOWN"`: the connection was lost while the changes were being saved or made durable, so they
    may or may not have been; retry with the same Idempotency-Key (safe either way)."""

    code = "UNAVAILABLE"
    status = 503
    transport = True


class CommitOutcomeUnknown(Unavailable):
    """The connection was lost while COMMIT was under way: the changes may or may not have been
    saved, and the server cannot tell. Retry with the same Idempotency-Key (safe either way),
    or look before retrying without one."""

    def __init__(self) -> None:
        super().__init__("the database connection was lost while saving: the changes may or may not have been "
                         "saved. Retry with the same Idempotency-Key, or check before retrying.",
                         retryAfter=1, commitOutcome="UNKNOWN")


def _codes() -> list[type[AppError]]:
    """AppError and every subclass that introduces a code of its own, in declaration order."""
    seen: dict[str, type[AppError]] = {}
    pending: list[type[AppError]] = [AppError]
    while pending:
        cls = pending.pop(0)
        seen.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return list(seen.values())


def status_of(code: str) -> int:
    """The HTTP status of an error code (an unknown code is a bug: 500)."""
    return next((cls.status for cls in _codes() if cls.code == code), 500)


def catalogue() -> list[tuple[str, int, str]]:
    """(code, HTTP status, when it happens) for every code: the table of docs/errors.md."""
    return [(cls.code, cls.status, " ".join((cls.__doc__ or "").split())) for cls in _codes()]
