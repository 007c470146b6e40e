"""services.common.tracing on the platform's real servers: the trace id reaches the caller, JSON
logs carry the ids, and work batched across requests gets spans linked to each request.

OpenTelemetry's global TracerProvider can be set once per process, so every test here
uses ``set_global=False`` and passes its provider to the interceptors explicitly.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import tracing
from tests.unit.tracing_support import clean_env, finished  # noqa: F401  (clean_env is autouse: tracing starts off)


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
