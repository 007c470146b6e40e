"""OpenTelemetry tracing: the only module in the platform that knows OpenTelemetry.

Tracing is off by default and then costs (almost) nothing: no SDK is loaded, no
interceptors are installed, :func:`span` returns a shared null context. It turns on
when the standard environment asks for it:

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
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

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

_TRACER_NAME = "search-platform"
_NOOP_SPAN = contextlib.nullcontext(trace.INVALID_SPAN)

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None


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

    Put them first in the server's interceptor list so the server span covers the rest.
    """
    provider = tracer_provider or _provider
    if provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=provider, filter_=_filter())]


def client_interceptors(tracer_provider: TracerProvider | None = None) -> list[Any]:
    """grpc.aio channel interceptors that start client spans and send ``traceparent``; [] when off."""
    provider = tracer_provider or _provider
    if provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(tracer_provider=provider, filter_=_filter()))


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one (``with tracing.span("qdrant.query", **{"db.system": "qdrant"}):``).

    Exceptions are recorded on the span and set its status to error. When tracing is
    off this returns a shared null context (yielding an invalid, non-recording span).
    """
    tracer = _tracer
    if tracer is None:
        return _NOOP_SPAN
    return tracer.start_as_current_span(name, attributes=attributes or None)


def set_attributes(**attributes: Any) -> None:
    """Set attributes on the current span (no-op when tracing is off or nothing is recording)."""
    if _tracer is None:
        return
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes(attributes)


def current_trace_id() -> str:
    """The current trace id as 32 hex digits, or "" outside a trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
