"""services.common.metrics: the contract's metric set, the RED interceptor on a real grpc.aio
server, the gateway's downstream helper, and the /metrics HTTP endpoint."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
import uuid

import grpc
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from services.cli.procs import free_port
from services.common import metrics

# The contract (project contract, "Prometheus metric names"): family name -> (type, label names).
CONTRACT = {
    "search_grpc_server_requests": ("counter", {"service", "method", "code"}),
    "search_grpc_server_request_duration_seconds": ("histogram", {"service", "method"}),
    "search_grpc_server_in_flight_requests": ("gauge", {"service", "method"}),
    "search_reranker_queue_pairs": ("gauge", set()),
    "search_reranker_queue_requests": ("gauge", set()),
    "search_reranker_batch_pairs": ("histogram", set()),
    "search_reranker_batch_tokens": ("histogram", set()),
    "search_reranker_queue_wait_seconds": ("histogram", set()),
    "search_reranker_tokenization_seconds": ("histogram", set()),
    "search_reranker_inference_seconds": ("histogram", set()),
    "search_reranker_pairs_scored": ("counter", set()),
    "search_reranker_rejected_requests": ("counter", set()),
    "search_reranker_execution_provider": ("info", set()),
    "search_retrieval_embedding_seconds": ("histogram", {"kind"}),
    "search_retrieval_qdrant_seconds": ("histogram", {"operation"}),
    "search_retrieval_points_upserted": ("counter", set()),
    "search_retrieval_embed_queue_texts": ("gauge", set()),
    "search_retrieval_embed_queue_requests": ("gauge", set()),
    "search_retrieval_embed_batch_texts": ("histogram", set()),
    "search_retrieval_embed_batch_tokens": ("histogram", set()),
    "search_retrieval_embed_queue_wait_seconds": ("histogram", set()),
    "search_retrieval_embed_inference_seconds": ("histogram", set()),
    "search_retrieval_embed_rejected_requests": ("counter", set()),
    "search_gateway_candidates": ("histogram", set()),
    "search_gateway_degraded_responses": ("counter", {"reason"}),
    "search_gateway_downstream_duration_seconds": ("histogram", {"target", "method"}),
    "search_gateway_downstream_errors": ("counter", {"target", "code"}),
    "search_gateway_retries": ("counter", {"target", "outcome"}),
    "search_gateway_circuit_open": ("gauge", {"target"}),
    "search_gateway_rejected_requests": ("counter", set()),
}


def families() -> dict[str, tuple[str, set[str]]]:
    out = {}
    for metric in metrics.ALL_METRICS:
        family = metric.describe()[0]
        out[family.name] = (family.type, set(metric._labelnames))
    return out


def test_every_contract_metric_is_defined_with_its_type_and_labels():
    defined = families()
    for name, (kind, labels) in CONTRACT.items():
        assert name in defined, f"{name} missing from services/common/metrics.py"
        assert defined[name] == (kind, labels), name


def test_all_metrics_lists_every_module_metric_and_all_are_prefixed():
    module_objects = {
        id(v) for v in vars(metrics).values() if hasattr(v, "describe") and hasattr(v, "_labelnames")
    }
    assert module_objects == {id(m) for m in metrics.ALL_METRICS}
    for metric in metrics.ALL_METRICS:
        assert metric.describe()[0].name.startswith("search_")
        assert metric.describe()[0].documentation.strip(), "every metric needs help text"


def test_latency_histograms_resolve_1ms_to_10s():
    assert metrics.LATENCY_BUCKETS[0] == 0.001 and metrics.LATENCY_BUCKETS[-1] == 10.0
    assert list(metrics.LATENCY_BUCKETS) == sorted(metrics.LATENCY_BUCKETS)
    # At least two buckets per decade between 1 ms and 10 s.
    for low in (0.001, 0.01, 0.1, 1.0):
        assert sum(low <= b < low * 10 for b in metrics.LATENCY_BUCKETS) >= 2
    seconds = [m for m in metrics.ALL_METRICS if m.describe()[0].type == "histogram" and m.describe()[0].name.endswith("_seconds")]
    assert len(seconds) == 9
    for metric in seconds:
        # _upper_bounds is the parent's bucket list, ending in +Inf.
        assert tuple(metric._upper_bounds[:-1]) == metrics.LATENCY_BUCKETS, metric.describe()[0].name


def test_batch_buckets_cover_64_pairs_and_32k_tokens():
    assert 64 in metrics.BATCH_PAIRS_BUCKETS and 32 in metrics.BATCH_PAIRS_BUCKETS
    assert 32768 in metrics.BATCH_TOKENS_BUCKETS and 8192 in metrics.BATCH_TOKENS_BUCKETS
    before = REGISTRY.get_sample_value("search_reranker_batch_pairs_bucket", {"le": "32.0"}) or 0
    before_inf = REGISTRY.get_sample_value("search_reranker_batch_pairs_bucket", {"le": "+Inf"}) or 0
    metrics.RERANK_BATCH_PAIRS.observe(32)
    metrics.RERANK_BATCH_PAIRS.observe(33)
    assert REGISTRY.get_sample_value("search_reranker_batch_pairs_bucket", {"le": "32.0"}) == before + 1
    assert REGISTRY.get_sample_value("search_reranker_batch_pairs_bucket", {"le": "+Inf"}) == before_inf + 2


def test_provider_info_is_exported_with_the_info_suffix():
    metrics.RERANK_PROVIDER_INFO.info({"provider": "CPUExecutionProvider", "model": "test-model"})
    assert (
        REGISTRY.get_sample_value(
            "search_reranker_execution_provider_info", {"provider": "CPUExecutionProvider", "model": "test-model"}
        )
        == 1.0
    )


# --------------------------------------------------------------------------- interceptor on a real server


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def bucket_bounds(histogram: str, **labels: str) -> list[str]:
    """The ``le`` labels of ``histogram``'s buckets for ``labels``, as exported."""
    bounds = []
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == f"{histogram}_bucket" and all(s.labels.get(k) == v for k, v in labels.items()):
                bounds.append(s.labels["le"])
    return bounds


