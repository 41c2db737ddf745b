"""OpenTelemetry tracing, optional: a span per GraphQL request when OTEL_EXPORTER_OTLP_ENDPOINT
is set and the `otel` extra is installed (`pip install 'tenantry[otel]'`). Without them nothing
is imported and requests pay nothing.

The exporter reads the standard OTEL_* variables (endpoint, headers, service name); the span
carries the request id, tenant, operation name, HTTP status and error code.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("tenantry.tracing")


def configure_tracing() -> Any | None:
    """A tracer exporting over OTLP/HTTP, or None (not configured, or the extra is missing)."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed: "
                    "pip install 'tenantry[otel]'; tracing stays off")
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                                                        "tenantry")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider.get_tracer("tenantry")


def annotate(span: Any, attributes: dict[str, Any]) -> None:
    for key, value in attributes.items():
        if value is not None:
            span.set_attribute(key, value)
