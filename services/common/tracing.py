"""OpenTelemetry tracing: the only module in the platform that knows OpenTelemetry.

Tracing is off by default and then costs (almost) nothing: no SDK is loaded, one small
interceptor gives every request a trace id (below), :func:`span` returns a shared null
context. It turns on when the standard environment asks for it:

* ``OTEL_TRACES_EXPORTER`` set to anything but ``none`` (``otlp``, ``console``,
  ``otlp_proto_grpc``, ``otlp_proto_http``; comma-separated for several), or
* ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set
  (exporter ``otlp`` implied, unless ``OTEL_TRACES_EXPORTER=none``).

``OTEL_SDK_DISABLED=true`` turns it off again. The rest is read by the SDK itself:
``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` chooses ``grpc`` (the Python default) or
``http/protobuf`` for ``otlp``; ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``
pick the sampler (TracerProvider reads them when given no sampler; default
``parentbased_always_on``); ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` win
over the service name passed in code; ``OTEL_PROPAGATORS`` (default W3C
``tracecontext,baggage``) chooses the wire format; ``OTEL_PYTHON_GRPC_EXCLUDED_SERVICES``
adds gRPC services not to trace (health checks and reflection are never traced).

What a caller and an operator get, whether or not tracing is on and whatever is sampled:

* every unary RPC answers with the trace id in trailing metadata (``x-trace-id``) and,
  on error, in a ``google.rpc.RequestInfo`` detail (``request_id``; see status.py);
* every log line written inside a request carries ``trace_id`` and ``span_id`` (logs.py);
* a call to another service carries ``traceparent``, so its answer and logs share the id.

With tracing off these ids cost one small interceptor (:class:`TraceIdOnlyServerInterceptor`):
it continues the caller's ``traceparent`` or draws a new 128-bit id, makes a non-recording span
current for the handler (no SDK, nothing recorded or exported) and returns ``x-trace-id``; the
gateway sends ``traceparent`` on its own calls (:func:`outgoing_metadata`). With tracing on, the
SDK draws ids for every request, sampled or not (an unsampled request has a non-recording
span with a valid id); only sampled requests record and export spans, and a sampled request's
trace is complete (parent-based samplers follow the caller's decision at every hop).

While tracing is on:

* work batched across requests in another thread (the reranker's cross-encoder) gets
  per-request ``batch.queue_wait`` / ``batch.inference`` spans with explicit timestamps
  (:func:`batch_member` and :func:`traced_batch`).

Usage in a service::

    tracing.setup_tracing("gateway")                       # once, at start-up
    server = grpc.aio.server(interceptors=[*tracing.server_interceptors(), ...])
    channel = grpc.aio.insecure_channel(addr, interceptors=tracing.client_interceptors())
    with tracing.span("embed.query", **{"batch.size": 1}):
        ...
    tracing.shutdown_tracing()                             # at exit: flushes queued spans

The global TracerProvider can be set once per process, so tests pass
``set_global=False`` and hand the returned provider to the interceptors.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context, trace

from services.common.interceptors import with_unary

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

#: gRPC services never traced: probes would drown the real traffic.
ALWAYS_EXCLUDED_SERVICES: tuple[str, ...] = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)

#: Trailing-metadata key that returns the request's trace id (32 hex digits) to the caller.
TRACE_ID_METADATA_KEY = "x-trace-id"

_TRACER_NAME = "search-platform"
_NOOP_SPAN = contextlib.nullcontext(trace.INVALID_SPAN)

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
#: Ids of requests traced without the SDK (the SDK's RandomIdGenerator draws them the same way).
_random = random.Random()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def exporter_names(env: Mapping[str, str] | None = None) -> list[str]:
    """The span exporters the environment asks for; [] means tracing is off."""
    env = os.environ if env is None else env
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        return []
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if "none" in names:
        return []
    if not names and (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        names = ["otlp"]
    resolved = []
    for name in names:
        if name == "otlp":
            protocol = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
            ).strip().lower()
            if protocol == "grpc":
                name = "otlp_proto_grpc"
            elif protocol in ("http/protobuf", "http"):
                name = "otlp_proto_http"
            else:
                raise ValueError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use grpc or http/protobuf"
                )
        resolved.append(name)
    return resolved


def tracing_requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment turns tracing on (see the module docstring)."""
    return bool(exporter_names(env))


