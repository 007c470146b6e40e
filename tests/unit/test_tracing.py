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


# --------------------------------------------------------------------------- trace id to the caller, on real servers


class Service:
    """Answers, aborts or fails the way the platform's servicers do, behind the platform's interceptors."""

    def __init__(self) -> None:
        self.log = __import__("logging").getLogger("test.service")

    async def ok(self, request: bytes, context) -> bytes:
        self.log.info("handling", extra={"size": len(request)})
        return request

    async def not_found(self, request: bytes, context) -> bytes:
        from services.common.errors import NotFound

        raise NotFound("no such collection")

    async def plain_abort(self, request: bytes, context) -> bytes:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "who are you")

    async def bug(self, request: bytes, context) -> bytes:
        raise RuntimeError("a bug")

    async def unavailable(self, request: bytes, context) -> bytes:
        from services.common.errors import Unavailable

        raise Unavailable("qdrant is down")


async def finished(exporter, kind=trace.SpanKind.SERVER, count: int = 1, timeout_s: float = 5.0) -> list:
    """The exporter's finished spans once ``count`` of ``kind`` are among them. A server span ends
    in the interceptor after the status has gone out, so the client can see the error first."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        spans = list(exporter.get_finished_spans())
        if sum(s.kind == kind for s in spans) >= count or asyncio.get_running_loop().time() > deadline:
            return spans
        await asyncio.sleep(0.01)


async def _platform_server(provider, interceptors=None):
    """A grpc.aio server with the interceptor chain of services/common/server.py."""
    from services.common.status import ErrorMappingInterceptor

    service = Service()
    chain = interceptors if interceptors is not None else [*tracing.server_interceptors(tracer_provider=provider), ErrorMappingInterceptor()]
    server = grpc.aio.server(interceptors=chain)
    methods = {
        "Ok": service.ok, "NotFound": service.not_found, "PlainAbort": service.plain_abort, "Bug": service.bug,
        "Unavailable": service.unavailable,
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(
            "demo.v1.Platform", {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in methods.items()}
        ),)
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def platform():
    exporter = InMemorySpanExporter()
    provider = tracing.setup_tracing("test-service", exporter=exporter, set_global=False)
    server, address = await _platform_server(provider)
    yield address, exporter
    await server.stop(None)


def _request_infos(error: grpc.aio.AioRpcError) -> list[str]:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    ids = []
    for detail in status.details if status else ():
        info = error_details_pb2.RequestInfo()
        if detail.Unpack(info):
            ids.append(info.request_id)
    return ids


async def test_an_ok_answer_carries_the_trace_id_in_trailing_metadata(platform):
    address, exporter = platform
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with grpc.aio.insecure_channel(address) as ch:
        call = ch.unary_unary("/demo.v1.Platform/Ok")(
            b"x", timeout=5, metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),)
        )
        assert await call == b"x"
        assert dict(await call.trailing_metadata())[tracing.TRACE_ID_METADATA_KEY] == trace_id


@pytest.mark.parametrize(
    "method,code,span_error",
    [
        ("NotFound", grpc.StatusCode.NOT_FOUND, False),  # ServiceError -> abort_with_status
        ("Unavailable", grpc.StatusCode.UNAVAILABLE, True),
        ("Bug", grpc.StatusCode.INTERNAL, True),  # unhandled -> INTERNAL with the trace id in the message
        ("PlainAbort", grpc.StatusCode.UNAUTHENTICATED, False),  # context.abort() keeps what was set before
    ],
)
async def test_an_error_carries_the_trace_id_and_its_code_is_on_the_server_span(platform, method, code, span_error):
    address, exporter = platform
    async with grpc.aio.insecure_channel(address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ch.unary_unary(f"/demo.v1.Platform/{method}")(b"x", timeout=5)
    error = caught.value
    assert error.code() == code
    (server,) = [s for s in await finished(exporter) if s.kind == trace.SpanKind.SERVER]
    trace_id = format(server.context.trace_id, "032x")
    assert dict(error.trailing_metadata())[tracing.TRACE_ID_METADATA_KEY] == trace_id
    if method != "PlainAbort":  # a bare abort() has no rich status; the metadata still has the id
        assert _request_infos(error) == [trace_id]
    if method == "Bug":
        assert error.details().endswith(f"(trace id {trace_id})")
    assert server.attributes["rpc.grpc.status_code"] == code.value[0]
    assert (server.status.status_code == trace.StatusCode.ERROR) is span_error


@pytest.fixture
async def untraced():
    """The platform's interceptor chain with tracing off (no exporter configured: `make up`)."""
    assert tracing.get_tracer_provider() is None
    server, address = await _platform_server(None)
    yield address
    await server.stop(None)


