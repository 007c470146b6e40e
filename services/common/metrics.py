"""Every Prometheus metric the platform exports, and the helpers that record them.

All metrics live in prometheus_client's default registry and are prefixed ``search_``.
Services record through the UPPER_CASE module objects below (and the two helpers
:class:`MetricsServerInterceptor` and :func:`observe_downstream`); docs/METRICS.md
describes each one, and observability/ holds the alert rules and dashboard built on them.

Label values are bounded: ``service`` is one of gateway/retrieval/reranker, ``method``
is a method the server actually registered (unknown methods are not recorded), and
``code`` is a gRPC status name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import prometheus_client
from prometheus_client import Counter, Gauge, Histogram, Info

from services.common.interceptors import with_unary
from services.common import thread_cpu

#: One DEBUG line per finished RPC (method, code, duration; trace_id when tracing is on, and on the
#: gateway the caller): LOG_LEVEL=DEBUG turns it on. Disabled, it costs one level check per request.
access_log = logging.getLogger("search.rpc")

#: Latency buckets (seconds): 1 ms to 10 s, roughly 1-2.5-5 per decade.
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Pairs per reranker batch: RERANKER_MAX_BATCH_PAIRS is 32 by default and at most 64 in practice.
BATCH_PAIRS_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)
#: Padded tokens per reranker batch (pairs x padded length): 32 pairs x 256 tokens = 8192; up to 32k+.
BATCH_TOKENS_BUCKETS: tuple[float, ...] = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 12288, 16384, 24576, 32768, 65536)
#: Candidates the gateway got back from retrieval (GATEWAY_DEFAULT_CANDIDATES by default).
CANDIDATES_BUCKETS: tuple[float, ...] = (0, 1, 5, 10, 20, 30, 50, 75, 100, 200, 500, 1000)

# --------------------------------------------------------------------------- RED, every service
GRPC_SERVER_REQUESTS = Counter(
    "search_grpc_server_requests",
    "gRPC requests handled, by service, full method name and final gRPC status code name.",
    ["service", "method", "code"],
)
GRPC_SERVER_REQUEST_DURATION = Histogram(
    "search_grpc_server_request_duration_seconds",
    "Time from the handler being invoked to its status being decided, per gRPC method (all codes).",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
GRPC_SERVER_IN_FLIGHT = Gauge(
    "search_grpc_server_in_flight_requests",
    "gRPC requests currently being handled, per method.",
    ["service", "method"],
)
SERVICE_INFO = Gauge(
    "search_service_info",
    "Always 1; identifies which platform service a /metrics endpoint belongs to (set by MetricsServerInterceptor).",
    ["service", "version"],
)

# --------------------------------------------------------------------------- reranker
RERANK_QUEUE_PAIRS = Gauge(
    "search_reranker_queue_pairs",
    "Query-passage pairs waiting in the dynamic batcher's queue (load shedding starts at RERANKER_MAX_QUEUE_PAIRS).",
)
RERANK_QUEUE_REQUESTS = Gauge(
    "search_reranker_queue_requests",
    "Rerank requests with pairs waiting in the dynamic batcher's queue.",
)
RERANK_BATCH_PAIRS = Histogram(
    "search_reranker_batch_pairs",
    "Query-passage pairs per inference batch.",
    buckets=BATCH_PAIRS_BUCKETS,
)
RERANK_BATCH_TOKENS = Histogram(
    "search_reranker_batch_tokens",
    "Padded tokens per inference batch (pairs x padded sequence length): the work the model actually does.",
    buckets=BATCH_TOKENS_BUCKETS,
)
RERANK_QUEUE_WAIT_SECONDS = Histogram(
    "search_reranker_queue_wait_seconds",
    "Time a request's pairs waited in the queue before their batch started.",
    buckets=LATENCY_BUCKETS,
)
RERANK_TOKENIZATION_SECONDS = Histogram(
    "search_reranker_tokenization_seconds",
    "Time to tokenize one request's query-passage pairs.",
    buckets=LATENCY_BUCKETS,
)
RERANK_INFERENCE_SECONDS = Histogram(
    "search_reranker_inference_seconds",
    "ONNX Runtime inference time per batch.",
    buckets=LATENCY_BUCKETS,
)
RERANK_PAIRS_SCORED = Counter(
    "search_reranker_pairs_scored",
    "Query-passage pairs scored by the cross-encoder.",
)
RERANK_REJECTED_REQUESTS = Counter(
    "search_reranker_rejected_requests",
    "Rerank requests shed because the queue was full (answered RESOURCE_EXHAUSTED).",
)
class _InfoOnceSet(Info):
    """An Info metric that exports nothing until ``info()`` is called.

    A plain Info exports ``..._info 1`` with no labels from every process that imports this
    module; this one appears only in the reranker, once it knows its execution provider.
    """

    def _child_samples(self):
        with self._lock:
            if not self._value:
                return ()
        return super()._child_samples()


RERANK_PROVIDER_INFO = _InfoOnceSet(
    "search_reranker_execution_provider",
    "The ONNX Runtime execution provider (and model) the reranker actually runs on.",
)

# --------------------------------------------------------------------------- retrieval
RETRIEVAL_EMBEDDING_SECONDS = Histogram(
    "search_retrieval_embedding_seconds",
    "Time to embed text with the dense encoder; kind=query (one search query) or document (one upsert batch).",
    ["kind"],
    buckets=LATENCY_BUCKETS,
)
RETRIEVAL_QDRANT_SECONDS = Histogram(
    "search_retrieval_qdrant_seconds",
    "Time spent in one Qdrant client call, by operation (query_points, upsert, delete, count, ...).",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
RETRIEVAL_POINTS_UPSERTED = Counter(
    "search_retrieval_points_upserted",
    "Points (documents) written to Qdrant.",
)
# The vector engine's own figures, per collection, refreshed every RETRIEVAL_STORE_STATS_SECONDS.
RETRIEVAL_STORE_POINTS = Gauge(
    "search_retrieval_store_points",
    "Points in a collection, as the vector engine counts them.",
    ["collection"],
)
RETRIEVAL_STORE_SEGMENTS = Gauge(
    "search_retrieval_store_segments",
    "Segments of a collection (embedded engine: of its shard).",
    ["collection"],
)
RETRIEVAL_STORE_INDEXED_VECTORS = Gauge(
    "search_retrieval_store_indexed_vectors",
    "Vectors of a collection held in an index (dense and sparse counted separately).",
    ["collection"],
)
RETRIEVAL_STORE_OPTIMIZING = Gauge(
    "search_retrieval_store_optimizing",
    "1 while an embedded collection is optimized (segments merged, HNSW graphs built) in a child process on a copy of its shard, until the copy is swapped in.",
)
RETRIEVAL_ENGINE_HELD_SECONDS = Counter(
    "search_retrieval_engine_held_seconds",
    "Seconds the embedded engine's calls held the retrieval process (Qdrant Edge keeps Python's GIL for the whole of each call): its rate near 1 means the process runs engine calls back to back and more load only queues.",
)
RETRIEVAL_STORE_FLUSHES = Counter(
    "search_retrieval_store_flushes",
    "Flushes of the embedded engine's segments to disk (every write is in its write-ahead log before it is acknowledged).",
)
# The bi-encoder's dynamic batcher (the reranker's mechanism; services/retrieval/batched_embedder.py).
RETRIEVAL_EMBED_QUEUE_TEXTS = Gauge(
    "search_retrieval_embed_queue_texts",
    "Texts (queries and documents) waiting in the embedder's batcher queue (shedding starts at EMBEDDER_MAX_QUEUE_TEXTS).",
)
RETRIEVAL_EMBED_QUEUE_REQUESTS = Gauge(
    "search_retrieval_embed_queue_requests",
    "Embedding requests (one search query, or one upsert's documents) with texts waiting in the queue.",
)
RETRIEVAL_EMBED_BATCH_TEXTS = Histogram(
    "search_retrieval_embed_batch_texts",
    "Texts per bi-encoder inference batch.",
    buckets=BATCH_PAIRS_BUCKETS,
)
RETRIEVAL_EMBED_BATCH_TOKENS = Histogram(
    "search_retrieval_embed_batch_tokens",
    "Padded tokens per bi-encoder inference batch (texts x padded sequence length).",
    buckets=BATCH_TOKENS_BUCKETS,
)
RETRIEVAL_EMBED_QUEUE_WAIT_SECONDS = Histogram(
    "search_retrieval_embed_queue_wait_seconds",
    "Time an embedding request's texts waited in the queue before their first batch started.",
    buckets=LATENCY_BUCKETS,
)
RETRIEVAL_EMBED_INFERENCE_SECONDS = Histogram(
    "search_retrieval_embed_inference_seconds",
    "ONNX Runtime inference time per bi-encoder batch.",
    buckets=LATENCY_BUCKETS,
)
RETRIEVAL_EMBED_REJECTED_REQUESTS = Counter(
    "search_retrieval_embed_rejected_requests",
    "Embedding requests shed because the embedder's queue was full (answered RESOURCE_EXHAUSTED).",
)

# --------------------------------------------------------------------------- gateway
GATEWAY_CANDIDATES = Histogram(
    "search_gateway_candidates",
    "Candidates returned by retrieval for one Search request.",
    buckets=CANDIDATES_BUCKETS,
)
GATEWAY_RERANK_DECISIONS = Counter(
    "search_gateway_rerank_decisions",
    "Search requests by the reranking stage's decision: the policy applied and the reason "
    "(always, never, auto_uncertain = reranked by the auto policy, auto_confident = not reranked, auto_weak_list = "
    "reranked as always on a collection with a weak list, auto_busy = a near-tie not reranked because "
    "GATEWAY_AUTO_RERANK_MAX_IN_FLIGHT were in flight, no_candidates).",
    ["policy", "reason"],
)
GATEWAY_DEGRADED = Counter(
    "search_gateway_degraded_responses",
    "Search responses served without reranking (retrieval order), by DegradedReason name.",
    ["reason"],
)
GATEWAY_DOWNSTREAM_DURATION = Histogram(
    "search_gateway_downstream_duration_seconds",
    "Duration of the gateway's calls to a downstream service (target=retrieval|reranker), all outcomes.",
    ["target", "method"],
    buckets=LATENCY_BUCKETS,
)
GATEWAY_DOWNSTREAM_ERRORS = Counter(
    "search_gateway_downstream_errors",
    "Failed gateway calls to a downstream service, by gRPC status code name.",
    ["target", "code"],
)
GATEWAY_RETRIES = Counter(
    "search_gateway_retries",
    "Retry decisions on idempotent downstream calls: outcome=retried (a retry was made) or "
    "budget_exhausted (the retry budget refused one).",
    ["target", "outcome"],
)
GATEWAY_CIRCUIT_OPEN = Gauge(
    "search_gateway_circuit_open",
    "1 while the circuit breaker of a downstream is open or probing (calls skipped, responses degraded), 0 when closed.",
    ["target"],
)
GATEWAY_REJECTED_REQUESTS = Counter(
    "search_gateway_rejected_requests",
    "Requests refused with RESOURCE_EXHAUSTED because GATEWAY_MAX_IN_FLIGHT requests were in flight "
    "(and their caller was at or over its fair share).",
)
# Callers (services/gateway/callers.py): `caller` is a configured caller's name or "other", so the
# label set is bounded by the callers file.
GATEWAY_CALLER_REQUESTS = Counter(
    "search_gateway_caller_requests",
    "SearchService calls (unary and streamed) by caller, full method name and final gRPC status code name.",
    ["caller", "method", "code"],
)
GATEWAY_CALLER_SHED = Counter(
    "search_gateway_caller_shed",
    "Calls refused with RESOURCE_EXHAUSTED by caller: reason=rate_limit (over its quota) or fair_share "
    "(at the in-flight cap and at or over its share).",
    ["caller", "reason"],
)
GATEWAY_CALLER_IN_FLIGHT = Gauge(
    "search_gateway_caller_in_flight_requests",
    "Unary SearchService calls in flight per caller (what the fair share of GATEWAY_MAX_IN_FLIGHT counts).",
    ["caller"],
)
GATEWAY_CALLERS_RELOADS = Counter(
    "search_gateway_callers_reloads",
    "Reloads of GATEWAY_API_KEYS_FILE (SIGHUP or a change seen): outcome=ok (in force) or error (rejected, the "
    "rules in force stay).",
    ["outcome"],
)

# --------------------------------------------------------------------------- caches (services/common/cache.py)
CACHE_LOOKUPS = Counter(
    "search_cache_lookups",
    "Lookups in a bounded cache, by cache (query_embedding, rerank_score, search_result) and outcome (hit, miss).",
    ["cache", "outcome"],
)
CACHE_EVICTIONS = Counter(
    "search_cache_evictions",
    "Entries a bounded cache dropped (least recently used) to stay within its entry bound.",
    ["cache"],
)
CACHE_ENTRIES = Gauge(
    "search_cache_entries",
    "Entries a bounded cache holds now.",
    ["cache"],
)
CACHE_CAPACITY = Gauge(
    "search_cache_capacity_entries",
    "The entry bound of a cache (its setting; 0 = the cache is off).",
    ["cache"],
)

# --------------------------------------------------------------------------- CPU by thread, every service
#: search_thread_cpu_seconds_total{thread}: read from /proc at each scrape (services/common/thread_cpu.py).
THREAD_CPU = thread_cpu.ThreadCpuCollector()
prometheus_client.REGISTRY.register(THREAD_CPU)

#: Every metric object above, for docs and tests.
ALL_METRICS: tuple[Any, ...] = (
    GRPC_SERVER_REQUESTS,
    GRPC_SERVER_REQUEST_DURATION,
    GRPC_SERVER_IN_FLIGHT,
    SERVICE_INFO,
    RERANK_QUEUE_PAIRS,
    RERANK_QUEUE_REQUESTS,
    RERANK_BATCH_PAIRS,
    RERANK_BATCH_TOKENS,
    RERANK_QUEUE_WAIT_SECONDS,
    RERANK_TOKENIZATION_SECONDS,
    RERANK_INFERENCE_SECONDS,
    RERANK_PAIRS_SCORED,
    RERANK_REJECTED_REQUESTS,
    RERANK_PROVIDER_INFO,
    RETRIEVAL_EMBEDDING_SECONDS,
    RETRIEVAL_QDRANT_SECONDS,
    RETRIEVAL_POINTS_UPSERTED,
    RETRIEVAL_STORE_POINTS,
    RETRIEVAL_STORE_SEGMENTS,
    RETRIEVAL_STORE_INDEXED_VECTORS,
    RETRIEVAL_STORE_OPTIMIZING,
    RETRIEVAL_STORE_FLUSHES,
    RETRIEVAL_ENGINE_HELD_SECONDS,
    RETRIEVAL_EMBED_QUEUE_TEXTS,
    RETRIEVAL_EMBED_QUEUE_REQUESTS,
    RETRIEVAL_EMBED_BATCH_TEXTS,
    RETRIEVAL_EMBED_BATCH_TOKENS,
    RETRIEVAL_EMBED_QUEUE_WAIT_SECONDS,
    RETRIEVAL_EMBED_INFERENCE_SECONDS,
    RETRIEVAL_EMBED_REJECTED_REQUESTS,
    GATEWAY_CANDIDATES,
    GATEWAY_RERANK_DECISIONS,
    GATEWAY_DEGRADED,
    GATEWAY_DOWNSTREAM_DURATION,
    GATEWAY_DOWNSTREAM_ERRORS,
    GATEWAY_RETRIES,
    GATEWAY_CIRCUIT_OPEN,
    GATEWAY_REJECTED_REQUESTS,
    GATEWAY_CALLER_REQUESTS,
    GATEWAY_CALLER_SHED,
    GATEWAY_CALLER_IN_FLIGHT,
    GATEWAY_CALLERS_RELOADS,
    CACHE_LOOKUPS,
    CACHE_EVICTIONS,
    CACHE_ENTRIES,
    CACHE_CAPACITY,
    THREAD_CPU,
)


def exported_names(metric: Any) -> list[str]:
    """The sample names a metric object exposes on /metrics (e.g. ``..._total``, ``..._bucket``)."""
    names: set[str] = set()
    for family in metric.describe():
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "info": ("_info",),
        }.get(family.type, ("",))
        base = family.name
        names.update(base + suffix for suffix in suffixes)
    return sorted(names)


def family_name(metric: Any) -> str:
    """The metric family name as Prometheus users see it (``..._total`` for counters, ``..._info`` for info)."""
    family = metric.describe()[0]
    return {"counter": family.name + "_total", "info": family.name + "_info"}.get(family.type, family.name)


def start_metrics_server(port: int, host: str = "0.0.0.0") -> Any | None:
    """Serve /metrics from the default registry on ``host:port`` in a daemon thread.

    ``port`` 0 disables the endpoint (returns None). Returns the HTTP server, whose
    ``shutdown()`` stops it. Raises OSError when the port is taken.
    """
    if not port:
        return None
    started = prometheus_client.start_http_server(port, addr=host)
    # prometheus_client >= 0.17 returns (server, thread); older versions return None.
    return started[0] if isinstance(started, tuple) else started


def _service_version() -> str:
    try:
        from importlib.metadata import version

        return version("grpc-search-platform")
    except Exception:  # noqa: BLE001 - not installed as a distribution (running from a checkout)
        return "unknown"


_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def _code_name(code: Any) -> str:
    if code is None:
        return grpc.StatusCode.OK.name
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int) and code in _CODES_BY_VALUE:
        return _CODES_BY_VALUE[code].name
    return grpc.StatusCode.UNKNOWN.name


def final_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The status the client will see, as a name (OK, INVALID_ARGUMENT, ...), once the handler
    returned (``error`` None) or raised ``error``."""
    if error is None or isinstance(error, grpc.aio.AbortError):
        # abort() and set_code() both record the code on the context; None means OK.
        code = context.code()
        if error is not None and code in (None, grpc.StatusCode.OK):
            return grpc.StatusCode.UNKNOWN.name
        return _code_name(code)
    if isinstance(error, asyncio.CancelledError):
        # grpc cancels the handler when the client cancels or the deadline passes.
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED.name
        return grpc.StatusCode.CANCELLED.name
    # Any other exception escaping the handler: grpc answers UNKNOWN.
    return grpc.StatusCode.UNKNOWN.name