def _load_exporter(name: str) -> SpanExporter:
    from importlib.metadata import entry_points

    found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
    if not found:
        raise ValueError(f"OTEL_TRACES_EXPORTER: no span exporter named {name!r} is installed")
    # Exporters read their endpoint, headers, timeout, etc. from OTEL_EXPORTER_OTLP_* themselves.
    return found[0].load()()


def setup_tracing(
    service_name: str,
    exporter: SpanExporter | None = None,
    *,
    set_global: bool = True,
) -> TracerProvider | None:
    """Create the process's TracerProvider if tracing is requested; return it, or None when off.

    ``exporter`` forces tracing on with that exporter behind a SimpleSpanProcessor (spans
    are exported as they end: tests use InMemorySpanExporter). Otherwise the exporters
    named by the environment sit behind BatchSpanProcessors. The provider becomes the
    module's current one (used by :func:`span` and the interceptors) and, with
    ``set_global``, OpenTelemetry's global provider unless that was already set.
    """
    global _provider, _tracer
    names = [] if exporter is not None else exporter_names()
    if exporter is None and not names:
        return None

    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)  # no sampler: the SDK reads OTEL_TRACES_SAMPLER(_ARG)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        for name in names:
            provider.add_span_processor(BatchSpanProcessor(_load_exporter(name)))

    if set_global:
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(provider)
        else:
            log.warning("a global TracerProvider is already set; %s uses its own", service_name)
    _provider = provider
    _tracer = provider.get_tracer(_TRACER_NAME)
    log.info(
        "tracing enabled",
        extra={"service_name": resource.attributes.get(SERVICE_NAME), "exporters": names or [type(exporter).__name__]},
    )
    return provider


def shutdown_tracing(timeout_millis: int = 5000) -> None:
    """Flush queued spans and stop the current provider; tracing is off afterwards."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.force_flush(timeout_millis)
        provider.shutdown()


def get_tracer_provider() -> TracerProvider | None:
    """The provider :func:`setup_tracing` created, or None when tracing is off."""
    return _provider


def _filter() -> Callable[[Any], bool]:
    from opentelemetry.instrumentation.grpc import filters

    extra = [s.strip() for s in os.environ.get("OTEL_PYTHON_GRPC_EXCLUDED_SERVICES", "").split(",") if s.strip()]
    excluded = [filters.service_name(name) for name in (*ALWAYS_EXCLUDED_SERVICES, *extra)]
    return filters.negate(filters.any_of(*excluded))


def server_interceptors(tracer_provider: TracerProvider | None = None) -> list[Any]:
    """grpc.aio server interceptors that continue the caller's trace; [] when tracing is off.

    OpenTelemetry's server interceptor (the server span, continuing ``traceparent``),
    then :class:`TraceIdServerInterceptor` (trace id back to the caller). Put them first
    in the server's interceptor list so the server span covers the rest.
    """
    provider = tracer_provider or _provider
    if provider is None:
        return [TraceIdOnlyServerInterceptor(_filter())]
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=provider, filter_=_filter()), TraceIdServerInterceptor(_filter())]


def client_interceptors(tracer_provider: TracerProvider | None = None) -> list[Any]:
    """grpc.aio channel interceptors that start client spans and send ``traceparent``; [] when off."""
    provider = tracer_provider or _provider
    if provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(tracer_provider=provider, filter_=_filter()))


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one (``with tracing.span("qdrant.query", **{"db.system": "qdrant"}):``).

    Exceptions are recorded on the span and set its status to error. Attributes whose
    value is None are left out. When tracing is off this returns a shared null context
    (yielding an invalid, non-recording span).
    """
    tracer = _tracer
    if tracer is None:
        return _NOOP_SPAN
    if attributes:
        attributes = {key: value for key, value in attributes.items() if value is not None}
    return tracer.start_as_current_span(name, attributes=attributes or None)


def set_attributes(**attributes: Any) -> None:
    """Set attributes on the current span (no-op when tracing is off or nothing is recording)."""
    if _tracer is None:
        return
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes({key: value for key, value in attributes.items() if value is not None})


