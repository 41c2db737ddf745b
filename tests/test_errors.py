"""One error map: each code has one HTTP status and one body shape on every endpoint, and
docs/errors.md's table is the one app/errors.py declares."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from app.errors import AppError, catalogue, status_of
from tests.conftest import Api, World

DOCS = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


def test_the_docs_table_lists_every_code_with_its_status_and_when_it_happens() -> None:
    text = DOCS.read_text()
    table = text[text.index("| code | HTTP status | when |"):text.index("<!-- end errors table -->")]
    rows = [tuple(cell.strip().strip("`") for cell in line.strip("|").split("|"))
            for line in table.splitlines()[2:] if line.startswith("|")]
    assert rows == [(code, str(status), when) for code, status, when in catalogue()]
    assert {code for code, _, _ in catalogue()} >= {
        "UNAUTHENTICATED", "FORBIDDEN", "NOT_FOUND", "CONFLICT", "INVALID_INPUT", "TENANT_SUSPENDED",
        "LIMIT_EXCEEDED", "RATE_LIMITED", "QUERY_TOO_COMPLEX", "UNAVAILABLE", "INTERNAL"}


def test_every_error_class_declares_a_status_and_an_unknown_code_is_a_bug() -> None:
    for code, status, when in catalogue():
        assert 400 <= status < 600, code
        assert when, code
        assert status_of(code) == status
    assert status_of("NO_SUCH_CODE") == 500
    assert AppError("x").status == 500


def _one_error(response: httpx.Response) -> tuple[int, str, str | None]:
    body = response.json()
    assert set(body) == {"errors"}, body
    (error,) = body["errors"]
    assert isinstance(error["message"], str)
    assert error["message"]
    return response.status_code, error["extensions"]["code"], response.headers.get("www-authenticate")


@pytest.mark.parametrize("endpoint", ["export", "metrics", "sse"])
async def test_a_bad_token_is_401_with_the_same_body_on_every_endpoint(http: httpx.AsyncClient, endpoint: str) -> None:
    headers = {"authorization": "Bearer not-a-token", "x-tenant-id": "management"}
    if endpoint == "export":
        response = await http.get("/export/usage.csv?from=2026-01-01&to=2026-01-31", headers=headers)
    elif endpoint == "metrics":
        response = await http.get("/metrics", headers=headers)
    else:
        response = await http.post("/graphql", json={"query": "subscription { alarms { kind } }"},
                                   headers={**headers, "accept": "text/event-stream"})
    assert _one_error(response) == (401, "UNAUTHENTICATED", "Bearer")


async def test_forbidden_and_not_found_have_their_status_outside_graphql(http: httpx.AsyncClient, api: Api,
                                                                        world: World) -> None:
    tenant = await world.tenant()
    metrics = await http.get("/metrics", headers={"authorization": f"Bearer {tenant.token}"})
    assert _one_error(metrics)[:2] == (403, "FORBIDDEN")
    oidc = await http.get("/auth/oidc/t999999999/login")
    assert _one_error(oidc)[:2] == (404, "NOT_FOUND")
    bad_range = await http.get("/export/usage.csv?from=2026-02-01&to=nope",
                               headers={"authorization": f"Bearer {tenant.token}", "x-tenant-id": tenant.id})
    assert _one_error(bad_range)[:2] == (400, "INVALID_INPUT")


async def test_http_level_refusals_on_graphql_are_invalid_input_with_their_status(http: httpx.AsyncClient) -> None:
    cases = [
        (http.put("/graphql", json={"query": "{ __typename }"}), 405),
        (http.post("/graphql", content=b"{}", headers={"content-type": "text/plain"}), 415),
        (http.post("/graphql", content=b"{not json", headers={"content-type": "application/json"}), 400),
        (http.post("/graphql", json={"query": "{ __typename }"}, headers={"accept": "text/csv"}), 406),
    ]
    for request, status in cases:
        response = await request
        assert _one_error(response)[:2] == (status, "INVALID_INPUT"), response.text
    allowed = (await http.put("/graphql", json={"query": "{ __typename }"})).headers.get("allow")
    assert allowed is not None
    assert re.search("POST", allowed)