@pytest.mark.parametrize("method,code", [("NotFound", grpc.StatusCode.NOT_FOUND), ("Bug", grpc.StatusCode.INTERNAL),
                                         ("PlainAbort", grpc.StatusCode.UNAUTHENTICATED)])
async def test_with_tracing_off_every_error_still_carries_a_trace_id(untraced, method, code):
    async with grpc.aio.insecure_channel(untraced) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ch.unary_unary(f"/demo.v1.Platform/{method}")(b"x", timeout=5)
    error = caught.value
    assert error.code() == code
    trace_id = dict(error.trailing_metadata())[tracing.TRACE_ID_METADATA_KEY]
    assert len(trace_id) == 32 and int(trace_id, 16) != 0
    if method != "PlainAbort":
        assert _request_infos(error) == [trace_id]
    if method == "Bug":
        assert error.details().endswith(f"(trace id {trace_id})")


async def test_with_tracing_off_ids_differ_per_request_and_a_callers_traceparent_is_continued(untraced):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with grpc.aio.insecure_channel(untraced) as ch:
        ids = set()
        for _ in range(3):
            call = ch.unary_unary("/demo.v1.Platform/Ok")(b"x", timeout=5)
            await call
            ids.add(dict(await call.trailing_metadata())[tracing.TRACE_ID_METADATA_KEY])
        assert len(ids) == 3
        call = ch.unary_unary("/demo.v1.Platform/Ok")(
            b"x", timeout=5, metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),))
        await call
        assert dict(await call.trailing_metadata())[tracing.TRACE_ID_METADATA_KEY] == trace_id
        call = ch.unary_unary("/demo.v1.Platform/Ok")(b"x", timeout=5, metadata=(("traceparent", "garbage"),))
        await call  # a malformed traceparent starts a new trace
        assert dict(await call.trailing_metadata())[tracing.TRACE_ID_METADATA_KEY] != trace_id


async def test_with_tracing_off_log_lines_and_downstream_calls_carry_the_id(untraced, json_lines):
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    async with grpc.aio.insecure_channel(untraced) as ch:
        await ch.unary_unary("/demo.v1.Platform/Ok")(
            b"abc", timeout=5, metadata=(("traceparent", f"00-{trace_id}-b7ad6b7169203331-00"),))
    (line,) = [line for line in json_lines() if line["message"] == "handling"]
    assert line["trace_id"] == trace_id and len(line["span_id"]) == 16
    assert line["span_id"] != "b7ad6b7169203331"  # the server's own span id, child of the caller's
    # Inside a request the gateway's downstream calls carry the same trace id.
    from opentelemetry import context as otel_context

    parent = trace.SpanContext(int(trace_id, 16), 0x1234, is_remote=False)
    token = otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(parent)))
    try:
        assert tracing.outgoing_metadata() == (("traceparent", f"00-{trace_id}-0000000000001234-00"),)
    finally:
        otel_context.detach(token)


async def test_unsampled_requests_get_ids_and_sampled_ones_complete_traces(monkeypatch):
    # parentbased_traceidratio: the root decides; every hop follows the caller's decision.
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    exporter = InMemorySpanExporter()
    provider = tracing.setup_tracing("test-service", exporter=exporter, set_global=False)
    server, address = await _platform_server(provider)
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as caught:  # a new root: ratio 0, not sampled
                await ch.unary_unary("/demo.v1.Platform/NotFound")(b"x", timeout=5)
            unsampled = dict(caught.value.trailing_metadata())[tracing.TRACE_ID_METADATA_KEY]
            assert len(unsampled) == 32 and _request_infos(caught.value) == [unsampled]
            assert exporter.get_finished_spans() == ()
            sampled = "4bf92f3577b34da6a3ce929d0e0e4736"  # the caller sampled it: recorded here too
            call = ch.unary_unary("/demo.v1.Platform/Ok")(
                b"x", timeout=5, metadata=(("traceparent", f"00-{sampled}-00f067aa0ba902b7-01"),))
            await call
            assert dict(await call.trailing_metadata())[tracing.TRACE_ID_METADATA_KEY] == sampled
    finally:
        await server.stop(None)
    (span,) = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == sampled


