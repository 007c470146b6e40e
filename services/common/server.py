"""The one way every service runs: grpc.aio server, health, reflection, metrics, shutdown.

Start-up order matters to operators: the port is bound and the health service answers
NOT_SERVING first, then the service loads its model or store (:meth:`Service.start`),
and only then does health report SERVING. On SIGTERM or SIGINT health flips to
NOT_SERVING (load balancers stop routing), the server stops accepting new calls,
in-flight calls get ``grace_seconds`` to finish, and the service releases its resources.
The handlers for both signals are installed first thing, whatever the process inherited (a
process started in the background by a non-interactive shell inherits SIGINT ignored, and
Python keeps that): SIGINT stops a server however it was launched.

Transport security comes from the environment for every service alike
(:mod:`services.common.security`: ``TLS_CERT_FILE``/``TLS_KEY_FILE`` for TLS,
``TLS_CLIENT_CA_FILE`` for mTLS). With ``INTERNAL_TOKEN`` set, every service that is not the
platform's edge (``edge = True``: the gateway, which checks API keys instead and sends the
token downstream) refuses calls without it. A service may add its own interceptors (the
gateway's caller check: keys, scopes, quotas, the fairly shared in-flight cap) by defining
``interceptors()``; they run after tracing and metrics (so rejections are counted) and before
error mapping. A service that defines ``reload()`` has it called on SIGHUP (the gateway
reloads its callers file); without one, SIGHUP is left as it was.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import metrics, reflection, tracing
from services.common.config import ConfigError
from services.common.errors import ServiceError
from services.common.interceptors import with_unary
from services.common.status import ErrorMappingInterceptor, status_code, status_message
from services.common.security import (
    InternalTokenInterceptor,
    SecurityConfig,
    load_security,
    resolve_internal_token,
    server_credentials,
)

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024

SERVER_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
)


class Service(Protocol):
    """What a service plugs into :func:`run`."""

    #: Short name (gateway, retrieval, reranker) used in logs and metrics.
    name: str
    #: Fully qualified gRPC service names it serves, e.g. ``search.v1.SearchService``.
    grpc_service_names: Sequence[str]
    # Optional ``edge: bool``: True for the service outside callers reach (the gateway). Any
    # other service is internal: with INTERNAL_TOKEN set, every caller must present it.

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicers to ``server``."""

    async def start(self) -> None:
        """Load models, open stores, connect channels. Health stays NOT_SERVING until it returns."""

    async def stop(self) -> None:
        """Release resources after the server has stopped."""