class Behaviours:
    """Handlers for every way a unary call can end."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    async def ok(self, request: bytes, context) -> bytes:
        return request

    async def not_found(self, request: bytes, context) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    async def set_code(self, request: bytes, context) -> bytes:
        context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
        context.set_details("not yet")
        return b""

    async def crash(self, request: bytes, context) -> bytes:
        raise RuntimeError("bug")

    async def slow(self, request: bytes, context) -> bytes:
        self.entered.set()
        await self.release.wait()
        return b"done"

    async def sleep(self, request: bytes, context) -> bytes:
        await asyncio.sleep(5)
        return b""


class AbortingInterceptor(grpc.aio.ServerInterceptor):
    """An inner interceptor that turns ValueError into INVALID_ARGUMENT, like error mapping does."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary

        async def guarded(request, context):
            try:
                return await behavior(request, context)
            except ValueError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        return grpc.unary_unary_rpc_method_handler(guarded)


@pytest.fixture
async def server():
    service = f"test-{uuid.uuid4().hex[:8]}"
    behaviours = Behaviours()

    async def bad_arg(request, context):
        raise ValueError("query: must not be empty")

    handlers = {
        "Ok": behaviours.ok,
        "NotFound": behaviours.not_found,
        "SetCode": behaviours.set_code,
        "Crash": behaviours.crash,
        "Slow": behaviours.slow,
        "Sleep": behaviours.sleep,
        "BadArg": bad_arg,
    }
    srv = grpc.aio.server(interceptors=[metrics.MetricsServerInterceptor(service), AbortingInterceptor()])
    srv.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("demo.v1.Echo", {k: grpc.unary_unary_rpc_method_handler(v) for k, v in handlers.items()}),)
    )
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield service, channel, behaviours
    await channel.close()
    await srv.stop(None)


def requests_total(service: str, method: str, code: str) -> float:
    return sample("search_grpc_server_requests_total", service=service, method=f"demo.v1.Echo/{method}", code=code)


