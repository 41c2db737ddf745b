"""OpenTelemetry (the otel extra): a span per GraphQL request when configured, nothing otherwise."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.http.tracing import configure_tracing
from app.main import create_app
from app.runtime.platform import Platform
from tests.conftest import World, nowhere


def test_tracing_is_off_unless_an_endpoint_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert configure_tracing() is None


async def test_each_graphql_request_is_a_span_with_tenant_operation_and_outcome(platform: Platform,
                                                                              world: World) -> None:
    t = await world.tenant()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(platform=platform, tracer=provider.get_tracer("test"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tenantry.test") as client:
        headers = {"authorization": f"Bearer {t.token}", "x-tenant-id": t.id}
        await client.post("/graphql", json={"query": "query Inventory { devices { totalCount } }"}, headers=headers)
        await client.post("/graphql", json={"query": "mutation Oops($d: ID!) { deleteDevice(id: $d) }",
                                            "variables": {"d": nowhere(t)}}, headers=headers)
    ok, failed = exporter.get_finished_spans()
    assert ok.name == "graphql"
    assert ok.attributes is not None
    assert failed.attributes is not None
    assert (ok.attributes["tenantry.tenant"], ok.attributes["graphql.operation.name"],
            ok.attributes["http.response.status_code"]) == (t.id, "Inventory", 200)
    assert "tenantry.error_code" not in ok.attributes
    assert failed.attributes["tenantry.error_code"] == "NOT_FOUND"
    assert ok.attributes["tenantry.request_id"]
