"""HTTP as single-page frontends expect: GraphQL-over-HTTP, CORS, limits, health, GraphiQL."""

from __future__ import annotations

import dataclasses
import logging
import re

import httpx
import orjson
import pytest
from graphql import GraphQLError
from starlette.applications import Starlette

from app.graphql.context import Context
from app.graphql.engine.fast_path import cache_info
from app.http.errors import format_graphql_error
from app.main import create_app
from app.runtime.platform import Platform
from app.settings import Settings
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, Api, World

GQL_RESPONSE = "application/graphql-response+json"


async def test_graphql_response_json_is_answered_in_kind(http: httpx.AsyncClient) -> None:
    response = await http.post("/graphql", json={"query": "{ __typename }"}, headers={"accept": GQL_RESPONSE})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(GQL_RESPONSE)
    assert response.json() == {"data": {"__typename": "Query"}}
    legacy = await http.post("/graphql", json={"query": "{ __typename }"}, headers={"accept": "application/json"})
    assert legacy.headers["content-type"].startswith("application/json")
    refused = await http.post("/graphql", json={"query": "{ __typename }"}, headers={"accept": "text/csv"})
    assert refused.status_code == 406


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b'{"query": 5}', b'{"query": "{ __typename }", "variables": [1]}',
    b'{"query": "{ __typename }", "extensions": [1]}', b'{"query": "{ __typename }", "extensions": "x"},',
])
async def test_malformed_http_requests_get_400_whatever_the_media_type(http: httpx.AsyncClient, body: bytes) -> None:
    for accept in (GQL_RESPONSE, "application/json"):
        response = await http.post("/graphql", content=body, headers={"content-type": "application/json",
                                                                      "accept": accept})
        assert response.status_code == 400, response.text
        assert response.json()["errors"][0]["extensions"]["code"] == "INVALID_INPUT"


@pytest.mark.parametrize("body", [
    b'{"query": "{ nope"}',
    b'{"query": "{ noSuchField }"}',
    b'{"query": "query($x: Int!) { __typename }", "variables": {"x": "str"}}',
    b'{"query": "query($x: Int!) { __typename }"}',
])
async def test_request_errors_follow_graphql_over_http(http: httpx.AsyncClient, body: bytes) -> None:
    """Documents that fail to parse or validate, and variables that fail to coerce: nothing runs,
    so no `data` key; 400 with application/graphql-response+json, 200 with application/json."""
    for accept, status in ((GQL_RESPONSE, 400), ("application/json", 200)):
        response = await http.post("/graphql", content=body, headers={"content-type": "application/json",
                                                                      "accept": accept})
        assert response.status_code == status, (accept, response.text)
        payload = response.json()
        assert "data" not in payload, payload
        assert payload["errors"][0]["extensions"]["code"] == "INVALID_INPUT"


async def test_extensions_must_be_an_object(http: httpx.AsyncClient) -> None:
    ok = await http.post("/graphql", json={"query": "{ __typename }", "extensions": {"x": 1}})
    assert ok.status_code == 200
    assert (await http.get("/graphql", params={"query": "{ __typename }", "extensions": "[1]"})).status_code == 400