async def test_health_checks_get_no_trace_id(platform):
    address, _ = platform
    async with grpc.aio.insecure_channel(address) as ch:
        call = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert (await call).status == health_pb2.HealthCheckResponse.SERVING
        assert tracing.TRACE_ID_METADATA_KEY not in dict(await call.trailing_metadata() or ())
        ok = ch.unary_unary("/demo.v1.Platform/Ok")(b"x", timeout=5)  # while the same server's RPCs do
        await ok
        assert tracing.TRACE_ID_METADATA_KEY in dict(await ok.trailing_metadata())


# --------------------------------------------------------------------------- JSON logs carry the ids


@pytest.fixture
def json_lines():
    import io
    import json
    import logging

    from services.common.logs import json_handler

    stream = io.StringIO()
    handler = json_handler("test-service", stream)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(old_level)


async def test_log_lines_in_an_aio_handler_carry_the_trace_and_span_ids(platform, json_lines):
    address, exporter = platform
    async with grpc.aio.insecure_channel(address) as ch:
        await ch.unary_unary("/demo.v1.Platform/Ok")(b"abc", timeout=5)
    (server,) = [s for s in await finished(exporter) if s.kind == trace.SpanKind.SERVER]
    (line,) = [line for line in json_lines() if line["message"] == "handling"]
    assert line["trace_id"] == format(server.context.trace_id, "032x")
    assert line["span_id"] == format(server.context.span_id, "016x")
    assert line["service"] == "test-service" and line["size"] == 3


async def test_log_lines_in_a_worker_thread_need_the_context_copied(json_lines):
    import contextvars
    import logging
    from functools import partial

    tracing.setup_tracing("retrieval", exporter=InMemorySpanExporter(), set_global=False)
    log = logging.getLogger("test.worker")
    loop = asyncio.get_running_loop()
    with tracing.span("request"):
        trace_id = tracing.current_trace_id()
        await loop.run_in_executor(None, partial(contextvars.copy_context().run, log.info, "copied"))
        await loop.run_in_executor(None, log.info, "not copied")  # what retrieval's _run used to do
    lines = {line["message"]: line for line in json_lines()}
    assert lines["copied"]["trace_id"] == trace_id
    assert "trace_id" not in lines["not copied"]


def test_outside_a_request_log_lines_have_no_ids(json_lines):
    import logging

    tracing.setup_tracing("gateway", exporter=InMemorySpanExporter(), set_global=False)
    logging.getLogger("test").info("idle")
    (line,) = [line for line in json_lines() if line["message"] == "idle"]
    assert "trace_id" not in line and "span_id" not in line


def test_none_attributes_are_left_out():
    exporter = InMemorySpanExporter()
    tracing.setup_tracing("retrieval", exporter=exporter, set_global=False)
    with tracing.span("qdrant.count", **{"db.collection.name": "c", "qdrant.limit": None}):
        tracing.set_attributes(a=None, b=2)
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes) == {"db.collection.name": "c", "b": 2}


# --------------------------------------------------------------------------- spans for work batched across requests


class Item:
    """A stand-in for a tokenizers Encoding: a distinct object with a token count."""

    def __init__(self, n: int) -> None:
        self.ids = [0] * n


def _batcher(infer, **kwargs):
    from concurrent.futures import ThreadPoolExecutor

    from services.common.batching import DynamicBatcher

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
    batcher = DynamicBatcher(
        tracing.traced_batch(infer, tokens=lambda b: len(b) * max(len(e.ids) for e in b), **{"onnx.provider": "CPU"}),
        lambda e: len(e.ids),
        executor,
        **kwargs,
    )
    return batcher, executor


def _slow_scores(batch):
    import time

    import numpy as np

    time.sleep(0.02)  # inference takes time, in the worker thread
    return np.arange(len(batch), dtype=np.float32)