async def recorded(read, expected: float, timeout_s: float = 5.0) -> float:
    """``read()`` once it equals ``expected`` (or at the deadline). The server's interceptor
    records a call after its status has gone out, so the client can see the answer first."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (value := read()) != expected and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    return value


async def call(channel, method: str, timeout: float | None = 5.0) -> grpc.StatusCode:
    try:
        await channel.unary_unary(f"/demo.v1.Echo/{method}")(b"x", timeout=timeout)
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()


@pytest.mark.parametrize(
    "method,code",
    [
        ("Ok", "OK"),
        ("NotFound", "NOT_FOUND"),
        ("SetCode", "FAILED_PRECONDITION"),
        ("Crash", "UNKNOWN"),
        ("BadArg", "INVALID_ARGUMENT"),
    ],
)
async def test_interceptor_counts_each_call_once_with_the_status_the_client_sees(server, method, code):
    service, channel, _ = server
    seen = await call(channel, method)
    assert seen.name == code
    assert await recorded(lambda: requests_total(service, method, code), 1) == 1
    # No other code was recorded for this method.
    for other in grpc.StatusCode:
        if other.name != code:
            assert requests_total(service, method, other.name) == 0
    labels = {"service": service, "method": f"demo.v1.Echo/{method}"}
    assert sample("search_grpc_server_request_duration_seconds_count", **labels) == 1
    assert sample("search_grpc_server_in_flight_requests", **labels) == 0


async def test_access_log_line_per_rpc_at_debug_only(server, caplog):
    import logging

    service, channel, _ = server
    with caplog.at_level(logging.INFO, logger="search.rpc"):
        await call(channel, "Ok")
    assert [r for r in caplog.records if r.name == "search.rpc"] == []  # INFO: no access log
    with caplog.at_level(logging.DEBUG, logger="search.rpc"):
        await call(channel, "NotFound")
    (record,) = [r for r in caplog.records if r.name == "search.rpc"]
    assert record.getMessage() == "rpc finished"
    assert (record.method, record.code) == ("demo.v1.Echo/NotFound", "NOT_FOUND")
    assert 0 <= record.duration_ms < 5000


async def test_service_info_identifies_the_endpoint(server):
    service, _, _ = server
    assert sample("search_service_info", service=service, version=metrics._service_version()) == 1


async def test_in_flight_gauge_and_duration_of_a_slow_call(server):
    service, channel, behaviours = server
    labels = {"service": service, "method": "demo.v1.Echo/Slow"}
    called = time.perf_counter()
    pending = asyncio.ensure_future(call(channel, "Slow"))
    await asyncio.wait_for(behaviours.entered.wait(), 5)
    assert sample("search_grpc_server_in_flight_requests", **labels) == 1
    await asyncio.sleep(0.06)
    behaviours.release.set()
    assert await pending == grpc.StatusCode.OK
    answered = time.perf_counter() - called
    assert sample("search_grpc_server_in_flight_requests", **labels) == 0
    # One observation: at least the time the handler was held, at most what the caller waited.
    assert sample("search_grpc_server_request_duration_seconds_count", **labels) == 1
    observed = sample("search_grpc_server_request_duration_seconds_sum", **labels)
    assert 0.05 <= observed <= answered, (observed, answered)
    # It is counted in every bucket at or above its value and in none below.
    buckets = bucket_bounds("search_grpc_server_request_duration_seconds", **labels)
    assert len(buckets) > 2
    for le in buckets:
        expected = 1 if float(le) >= observed else 0
        assert sample("search_grpc_server_request_duration_seconds_bucket", le=le, **labels) == expected, (le, observed)


async def test_deadline_exceeded_on_the_server_side(server):
    service, channel, _ = server
    assert await call(channel, "Sleep", timeout=0.2) == grpc.StatusCode.DEADLINE_EXCEEDED
    labels = {"service": service, "method": "demo.v1.Echo/Sleep"}
    for _ in range(50):  # the server learns of the deadline asynchronously
        if sample("search_grpc_server_request_duration_seconds_count", **labels) == 1:
            break
        await asyncio.sleep(0.05)
    # grpc cancels the handler when the deadline passes; the interceptor tells it from a client cancel.
    assert requests_total(service, "Sleep", "DEADLINE_EXCEEDED") == 1
    assert requests_total(service, "Sleep", "CANCELLED") == 0
    assert sample("search_grpc_server_in_flight_requests", **labels) == 0


async def test_client_cancel_is_recorded_as_cancelled(server):
    service, channel, behaviours = server
    labels = {"service": service, "method": "demo.v1.Echo/Slow"}
    pending = channel.unary_unary("/demo.v1.Echo/Slow")(b"x", timeout=30)
    await asyncio.wait_for(behaviours.entered.wait(), 5)
    pending.cancel()
    for _ in range(50):
        if sample("search_grpc_server_request_duration_seconds_count", **labels) == 1:
            break
        await asyncio.sleep(0.05)
    assert requests_total(service, "Slow", "CANCELLED") == 1
    assert requests_total(service, "Slow", "DEADLINE_EXCEEDED") == 0
    assert sample("search_grpc_server_in_flight_requests", **labels) == 0


async def test_unknown_methods_are_not_recorded(server):
    service, channel, _ = server
    assert await call(channel, "NoSuchMethod") == grpc.StatusCode.UNIMPLEMENTED
    names = {
        s.labels.get("method")
        for family in REGISTRY.collect()
        if family.name == "search_grpc_server_requests"
        for s in family.samples
        if s.labels.get("service") == service
    }
    assert "demo.v1.Echo/NoSuchMethod" not in names


# --------------------------------------------------------------------------- downstream helper


async def test_observe_downstream_times_successes_and_counts_failures_by_code(server):
    _, channel, _ = server
    target = f"t-{uuid.uuid4().hex[:8]}"
    async with metrics.observe_downstream(target, "Ok"):
        await channel.unary_unary("/demo.v1.Echo/Ok")(b"x", timeout=5)
    with pytest.raises(grpc.aio.AioRpcError):
        async with metrics.observe_downstream(target, "NotFound"):
            await channel.unary_unary("/demo.v1.Echo/NotFound")(b"x", timeout=5)
    with pytest.raises(RuntimeError):
        async with metrics.observe_downstream(target, "Ok"):
            raise RuntimeError("client-side bug")
    assert sample("search_gateway_downstream_duration_seconds_count", target=target, method="Ok") == 2
    assert sample("search_gateway_downstream_duration_seconds_count", target=target, method="NotFound") == 1
    assert sample("search_gateway_downstream_errors_total", target=target, code="NOT_FOUND") == 1
    assert sample("search_gateway_downstream_errors_total", target=target, code="UNKNOWN") == 1
    assert sample("search_gateway_downstream_errors_total", target=target, code="OK") == 0


async def test_observe_downstream_counts_an_unreachable_target_as_unavailable():
    port = free_port()  # nothing listens there
    target = f"t-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async with metrics.observe_downstream(target, "Rerank"):
                await channel.unary_unary("/search.v1.RerankService/Rerank")(b"", timeout=2)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert sample("search_gateway_downstream_errors_total", target=target, code="UNAVAILABLE") == 1


# --------------------------------------------------------------------------- /metrics endpoint


def test_port_zero_disables_the_endpoint():
    assert metrics.start_metrics_server(0) is None


def test_metrics_endpoint_serves_the_contract_families():
    port = free_port()
    server = metrics.start_metrics_server(port, host="127.0.0.1")
    try:
        metrics.RERANK_QUEUE_PAIRS.set(17)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
        server.server_close()
    exposed = {family.name: family for family in text_string_to_metric_families(text)}
    # Families with no label values yet still have HELP/TYPE lines; the parser keeps them.
    for name, (kind, _) in CONTRACT.items():
        if kind == "info":  # the text format has no info type: a gauge named ..._info
            name, kind = name + "_info", "gauge"
        assert name in exposed, name
        assert exposed[name].type == kind, name
    assert [s.value for s in exposed["search_reranker_queue_pairs"].samples] == [17.0]
    with pytest.raises(OSError):  # the port is free again after shutdown; taking a used one fails
        with socket.socket() as blocker:
            blocker.bind(("127.0.0.1", 0))
            blocker.listen()
            metrics.start_metrics_server(blocker.getsockname()[1], host="127.0.0.1")


def test_provider_info_is_absent_until_set_in_a_fresh_process():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "from prometheus_client import generate_latest\n"
        "from services.common import metrics\n"
        "before = generate_latest().decode()\n"
        "metrics.RERANK_PROVIDER_INFO.info({'provider': 'CPUExecutionProvider', 'model': 'm'})\n"
        "after = generate_latest().decode()\n"
        "print([l for l in before.splitlines() if l.startswith('search_reranker_execution_provider_info')])\n"
        "print([l for l in after.splitlines() if l.startswith('search_reranker_execution_provider_info')])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    before, after = out.stdout.splitlines()
    assert before == "[]"  # the gateway and retrieval do not export an empty info series
    assert after == "['search_reranker_execution_provider_info{model=\"m\",provider=\"CPUExecutionProvider\"} 1.0']"