def outgoing_metadata() -> tuple[tuple[str, str], ...] | None:
    """``traceparent`` for a downstream call when tracing is off (the SDK's client interceptors
    send it when on); None outside a request or when there is nothing to add."""
    if _provider is not None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return (("traceparent", f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"),)


def current_trace_id() -> str:
    """The current trace id as 32 hex digits, or "" outside a trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def current_span_id() -> str:
    """The current span id as 16 hex digits, or "" outside a trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.span_id, "016x") if context.is_valid else ""


# --------------------------------------------------------------------------- trace id to the caller

#: Codes that are the server's fault: they mark the server span as an error (OpenTelemetry's
#: RPC conventions; a caller's INVALID_ARGUMENT or NOT_FOUND leaves it UNSET).
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class TraceIdServerInterceptor(grpc.aio.ServerInterceptor):
    """Returns the trace id in trailing metadata and completes the server span's status.

    Runs just inside OpenTelemetry's server interceptor, so the server span is current.
    ``x-trace-id`` is set before the handler runs: an OK answer and a plain ``abort()``
    keep it. ``abort_with_status()`` replaces the trailing metadata with the status's, so
    :func:`services.common.errors.to_rpc_status` adds the trace id there itself.

    OpenTelemetry's aio servicer-context wrapper sees ``abort()`` and ``set_code()`` but
    not ``abort_with_status()`` (how status.py answers), so the final code is copied onto
    the span here: ``rpc.grpc.status_code``, and an ERROR status for server faults.
    Unary-unary methods only; excluded services (health, reflection) pass untouched.
    """

    def __init__(self, filter_: Callable[[Any], bool] | None = None) -> None:
        self._filter = filter_

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        if self._filter is not None and not self._filter(handler_call_details):
            return handler
        behavior = handler.unary_unary

        async def with_trace_id(request: Any, context: grpc.aio.ServicerContext) -> Any:
            span = trace.get_current_span()
            span_context = span.get_span_context()
            if not span_context.is_valid:
                return await behavior(request, context)
            context.set_trailing_metadata(((TRACE_ID_METADATA_KEY, format(span_context.trace_id, "032x")),))
            try:
                return await behavior(request, context)
            finally:
                if span.is_recording():
                    _record_code(span, context.code())

        return with_unary(handler, with_trace_id)


def _parse_traceparent(value: str) -> tuple[int, int] | None:
    """(trace id, flags) of a W3C ``traceparent`` (version 00 or later), or None when malformed."""
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3][:2], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return trace_id, flags


class TraceIdOnlyServerInterceptor(grpc.aio.ServerInterceptor):
    """Trace ids without tracing: what every server installs while no exporter is configured.

    For each unary call (health and reflection excepted) it continues the caller's
    ``traceparent`` (or draws a new random 128-bit trace id), makes a non-recording span with
    a fresh span id current for the handler, so log lines (logs.py), error details (status.py)
    and :func:`outgoing_metadata` see the ids, and sets ``x-trace-id`` in the trailing metadata.
    Nothing is recorded; the cost is a dict lookup, two random numbers and a context switch.
    """

    def __init__(self, filter_: Callable[[Any], bool] | None = None) -> None:
        self._filter = filter_
        self._excluded: dict[str, bool] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        excluded = self._excluded.get(method)
        if excluded is None:
            excluded = self._excluded[method] = self._filter is not None and not self._filter(handler_call_details)
        if excluded:
            return handler
        behavior = handler.unary_unary

        async def with_trace_id(request: Any, context: grpc.aio.ServicerContext) -> Any:
            parsed = None
            for key, value in context.invocation_metadata() or ():
                if key == "traceparent":
                    parsed = _parse_traceparent(value)
                    break
            trace_id, flags = parsed if parsed is not None else (_random.getrandbits(128) or 1, 0)
            span_context = trace.SpanContext(
                trace_id=trace_id, span_id=_random.getrandbits(64) or 1, is_remote=False,
                trace_flags=trace.TraceFlags(flags & 0x01),
            )
            token = otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(span_context)))
            try:
                context.set_trailing_metadata(((TRACE_ID_METADATA_KEY, f"{trace_id:032x}"),))
                return await behavior(request, context)
            finally:
                otel_context.detach(token)

        return with_unary(handler, with_trace_id)


def _record_code(span: Any, code: Any) -> None:
    if not isinstance(code, grpc.StatusCode) or code == grpc.StatusCode.OK:
        return
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_FAULTS:
        span.set_status(trace.Status(trace.StatusCode.ERROR, code.name))


# --------------------------------------------------------------------------- work batched across requests