async def _score(batcher, name, items):
    with tracing.span(name), tracing.batch_member(items):
        return await batcher.submit(items)


async def test_requests_sharing_a_batch_each_get_queue_wait_and_inference_spans():
    exporter = InMemorySpanExporter()
    tracing.setup_tracing("reranker", exporter=exporter, set_global=False)
    batcher, executor = _batcher(_slow_scores, max_batch_items=8, max_wait_s=0.05)
    try:
        a, b = [Item(5), Item(7)], [Item(3), Item(4), Item(6)]
        await asyncio.gather(_score(batcher, "request-a", a), _score(batcher, "request-b", b))
    finally:
        await batcher.close()
        executor.shutdown()
    spans = exporter.get_finished_spans()
    parents = {s.name: s for s in spans if s.name.startswith("request-")}
    batch_ids = set()
    for name, own in (("request-a", 2), ("request-b", 3)):
        parent = parents[name]
        mine = [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]
        (wait,) = [s for s in mine if s.name == "batch.queue_wait"]
        (inference,) = [s for s in mine if s.name == "batch.inference"]
        assert wait.context.trace_id == inference.context.trace_id == parent.context.trace_id
        assert parent.start_time <= wait.start_time <= wait.end_time == inference.start_time
        assert inference.end_time - inference.start_time >= 15_000_000  # the 20 ms sleep, on the worker thread
        assert inference.end_time <= parent.end_time
        attrs = inference.attributes
        assert attrs["batch.size"] == 5 and attrs["batch.requests"] == 2 and attrs["batch.request_items"] == own
        assert attrs["batch.tokens"] == 5 * 7 and attrs["onnx.provider"] == "CPU"
        batch_ids.add(attrs["batch.id"])
    assert len(batch_ids) == 1  # one shared batch: a debugger can find the other requests by batch.id
    assert parents["request-a"].context.trace_id != parents["request-b"].context.trace_id


async def test_a_request_split_over_batches_gets_one_queue_wait_and_an_inference_span_per_batch():
    exporter = InMemorySpanExporter()
    tracing.setup_tracing("reranker", exporter=exporter, set_global=False)
    batcher, executor = _batcher(_slow_scores, max_batch_items=2, max_wait_s=0.0)
    try:
        await _score(batcher, "request", [Item(i + 1) for i in range(5)])
    finally:
        await batcher.close()
        executor.shutdown()
    names = sorted(s.name for s in exporter.get_finished_spans())
    assert names == ["batch.inference"] * 3 + ["batch.queue_wait", "request"]
    inference = [s for s in exporter.get_finished_spans() if s.name == "batch.inference"]
    assert sorted(s.attributes["batch.request_items"] for s in inference) == [1, 2, 2]


async def test_a_failed_batch_marks_the_inference_span_of_each_member():
    exporter = InMemorySpanExporter()
    tracing.setup_tracing("reranker", exporter=exporter, set_global=False)

    def broken(batch):
        raise RuntimeError("onnx runtime error")

    batcher, executor = _batcher(broken, max_wait_s=0.0)
    try:
        with pytest.raises(Exception, match="onnx runtime error"):
            await _score(batcher, "request", [Item(3)])
    finally:
        await batcher.close()
        executor.shutdown()
    (inference,) = [s for s in exporter.get_finished_spans() if s.name == "batch.inference"]
    assert inference.status.status_code == trace.StatusCode.ERROR
    assert inference.events[0].name == "exception"


async def test_batch_tracing_records_nothing_when_off_or_not_sampled(monkeypatch):
    seen = []

    def infer(batch):
        seen.append(len(batch))
        return _slow_scores(batch)

    # Off: batch_member is the shared null context and the wrapper calls straight through.
    assert tracing.batch_member([Item(1)]) is tracing.span("x")
    batcher, executor = _batcher(infer, max_wait_s=0.0)
    try:
        await _score(batcher, "request", [Item(2)])
        # Not sampled: nothing is registered either.
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
        exporter = InMemorySpanExporter()
        tracing.setup_tracing("reranker", exporter=exporter, set_global=False)
        await _score(batcher, "request", [Item(2)])
        assert tracing._members == {}
    finally:
        await batcher.close()
        executor.shutdown()
    assert seen == [1, 1] and exporter.get_finished_spans() == ()
