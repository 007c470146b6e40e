"""services.common.tracing: env switches, and real grpc.aio client/server spans on loopback.

OpenTelemetry's global TracerProvider can be set once per process, so every test here
uses ``set_global=False`` and passes its provider to the interceptors explicitly.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import tracing
from tests.unit.tracing_support import clean_env, finished  # noqa: F401  (clean_env is autouse: tracing starts off)


# --------------------------------------------------------------------------- switches


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, ["otlp_proto_grpc"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, ["otlp_proto_http"]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, ["otlp_proto_http"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp_proto_grpc", "console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_exporter_names_from_env(env, expected):
    assert tracing.exporter_names(env) == expected
    assert tracing.tracing_requested(env) == bool(expected)


def test_unsupported_protocol_is_a_clear_error():
    with pytest.raises(ValueError, match="http/json"):
        tracing.exporter_names({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_off_by_default_and_nearly_free():
    assert tracing.setup_tracing("gateway") is None
    assert tracing.get_tracer_provider() is None
    # Off: no SDK; one small interceptor only gives requests their trace id (tests below).
    (only,) = tracing.server_interceptors()
    assert isinstance(only, tracing.TraceIdOnlyServerInterceptor)
    assert tracing.client_interceptors() == []
    assert tracing.outgoing_metadata() is None  # outside a request
    first, second = tracing.span("a", x=1), tracing.span("b")
    assert first is second  # one shared null context: no allocation per call
    with first as current:
        assert not current.is_recording()
        tracing.set_attributes(anything=1)
        assert tracing.current_trace_id() == ""


def test_env_enables_the_otlp_http_exporter_and_the_sdk_reads_the_sampler(monkeypatch):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    provider = tracing.setup_tracing("retrieval", set_global=False)
    assert isinstance(provider, TracerProvider)
    processors = provider._active_span_processor._span_processors
    assert len(processors) == 1 and isinstance(processors[0], BatchSpanProcessor)
    assert isinstance(processors[0]._batch_processor._exporter, OTLPSpanExporter)
    assert isinstance(provider.sampler, sampling.ParentBased)
    assert "TraceIdRatioBased{0.25}" in provider.sampler.get_description()
    assert provider.resource.attributes["service.name"] == "retrieval"
    assert tracing.get_tracer_provider() is provider


def test_otel_service_name_wins_over_the_code_default(monkeypatch):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "search-gateway-canary")
    provider = tracing.setup_tracing("gateway", exporter=InMemorySpanExporter(), set_global=False)
    assert provider.resource.attributes["service.name"] == "search-gateway-canary"


def test_sampler_always_off_records_nothing(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    exporter = InMemorySpanExporter()
    tracing.setup_tracing("reranker", exporter=exporter, set_global=False)
    with tracing.span("tokenize") as s:
        assert not s.is_recording()
    assert exporter.get_finished_spans() == ()


def test_inner_spans_nest_and_record_errors():
    exporter = InMemorySpanExporter()
    tracing.setup_tracing("reranker", exporter=exporter, set_global=False)
    with tracing.span("outer", **{"rerank.pairs": 3}) as outer:
        trace_id = tracing.current_trace_id()
        tracing.set_attributes(**{"search.top_k": 10})
        with pytest.raises(RuntimeError):
            with tracing.span("inference"):
                raise RuntimeError("onnx failed")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert trace_id == format(outer.get_span_context().trace_id, "032x") and len(trace_id) == 32
    assert spans["inference"].parent.span_id == spans["outer"].context.span_id
    assert spans["outer"].attributes == {"rerank.pairs": 3, "search.top_k": 10}
    assert spans["inference"].status.status_code == trace.StatusCode.ERROR
    assert spans["inference"].events[0].name == "exception"
    assert tracing.current_trace_id() == ""


def test_shutdown_turns_tracing_off_again():
    tracing.setup_tracing("gateway", exporter=InMemorySpanExporter(), set_global=False)
    assert tracing.server_interceptors() and tracing.client_interceptors()
    tracing.shutdown_tracing()
    assert tracing.get_tracer_provider() is None and tracing.client_interceptors() == []
    assert [type(i) for i in tracing.server_interceptors()] == [tracing.TraceIdOnlyServerInterceptor]


# --------------------------------------------------------------------------- real client and server


class Echo:
    """A tiny servicer: answers with the trace id it saw, after an inner span."""

    def __init__(self) -> None:
        self.seen_trace_ids: list[str] = []

    async def say(self, request: bytes, context) -> bytes:
        with tracing.span("inner.work", **{"payload.bytes": len(request)}):
            self.seen_trace_ids.append(tracing.current_trace_id())
            await asyncio.sleep(0)
        return request

    async def fail(self, request: bytes, context) -> bytes:
        await context.abort(grpc.StatusCode[request.decode()], "failed on purpose")


@pytest.fixture
async def traced():
    exporter = InMemorySpanExporter()
    provider = tracing.setup_tracing("test-service", exporter=exporter, set_global=False)
    echo = Echo()
    server = grpc.aio.server(interceptors=tracing.server_interceptors(tracer_provider=provider))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "demo.v1.Echo",
                {"Say": grpc.unary_unary_rpc_method_handler(echo.say), "Fail": grpc.unary_unary_rpc_method_handler(echo.fail)},
            ),
        )
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", provider, exporter, echo
    await server.stop(None)


async def test_client_span_is_the_parent_of_the_server_span(traced):
    address, provider, exporter, echo = traced
    async with grpc.aio.insecure_channel(address, interceptors=tracing.client_interceptors(tracer_provider=provider)) as ch:
        assert await ch.unary_unary("/demo.v1.Echo/Say")(b"hello", timeout=5) == b"hello"
    spans = exporter.get_finished_spans()
    client = [s for s in spans if s.kind == trace.SpanKind.CLIENT]
    server = [s for s in spans if s.kind == trace.SpanKind.SERVER]
    inner = [s for s in spans if s.name == "inner.work"]
    assert len(client) == len(server) == len(inner) == 1, [s.name for s in spans]
    client, server, inner = client[0], server[0], inner[0]
    assert client.name == server.name == "/demo.v1.Echo/Say"
    assert server.context.trace_id == client.context.trace_id == inner.context.trace_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert server.parent.is_remote
    assert inner.parent.span_id == server.context.span_id
    assert server.attributes["rpc.service"] == "demo.v1.Echo" and server.attributes["rpc.method"] == "Say"
    # The handler (and so its logs and trailing metadata) sees the same trace id.
    assert echo.seen_trace_ids == [format(client.context.trace_id, "032x")]


async def test_a_client_supplied_traceparent_is_continued(traced):
    address, _, exporter, echo = traced
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with grpc.aio.insecure_channel(address) as ch:  # no client instrumentation: a foreign caller
        await ch.unary_unary("/demo.v1.Echo/Say")(
            b"x", timeout=5, metadata=(("traceparent", f"00-{trace_id}-{parent_id}-01"),)
        )
    (server,) = [s for s in await finished(exporter) if s.kind == trace.SpanKind.SERVER]
    assert format(server.context.trace_id, "032x") == trace_id
    assert format(server.parent.span_id, "016x") == parent_id
    assert echo.seen_trace_ids == [trace_id]


async def test_without_traceparent_the_server_starts_a_new_trace(traced):
    address, _, exporter, echo = traced
    async with grpc.aio.insecure_channel(address) as ch:
        await ch.unary_unary("/demo.v1.Echo/Say")(b"x", timeout=5)
    (server,) = [s for s in await finished(exporter) if s.kind == trace.SpanKind.SERVER]
    assert server.parent is None
    assert echo.seen_trace_ids == [format(server.context.trace_id, "032x")]


@pytest.mark.parametrize("code,server_status", [("NOT_FOUND", "UNSET"), ("INTERNAL", "ERROR")])
async def test_status_codes_on_the_spans(traced, code, server_status):
    # OpenTelemetry's RPC conventions: every non-OK code is an error on the client span; on
    # the server span only server faults are (a client's NOT_FOUND leaves it UNSET).
    address, provider, exporter, _ = traced
    async with grpc.aio.insecure_channel(address, interceptors=tracing.client_interceptors(tracer_provider=provider)) as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await ch.unary_unary("/demo.v1.Echo/Fail")(code.encode(), timeout=5)
    spans = {s.kind: s for s in await finished(exporter)}
    assert set(spans) == {trace.SpanKind.CLIENT, trace.SpanKind.SERVER}
    assert spans[trace.SpanKind.CLIENT].status.status_code == trace.StatusCode.ERROR
    assert spans[trace.SpanKind.SERVER].status.status_code == trace.StatusCode[server_status]
    for s in spans.values():
        assert s.attributes["rpc.grpc.status_code"] == grpc.StatusCode[code].value[0]


async def test_health_checks_are_not_traced(traced):
    address, provider, exporter, _ = traced
    async with grpc.aio.insecure_channel(address, interceptors=tracing.client_interceptors(tracer_provider=provider)) as ch:
        response = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        await ch.unary_unary("/demo.v1.Echo/Say")(b"x", timeout=5)
    names = {s.name for s in exporter.get_finished_spans()}
    assert "/grpc.health.v1.Health/Check" not in names
    assert "/demo.v1.Echo/Say" in names


async def test_excluded_services_from_env(traced, monkeypatch):
    address, provider, exporter, _ = traced
    monkeypatch.setenv("OTEL_PYTHON_GRPC_EXCLUDED_SERVICES", "demo.v1.Echo")
    async with grpc.aio.insecure_channel(address, interceptors=tracing.client_interceptors(tracer_provider=provider)) as ch:
        await ch.unary_unary("/demo.v1.Echo/Say")(b"x", timeout=5)
    # The client filter is read when the interceptors are built (now); the server's was built before.
    assert [s.kind for s in exporter.get_finished_spans() if s.name == "/demo.v1.Echo/Say"] == [trace.SpanKind.SERVER]


# --------------------------------------------------------------------------- real exporters


class OtlpReceiver:
    """A minimal OTLP trace receiver (gRPC TraceService and HTTP /v1/traces) that keeps span names."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str]] = []  # (service.name, span name)

    def record(self, request) -> None:
        for resource_spans in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
            )
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((service, s.name) for s in scope_spans.spans)


