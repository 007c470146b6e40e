"""What the tracing tests share: the environment they start from (no OTEL_* variable, tracing
off; import ``clean_env`` into a test module to apply it, autouse, there) and waiting for spans."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace

from services.common import tracing

OTEL_VARS = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_PYTHON_GRPC_EXCLUDED_SERVICES",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    tracing.shutdown_tracing()
    yield
    tracing.shutdown_tracing()


async def finished(exporter, kind=trace.SpanKind.SERVER, count: int = 1, timeout_s: float = 5.0) -> list:
    """The exporter's finished spans once ``count`` of ``kind`` are among them. A server span ends
    in the interceptor after the status has gone out, so the client can see the error first."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        spans = list(exporter.get_finished_spans())
        if sum(s.kind == kind for s in spans) >= count or asyncio.get_running_loop().time() > deadline:
            return spans
        await asyncio.sleep(0.01)
