"""Which media type a GraphQL request is answered in: JSON (graphql-response+json when accepted) or,
when the client prefers it, a text/event-stream (GraphQL over SSE)."""

from __future__ import annotations

from starlette.requests import Request

from app.http.errors import GRAPHQL_RESPONSE, JSON, RequestError


def negotiate(accept: str) -> str:
    """The response media type: graphql-response+json when accepted, else application/json."""
    if not accept:
        return JSON
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if GRAPHQL_RESPONSE in types:
        return GRAPHQL_RESPONSE
    if JSON in types or "*/*" in types or "application/*" in types:
        return JSON
    raise RequestError(406, f"cannot answer with any of: {accept}; use {GRAPHQL_RESPONSE} or {JSON}")


def wants_event_stream(request: Request) -> bool:
    """SSE when the client prefers it: urql lists text/event-stream after the JSON types for every query
    (it could take a stream), and is answered in JSON; graphql-sse clients send it first, or alone."""
    if request.method != "POST":
        return False
    ranked = [(_quality(part), -i, part.split(";")[0].strip().lower())
              for i, part in enumerate(request.headers.get("accept", "").split(",")) if part.strip()]
    return bool(ranked) and max(ranked)[2] == "text/event-stream"


def _quality(part: str) -> float:
    for parameter in part.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0