async def test_wrong_content_type_and_oversized_bodies_are_refused(http: httpx.AsyncClient, platform: Platform) -> None:
    form = await http.post("/graphql", content=b"query={__typename}",
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    big = b'{"query": "{ __typename }", "pad": "' + b"x" * (platform.settings.max_body_bytes + 1) + b'"}'
    too_big = await http.post("/graphql", content=big, headers={"content-type": "application/json"})
    assert too_big.status_code == 413


async def test_queries_work_over_get_and_mutations_are_refused(http: httpx.AsyncClient) -> None:
    ok = await http.get("/graphql", params={"query": "{ __typename }"}, headers={"accept": GQL_RESPONSE})
    assert ok.status_code == 200
    assert ok.json()["data"] == {"__typename": "Query"}
    mutation = 'mutation { logout(refreshToken: "x") }'
    refused = await http.get("/graphql", params={"query": mutation}, headers={"accept": GQL_RESPONSE})
    assert refused.status_code == 405
    assert refused.headers["allow"] == "POST"
    put = await http.put("/graphql", json={"query": "{ __typename }"})
    assert put.status_code == 405


async def test_query_limits_answer_query_too_complex(http: httpx.AsyncClient, world: World) -> None:
    deep = "{ me { memberships { tenant { " + "parent { " * 14 + "id" + " }" * 17 + " }"
    response = await http.post("/graphql", json={"query": deep}, headers={"accept": GQL_RESPONSE})
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    aliases = "{ " + " ".join(f"a{i}: __typename" for i in range(40)) + " }"
    response = await http.post("/graphql", json={"query": aliases}, headers={"accept": GQL_RESPONSE})
    assert response.json()["errors"][0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    t = await world.tenant()  # a document this long needs a credential (anonymous ones stay under 10,000)
    tokens = "{ " + " ".join("__typename" for _ in range(5000)) + " }"
    response = await http.post("/graphql", json={"query": tokens}, headers={
        "accept": GQL_RESPONSE, "authorization": f"Bearer {t.token}", "x-tenant-id": t.id})
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"


async def test_validation_is_cached_across_requests(http: httpx.AsyncClient) -> None:
    """The depth/alias rules are built once, so the validation cache key is stable and it hits."""
    query = "{ __typename alias: __typename }"
    await http.post("/graphql", json={"query": query})
    before = cache_info()
    for _ in range(5):
        await http.post("/graphql", json={"query": query})
    after = cache_info()
    for phase in ("parse", "validate"):
        assert after[phase].hits - before[phase].hits == 5
        assert after[phase].misses == before[phase].misses


async def test_cors_allows_configured_origins_only(http: httpx.AsyncClient) -> None:
    headers = {"origin": "https://app.example.com", "access-control-request-method": "POST",
               "access-control-request-headers": "authorization, content-type, x-tenant-id"}
    preflight = await http.options("/graphql", headers=headers)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "x-tenant-id" in preflight.headers["access-control-allow-headers"].lower()
    evil = await http.options("/graphql", headers={**headers, "origin": "https://evil.example"})
    assert "access-control-allow-origin" not in evil.headers


async def test_health_ready_request_id_and_graphiql(http: httpx.AsyncClient, platform: Platform) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    assert (await http.get("/readyz")).json() == {"status": "ready"}
    echoed = await http.get("/healthz", headers={"x-request-id": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    generated = await http.get("/healthz", headers={"x-request-id": "bad id with spaces"})
    assert generated.headers["x-request-id"] != "bad id with spaces"
    ide = await http.get("/graphql", headers={"accept": "text/html"})
    assert ide.status_code == 200
    assert "graphiql" in ide.text.lower()

    production = create_app(platform=_with_graphiql_off(platform))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=production), base_url="http://t") as client:
        assert (await client.get("/graphql", headers={"accept": "text/html"})).status_code == 404


def _with_graphiql_off(platform: Platform) -> Platform:
    return dataclasses.replace(platform, settings=platform.settings.with_(graphiql=False))


def test_unexpected_errors_are_masked_and_logged_with_the_request_id(
    platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    context = Context.of(platform, request_id="req-42", authorization=None, tenant_header="t000000001")
    error = GraphQLError("boom: password=hunter2", path=["x"], original_error=RuntimeError("boom: password=hunter2"))
    with caplog.at_level(logging.ERROR, logger="tenantry.graphql"):
        formatted = format_graphql_error(error, "req-42", context)
    assert formatted["extensions"] == {"code": "INTERNAL", "requestId": "req-42"}
    assert "hunter2" not in formatted["message"]
    assert any("req-42" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_user_errors_never_answer_500(api: Api, app: Starlette) -> None:
    result = await api.gql('{ device(id: "1") { id } }', token="garbage")
    assert result.status == 200
    assert result.code == "UNAUTHENTICATED"


async def test_graphiql_is_served_from_our_own_files_with_no_external_host(http: httpx.AsyncClient) -> None:
    """It loads offline and under a strict CSP: every script and stylesheet is the server's own
    (vendored build, app/http/static/graphiql), nothing inline runs, nothing comes from a CDN."""
    page = await http.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources
    assert all(s.startswith("/graphiql/") for s in sources), sources
    assert not re.search(r"<script>(?!\s*</script>)", page.text)  # no inline script
    for source in sources:
        asset = await http.get(source)
        assert asset.status_code == 200, source
        assert asset.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript",
                                                               "text/css"), source
    init = (await http.get("/graphiql/init.js")).text
    assert "X-Tenant-ID" in init  # the headers editor starts with the headers every request needs


async def test_production_turns_graphiql_off_and_refuses_anonymous_introspection(platform: Platform) -> None:
    settings = platform.settings.with_(env="production", public_url="https://api.example.com")
    assert settings.graphiql is False
    production = dataclasses.replace(platform, settings=settings)
    transport = httpx.ASGITransport(app=create_app(platform=production))
    async with httpx.AsyncClient(transport=transport, base_url="http://tenantry.test") as client:
        assert (await client.get("/graphql", headers={"accept": "text/html"})).status_code == 404
        assert (await client.get("/graphiql/graphiql.min.js")).status_code == 404
        for query in ("{ __schema { types { name } } }", '{ __type(name: "Tenant") { name } }'):
            # Any Authorization header used to pass: the caller must be one the gate verifies.
            for headers in ({}, {"authorization": "Bearer x"}, {"authorization": "Basic Zm9vOmJhcg=="},
                            {"authorization": "Bearer tapi_t123456789_forged"}):
                refused = await client.post("/graphql", json={"query": query}, headers=headers)
                assert refused.status_code == 401, headers
                assert refused.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        assert (await client.post("/graphql", json={"query": "{ __typename }"})).status_code == 200
        login = await client.post("/graphql", json={
            "query": "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }",
            "variables": {"e": ADMIN_EMAIL, "p": ADMIN_PASSWORD}})
        token = login.json()["data"]["login"]["accessToken"]
        allowed = await client.post("/graphql", json={"query": "{ __schema { queryType { name } } }"},
                                    headers={"authorization": f"Bearer {token}"})
        assert allowed.json()["data"]["__schema"]["queryType"]["name"] == "Query"


def test_production_needs_a_public_url() -> None:
    with pytest.raises(SystemExit, match="TENANTRY_PUBLIC_URL"):
        Settings.from_env({"TENANTRY_ENV": "production"})
    with pytest.raises(SystemExit, match="TENANTRY_ENV"):
        Settings.from_env({"TENANTRY_ENV": "staging"})
    assert Settings.from_env({"TENANTRY_ENV": "production", "TENANTRY_PUBLIC_URL": "https://x.example"}).production


async def test_one_structured_access_log_line_per_request(api: Api, world: object,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    from app.logs import JsonFormatter
    from tests.conftest import World

    assert isinstance(world, World)
    t = await world.tenant()
    with caplog.at_level(logging.INFO, logger="tenantry.access"):
        await api.gql("query Devices { devices { totalCount } }", token=t.token, tenant=t.id)
        await api.gql("{ nope }", token=t.token, tenant=t.id)
    records = [r for r in caplog.records if r.name == "tenantry.access"]
    assert len(records) == 2
    ok, bad = (orjson.loads(JsonFormatter().format(r)) for r in records)
    assert ok["tenant"] == t.id
    assert ok["operation"] == "Devices"
    assert ok["status"] == 200
    assert ok["duration_ms"] >= 0
    assert ok["request_id"]
    assert "code" not in ok
    assert (bad["status"], bad["code"]) == (400, "INVALID_INPUT")
    assert f"tenant={t.id}" in records[0].getMessage()


@pytest.mark.parametrize("log_format", ["json", "console"])
async def test_the_access_log_written_in_batches_reads_as_the_formatter_writes(
        api: Api, world: object, capsys: pytest.CaptureFixture[str], log_format: str) -> None:
    """configure_logging gives the access log a batched handler, whose lines are formatted
    without a LogRecord: they must read as the configured formatter writes any other line."""
    from app.logs import BufferedLineHandler, configure_logging
    from tests.conftest import World

    assert isinstance(world, World)
    t = await world.tenant()
    root, access = logging.getLogger(), logging.getLogger("tenantry.access")
    saved = (root.handlers[:], root.level, access.handlers[:], access.propagate)
    try:
        configure_logging(log_format)
        await api.gql("query Devices { devices { totalCount } }", token=t.token, tenant=t.id)
        logging.getLogger("tenantry.other").info("an ordinary line")
        handler = access.handlers[0]
        assert isinstance(handler, BufferedLineHandler)
        handler.flush()
    finally:
        for added in access.handlers:
            added.close()
        root.handlers[:], access.handlers[:] = saved[0], saved[2]
        root.setLevel(saved[1])
        access.propagate = saved[3]
    lines = [line for line in capsys.readouterr().err.splitlines() if "tenantry." in line]
    line, other = (next(x for x in lines if name in x) for name in ("tenantry.access", "tenantry.other"))
    if log_format == "json":
        entry, ordinary = orjson.loads(line), orjson.loads(other)
        assert list(entry)[:4] == list(ordinary)[:4] == ["time", "level", "logger", "message"]
        assert entry["level"] == ordinary["level"] == "info"
        assert (entry["tenant"], entry["operation"], entry["status"]) == (t.id, "Devices", 200)
        assert entry["message"].startswith("POST /graphql 200 ")
    else:
        pattern = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    tenantry\.(access|other): "
        assert re.match(pattern, line), line
        assert re.match(pattern, other), other
        assert f"tenant={t.id} op=Devices code=-" in line


def test_log_level_is_configurable() -> None:
    assert Settings.from_env({"TENANTRY_LOG_LEVEL": "warning"}).log_level == "WARNING"
    with pytest.raises(SystemExit, match="TENANTRY_LOG_LEVEL"):
        Settings.from_env({"TENANTRY_LOG_LEVEL": "loud"})
