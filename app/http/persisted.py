"""Persisted queries: Apollo's automatic persisted queries (APQ), and an operator's allow-list.

APQ (https://www.apollographql.com/docs/apollo-server/performance/apq): a client sends only
`extensions.persistedQuery.sha256Hash`; the server answers PersistedQueryNotFound when it does
not know the hash, and the client sends the query once with its hash, which is then kept. The
saving is bandwidth, and GET requests short enough for HTTP caches. Kept per process in a
bounded LRU (a client whose hash another worker knows simply registers it again there).

Trusted documents (`TENANTRY_TRUSTED_DOCUMENTS=path`): the operator lists the documents its
frontends were built with; every other document is refused, by hash or by text alike. The file is
Apollo's persisted-query manifest (`{"format": "apollo-persisted-query-manifest", "operations":
[{"id", "body", …}]}`) or a plain JSON object `{sha256: document}`; hashes are checked on load.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson

from app.http.errors import RequestError

NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"  # Apollo clients resend the document on this code
NOT_ALLOWED = "FORBIDDEN"


class PersistedQueryError(RequestError):
    """A persisted-query lookup that cannot run (PersistedQueryNotFound tells Apollo clients to
    send the document)."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(status, message, code=code)


def sha256(document: str) -> str:
    return hashlib.sha256(document.encode()).hexdigest()


def load_trusted(path: Path) -> dict[str, str]:
    """The allow-list file as {sha256: document}; a malformed file stops the server at start."""
    try:
        raw = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise SystemExit(f"TENANTRY_TRUSTED_DOCUMENTS: cannot read {path}: {exc}") from exc
    if isinstance(raw, dict) and isinstance(raw.get("operations"), list):
        pairs = [(op.get("id"), op.get("body")) for op in raw["operations"] if isinstance(op, dict)]
    elif isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        raise SystemExit(f"TENANTRY_TRUSTED_DOCUMENTS: {path} is neither a manifest nor a {{hash: document}} object")
    documents: dict[str, str] = {}
    for key, body in pairs:
        if not isinstance(key, str) or not isinstance(body, str) or sha256(body) != key.lower():
            raise SystemExit(f"TENANTRY_TRUSTED_DOCUMENTS: entry {key!r} in {path} is not the sha256 of its document")
        documents[key.lower()] = body
    return documents


ANONYMOUS = ""  # the scope of requests without credentials: their documents are never kept


def scope_of(authorization: str | None) -> str:
    """The namespace a caller's registered documents live in: its credential (hashed). A hash-only
    lookup finds only what the same credential registered, so one caller's documents (a PIN sent
    inline, say) are never another's oracle, and nothing is kept for anonymous callers."""
    return hashlib.sha256(authorization.encode()).hexdigest()[:32] if authorization else ANONYMOUS


class PersistedQueries:
    """Registered documents per (scope, hash), least recently used first out, bounded in bytes."""

    MAX_DOCUMENT = 64 * 1024  # larger documents run but are not kept

    def __init__(self, *, trusted: dict[str, str] | None = None, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.trusted = trusted
        self.max_bytes = max_bytes
        self.bytes = 0
        self._known: OrderedDict[tuple[str, str], str] = OrderedDict()

    def resolve(self, query: object, extensions: dict[str, Any] | None, scope: str = ANONYMOUS) -> object:
        """The document to run: the request's own, or the one its hash names in the caller's scope."""
        persisted = extensions.get("persistedQuery") if extensions else None
        if persisted is None:
            if self.trusted is not None and not (isinstance(query, str) and sha256(query) in self.trusted):
                raise PersistedQueryError(403, "only the operator's trusted documents are accepted here",
                                          NOT_ALLOWED)
            return query
        digest = persisted.get("sha256Hash") if isinstance(persisted, dict) else None
        if not isinstance(persisted, dict) or persisted.get("version", 1) != 1 or not isinstance(digest, str) \
                or len(digest) != 64:
            raise PersistedQueryError(400, "extensions.persistedQuery needs version 1 and a sha256Hash "
                                           "of 64 hex digits", "INVALID_INPUT")
        digest = digest.lower()
        if self.trusted is not None:
            document = self.trusted.get(digest)
            if document is None or (isinstance(query, str) and query != document):
                raise PersistedQueryError(403, "only the operator's trusted documents are accepted here",
                                          NOT_ALLOWED)
            return document
        if query is None:
            known = self._known.get((scope, digest))
            if known is None:
                raise PersistedQueryError(200, "PersistedQueryNotFound", NOT_FOUND)
            self._known.move_to_end((scope, digest))
            return known
        if not isinstance(query, str) or sha256(query) != digest:
            raise PersistedQueryError(400, "provided sha does not match query", "INVALID_INPUT")
        self._keep((scope, digest), query)
        return query

    def _keep(self, key: tuple[str, str], query: str) -> None:
        if key[0] == ANONYMOUS or len(query) > self.MAX_DOCUMENT or key in self._known:
            return
        self._known[key] = query
        self.bytes += len(query)
        while self.bytes > self.max_bytes:
            _, evicted = self._known.popitem(last=False)
            self.bytes -= len(evicted)