class _Member:
    """One request's share of a batcher's work: where its spans go and when it was queued."""

    __slots__ = ("parent", "enqueued_ns", "started")

    def __init__(self, parent: Any, enqueued_ns: int) -> None:
        self.parent = parent
        self.enqueued_ns = enqueued_ns
        self.started = False


#: id(item) -> the request it belongs to, while that request waits for its batches.
_members: dict[int, _Member] = {}
_batch_ids = itertools.count(1)
#: Batches may finish on several inference threads at once: one queue-wait span per request.
_started_lock = threading.Lock()


@contextlib.contextmanager
def _registered(items: Sequence[Any], member: _Member) -> Iterator[None]:
    keys = [id(item) for item in items]
    for key in keys:
        _members[key] = member
    try:
        yield
    finally:
        for key in keys:
            _members.pop(key, None)


def batch_member(items: Sequence[Any]) -> contextlib.AbstractContextManager[Any]:
    """Mark ``items`` (the exact objects handed to a batcher) as the current request's.

    While the block runs, a function wrapped by :func:`traced_batch` that receives any of
    these objects in a batch records, as children of the current span, one
    ``batch.queue_wait`` span (from entering the block to the start of the request's
    first batch) and one ``batch.inference`` span per batch holding its items, with the
    batch's own timestamps. Nothing is registered when tracing is off or the current
    span is not recording (not sampled). Objects are matched by identity, so they must
    stay alive for the block (they do: the caller holds them while it waits).
    """
    if _tracer is None:
        return _NOOP_SPAN
    parent = trace.get_current_span()
    if not parent.is_recording():
        return _NOOP_SPAN
    return _registered(items, _Member(trace.set_span_in_context(parent), time.time_ns()))


def traced_batch(
    infer: Callable[[list[Any]], Any],
    *,
    tokens: Callable[[list[Any]], int] | None = None,
    **attributes: Any,
) -> Callable[[list[Any]], Any]:
    """Wrap a batch function (run on a worker thread) to trace it on each member request.

    ``tokens(batch)`` gives the batch's padded token count (attribute ``batch.tokens``);
    ``attributes`` are added to every ``batch.inference`` span (e.g. the provider). Each
    inference span carries ``batch.id`` (the same for every request sharing the batch),
    ``batch.size`` (items in the batch), ``batch.requests`` (requests sharing it) and
    ``batch.request_items`` (this request's items in it). Costs one dict lookup per
    batch when no traced request is waiting.
    """

    def run(batch: list[Any]) -> Any:
        tracer = _tracer
        if not _members or tracer is None:
            return infer(batch)
        start = time.time_ns()
        members = _members_of(batch)
        if members:
            _record_queue_wait(tracer, members, start)
        error: BaseException | None = None
        try:
            return infer(batch)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if members:
                _record_inference(tracer, batch, members, start, time.time_ns(), error, tokens, attributes)

    return run


def _members_of(batch: list[Any]) -> dict[int, list[Any]]:
    """id(member) -> [member, its items in ``batch``], for the traced requests in the batch."""
    found: dict[int, list[Any]] = {}
    for item in batch:
        member = _members.get(id(item))
        if member is not None:
            entry = found.setdefault(id(member), [member, 0])
            entry[1] += 1
    return found


def _record_queue_wait(tracer: trace.Tracer, members: dict[int, list[Any]], start_ns: int) -> None:
    """A request's wait ends when its first batch starts (batches may start on several threads)."""
    for member, _ in members.values():
        with _started_lock:
            first, member.started = not member.started, True
        if first:
            waited = tracer.start_span("batch.queue_wait", context=member.parent, start_time=member.enqueued_ns)
            waited.end(end_time=start_ns)


def _record_inference(tracer, batch, members, start_ns, end_ns, error, tokens, attributes) -> None:
    shared = {
        **attributes,
        "batch.id": next(_batch_ids),
        "batch.size": len(batch),
        "batch.requests": len(members),
    }
    if tokens is not None:
        shared["batch.tokens"] = int(tokens(batch))
    for member, own in members.values():
        inference = tracer.start_span(
            "batch.inference", context=member.parent, start_time=start_ns,
            attributes={**shared, "batch.request_items": own},
        )
        if error is not None:
            inference.record_exception(error)
            inference.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
        inference.end(end_time=end_ns)