def test_otlp_grpc_exporter_delivers_spans_to_a_real_receiver(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    receiver = OtlpReceiver()

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            receiver.record(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        assert tracing.setup_tracing("retrieval", set_global=False) is not None
        with tracing.span("qdrant.query"):
            pass
        tracing.shutdown_tracing()  # flushes the batch processor
    finally:
        server.stop(None)
    assert receiver.spans == [("retrieval", "qdrant.query")]


def test_otlp_http_exporter_delivers_spans_to_a_real_receiver(monkeypatch):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    receiver = OtlpReceiver()
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            paths.append(self.path)
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            receiver.record(request)
            payload = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{httpd.server_address[1]}")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "reranker-eu")
        tracing.setup_tracing("reranker", set_global=False)
        with tracing.span("inference"):
            pass
        tracing.shutdown_tracing()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert paths == ["/v1/traces"]
    assert receiver.spans == [("reranker-eu", "inference")]


def test_console_exporter_and_global_provider_in_a_fresh_process():
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "from opentelemetry import trace\n"
        "from services.common import tracing\n"
        "p = tracing.setup_tracing('gateway')\n"
        "assert trace.get_tracer_provider() is p\n"
        "with tracing.span('fusion'):\n"
        "    print('TRACE', tracing.current_trace_id())\n"
        "tracing.shutdown_tracing()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_TRACES_EXPORTER"] = "console"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    trace_id = next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("TRACE"))
    assert len(trace_id) == 32
    assert '"name": "fusion"' in out.stdout and f'"trace_id": "0x{trace_id}"' in out.stdout
    assert '"service.name": "gateway"' in out.stdout