class UnaryCallTracker(grpc.aio.ServerInterceptor):
    """Counts unary calls in progress, so shutdown knows when the accepted work is done."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.started = 0
        self.cancelled = 0  # handlers cancelled (by the client, or when the grace period runs out)
        self._idle = asyncio.Event()
        self._idle.set()

    async def idle(self, settle_s: float = 0.25) -> None:
        """Until no unary call has run for ``settle_s`` (a call the transport accepted just
        before the listener closed needs a moment to reach its handler)."""
        while True:
            await self._idle.wait()
            await asyncio.sleep(settle_s)
            if self.in_flight == 0:
                return

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary

        async def tracked(request, context):
            self.started += 1
            self.in_flight += 1
            self._idle.clear()
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            finally:
                self.in_flight -= 1
                if self.in_flight == 0:
                    self._idle.set()

        return with_unary(handler, tracked)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    metrics_port: int
    grace_seconds: float


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def run(
    service: Service,
    endpoint: Endpoint,
    *,
    stop_event: asyncio.Event | None = None,
    security: SecurityConfig | None = None,
) -> None:
    """Serve ``service`` until SIGTERM/SIGINT (or ``stop_event``), then shut down gracefully.

    ``security`` defaults to :func:`~services.common.security.load_security` (the environment).
    """
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    handlers = {signal.SIGTERM: stop.set, signal.SIGINT: stop.set}
    if getattr(service, "reload", None) is not None:
        handlers[signal.SIGHUP] = service.reload
    for sig, handler in handlers.items():  # first, replacing inherited dispositions (SIG_IGN too)
        try:
            loop.add_signal_handler(sig, handler)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests) or not POSIX
            pass

    security = security if security is not None else load_security()
    credentials = server_credentials(security)  # reads the files: a bad path fails here, before binding
    edge = bool(getattr(service, "edge", False))
    token = None if edge else resolve_internal_token(security)
    tracing.setup_tracing(service.name)
    # /metrics listens where the service does: a service kept on loopback keeps its metrics there too.
    metrics.start_metrics_server(endpoint.metrics_port, endpoint.host.strip("[]"))
    own_interceptors = getattr(service, "interceptors", None)
    calls = UnaryCallTracker()
    server = grpc.aio.server(
        interceptors=[
            calls,
            *tracing.server_interceptors(),
            metrics.MetricsServerInterceptor(service.name),
            *([InternalTokenInterceptor(token)] if token else ()),
            *(own_interceptors() if own_interceptors else ()),
            ErrorMappingInterceptor(),
        ],
        options=list(SERVER_OPTIONS),
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        service.register(server)
    except ValueError as exc:  # a setting the service's own checks refuse (the flag parser took its type)
        await server.stop(None)
        raise ConfigError(f"{service.name}: {exc}") from exc
    reflection.enable(server, (*service.grpc_service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
    health_names = ("", *service.grpc_service_names)
    for name in health_names:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    address = _address(endpoint.host, endpoint.port)
    try:
        if credentials is None:
            server.add_insecure_port(address)
        else:
            server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise SystemExit(f"{service.name}: cannot listen on {address}: {exc} (is the port already in use?)") from exc
    await server.start()
    log.info(
        "listening",
        extra={"address": address, "metrics_port": endpoint.metrics_port, **security.describe(),
               "internal_token": "sent" if edge and resolve_internal_token(security) else "required" if token else "off"},
    )

    starting = asyncio.ensure_future(service.start())
    stopping = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting in done:
        if starting.exception() is not None:
            exc = starting.exception()
            # A setting the service refuses is the operator's to fix: its message, no traceback.
            log.error("start-up failed: %s", exc, exc_info=None if isinstance(exc, ConfigError) else exc)
            await server.stop(0)
            await service.stop()
            if isinstance(exc, ConfigError):  # searchctl prints it as it does a setting it cannot parse (exit 2)
                raise ConfigError(f"{service.name}: {exc}") from exc
            if isinstance(exc, ServiceError):  # e.g. a locked or damaged shard: say what to do
                raise SystemExit(f"{service.name}: start-up failed: {status_code(exc).name}: {status_message(exc)}")
            raise SystemExit(f"{service.name}: start-up failed: {exc}")
        for name in health_names:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"services": list(service.grpc_service_names)})
        await stopping
    else:
        starting.cancel()

    log.info("shutting down", extra={"grace_seconds": endpoint.grace_seconds, "in_flight": calls.in_flight})
    await health_servicer.enter_graceful_shutdown()  # Check answers and Watch streams get NOT_SERVING
    started, started_calls, cancelled_before = loop.time(), calls.started, calls.cancelled
    stopping = asyncio.ensure_future(server.stop(endpoint.grace_seconds))  # refuses new calls from here on
    # Streams (Health.Watch, reflection) never end by themselves and would hold the process for
    # the whole grace period: once every unary call has finished, end them and exit.
    drained = asyncio.ensure_future(calls.idle())
    await asyncio.wait({stopping, drained}, return_when=asyncio.FIRST_COMPLETED)
    if not stopping.done():
        await server.stop(0)
    await stopping
    drained.cancel()
    # Handlers cancelled since SIGTERM: > 0 when the grace period ran out (or a client gave up).
    cancelled = calls.cancelled - cancelled_before
    log.info(
        "calls drained" if cancelled == 0 else "grace period over; calls cancelled",
        extra={"seconds": round(loop.time() - started, 3), "cancelled": cancelled,
               "started_during_shutdown": calls.started - started_calls},
    )
    await service.stop()
    tracing.shutdown_tracing()  # flush queued spans before the process exits
    log.info("stopped")
