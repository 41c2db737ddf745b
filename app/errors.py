"""Errors that reach API clients, each with a stable `extensions.code`.

Services raise these; the GraphQL layer turns them into errors with `extensions.code`
(and `extensions.limit` where a limit is named). Anything else is masked as INTERNAL.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AppError(Exception):
    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, **extensions: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extensions = extensions


class Unauthenticated(AppError):
    code = "UNAUTHENTICATED"


class Forbidden(AppError):
    code = "FORBIDDEN"


class NotFound(AppError):
    code = "NOT_FOUND"


class Conflict(AppError):
    code = "CONFLICT"


class InvalidInput(AppError):
    code = "INVALID_INPUT"


class TenantSuspended(AppError):
    code = "TENANT_SUSPENDED"


class LimitExceeded(AppError):
    code = "LIMIT_EXCEEDED"

    def __init__(self, message: str, *, limit: str, **extensions: Any) -> None:
        super().__init__(message, limit=limit, **extensions)


class RateLimited(AppError):
    code = "RATE_LIMITED"

    def __init__(self, message: str, *, limit: str, **extensions: Any) -> None:
        super().__init__(message, limit=limit, **extensions)


class QueryTooComplex(AppError):
    code = "QUERY_TOO_COMPLEX"


class Unavailable(AppError):
    """The database cannot serve this request now (unreachable, out of connections, recovering):
    HTTP 503 with Retry-After. Retrying later is safe; nothing was done."""

    code = "UNAVAILABLE"


class CommitOutcomeUnknown(Unavailable):
    """The connection was lost while COMMIT was under way: the changes may or may not have been
    saved, and the server cannot tell. Retry with the same Idempotency-Key (safe either way),
    or look before retrying without one."""

    def __init__(self) -> None:
        super().__init__("the database connection was lost while saving: the changes may or may not have been "
                         "saved. Retry with the same Idempotency-Key, or check before retrying.",
                         retryAfter=1, commitOutcome="UNKNOWN")