class MetricsServerInterceptor(grpc.aio.ServerInterceptor):
    """Records RED metrics (requests by code, duration, in-flight) for unary-unary RPCs.

    Place it after the tracing interceptor and before any error-mapping interceptor, so
    it sees the status that error mapping decides. Streaming RPCs (Health.Watch,
    reflection) pass through unrecorded. At DEBUG it also writes one access-log line per
    RPC (logger ``search.rpc``), inside the server span so the line has the trace id.
    """

    def __init__(self, service_name: str) -> None:
        self.service = service_name
        SERVICE_INFO.labels(service=service_name, version=_service_version()).set(1)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary
        method = handler_call_details.method.lstrip("/")
        requests = GRPC_SERVER_REQUESTS
        duration = GRPC_SERVER_REQUEST_DURATION.labels(service=self.service, method=method)
        in_flight = GRPC_SERVER_IN_FLIGHT.labels(service=self.service, method=method)
        service = self.service

        async def recorded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            in_flight.inc()
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                elapsed = time.perf_counter() - start
                duration.observe(elapsed)
                in_flight.dec()
                code = final_code(context, error)
                requests.labels(service=service, method=method, code=code).inc()
                if access_log.isEnabledFor(logging.DEBUG):
                    access_log.debug(
                        "rpc finished", extra={"method": method, "code": code, "duration_ms": round(elapsed * 1000, 3)}
                    )

        return with_unary(handler, recorded)


@asynccontextmanager
async def observe_downstream(target: str, method: str) -> AsyncIterator[None]:
    """Time one gateway call to ``target`` (retrieval|reranker) and count its failure by code.

    Usage::

        async with metrics.observe_downstream("reranker", "Rerank"):
            response = await stub.Rerank(request, timeout=...)
    """
    start = time.perf_counter()
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        GATEWAY_DOWNSTREAM_ERRORS.labels(target=target, code=_code_name(exc.code())).inc()
        raise
    except asyncio.CancelledError:
        GATEWAY_DOWNSTREAM_ERRORS.labels(target=target, code=grpc.StatusCode.CANCELLED.name).inc()
        raise
    except Exception:
        GATEWAY_DOWNSTREAM_ERRORS.labels(target=target, code=grpc.StatusCode.UNKNOWN.name).inc()
        raise
    finally:
        GATEWAY_DOWNSTREAM_DURATION.labels(target=target, method=method).observe(time.perf_counter() - start)
