"""Persisted queries: Apollo's APQ protocol over POST and GET, and the operator's allow-list."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import httpx
import orjson
import pytest

from app.http.persisted import load_trusted
from app.main import create_app
from app.runtime.platform import Platform
from tests.conftest import World

DEVICES = "query Devices { devices(first: 5) { totalCount edges { node { name } } } }"


def _hash(document: str) -> str:
    return hashlib.sha256(document.encode()).hexdigest()


def _apq(document_hash: str) -> dict[str, object]:
    return {"persistedQuery": {"version": 1, "sha256Hash": document_hash}}


async def test_apq_registers_a_document_once_and_then_runs_it_by_hash_over_post_and_get(
        http: httpx.AsyncClient, world: World) -> None:
    tenant = await world.tenant()
    headers = {"authorization": f"Bearer {tenant.token}", "x-tenant-id": tenant.id}
    document = DEVICES + f" # {tenant.id}"  # a hash no other test registered
    digest = _hash(document)
    unknown = await http.post("/graphql", json={"extensions": _apq(digest)}, headers=headers)
    assert unknown.status_code == 200
    assert unknown.json()["errors"][0]["message"] == "PersistedQueryNotFound"
    assert unknown.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
    registered = await http.post("/graphql", json={"query": document, "extensions": _apq(digest)}, headers=headers)
    assert registered.json() == {"data": {"devices": {"totalCount": 0, "edges": []}}}
    by_hash = await http.post("/graphql", json={"extensions": _apq(digest)}, headers=headers)
    assert by_hash.json() == registered.json()
    # GET with only the hash: a short, cacheable URL.
    over_get = await http.get("/graphql", params={"extensions": orjson.dumps(_apq(digest)).decode()}, headers=headers)
    assert over_get.status_code == 200
    assert over_get.json() == registered.json()


@pytest.mark.parametrize("extensions", [
    {"persistedQuery": {"version": 1, "sha256Hash": "abc"}},
    {"persistedQuery": {"version": 2, "sha256Hash": "0" * 64}},
    {"persistedQuery": "yes"},
])
async def test_malformed_persisted_query_extensions_are_invalid_input(http: httpx.AsyncClient,
                                                                      extensions: dict[str, object]) -> None:
    response = await http.post("/graphql", json={"query": "{ __typename }", "extensions": extensions})
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "INVALID_INPUT"


async def test_a_hash_that_does_not_match_its_document_is_refused(http: httpx.AsyncClient) -> None:
    response = await http.post("/graphql", json={"query": "{ __typename }", "extensions": _apq("1" * 64)})
    assert response.status_code == 400
    assert response.json()["errors"][0]["message"] == "provided sha does not match query"


async def test_trusted_documents_refuse_every_other_document(platform: Platform, world: World,
                                                             tmp_path: Path) -> None:
    tenant = await world.tenant()
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(orjson.dumps({"format": "apollo-persisted-query-manifest", "version": 1, "operations": [
        {"id": _hash(DEVICES), "name": "Devices", "type": "query", "body": DEVICES}]}))
    settings = platform.settings.with_(trusted_documents=manifest)
    app = create_app(platform=dataclasses.replace(platform, settings=settings))
    headers = {"authorization": f"Bearer {tenant.token}", "x-tenant-id": tenant.id}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tenantry.test") as client:
        by_hash = await client.post("/graphql", json={"extensions": _apq(_hash(DEVICES))}, headers=headers)
        assert by_hash.json()["data"]["devices"]["totalCount"] == 0
        by_text = await client.post("/graphql", json={"query": DEVICES}, headers=headers)
        assert by_text.json() == by_hash.json()
        for body in ({"query": "{ tenant { id } }"},
                     {"query": "{ tenant { id } }", "extensions": _apq(_hash("{ tenant { id } }"))},
                     {"extensions": _apq(_hash("{ tenant { id } }"))}):
            refused = await client.post("/graphql", json=body, headers=headers)
            assert refused.status_code == 403, body
            assert refused.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"


def test_a_trusted_documents_file_with_a_wrong_hash_stops_the_server(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.json"
    wrong.write_bytes(orjson.dumps({"0" * 64: "{ __typename }"}))
    with pytest.raises(SystemExit, match="not the sha256"):
        load_trusted(wrong)
    plain = tmp_path / "plain.json"
    plain.write_bytes(orjson.dumps({_hash("{ __typename }"): "{ __typename }"}))
    assert load_trusted(plain) == {_hash("{ __typename }"): "{ __typename }"}
