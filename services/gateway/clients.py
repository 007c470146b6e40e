"""Typed clients for the gateway's downstream services: deadlines, retries, status mapping.

Every call carries an explicit timeout taken from the request's :class:`Budget` (grpc.aio
does not propagate deadlines by itself), capped per hop. Idempotent calls (reads, rerank,
upserts and deletes by id) are retried on UNAVAILABLE / RESOURCE_EXHAUSTED within the
deadline and the downstream's retry budget (:mod:`services.gateway.resilience`).

Errors come back as domain errors carrying the downstream's status in ``downstream_code``:
the caller's mistakes (INVALID_ARGUMENT with its field, NOT_FOUND, ALREADY_EXISTS) keep
their code and message; an outage or a hop timeout becomes UNAVAILABLE naming the
service; running out of the caller's own deadline is DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from search.v1 import rerank_service_pb2_grpc, retrieval_service_pb2_grpc
from services.common import metrics, tracing
from services.common.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from services.common.security import SecurityConfig, bearer_interceptors, channel_credentials, resolve_internal_token
from services.common.server import MAX_MESSAGE_BYTES
from services.gateway.resilience import RetryBudget, RetryPolicy, call_with_retries

ANSWER_RESERVE_S = 0.05

PASSTHROUGH = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


class Budget:
    """What is left of a request's deadline, minus a reserve to build and send the answer."""

    def __init__(self, seconds: float, reserve_s: float = ANSWER_RESERVE_S, clock=time.monotonic) -> None:
        self._clock = clock
        self.deadline = clock() + seconds
        self.reserve_s = reserve_s

    def remaining(self) -> float:
        return self.deadline - self._clock()

    def usable(self) -> float:
        """Time hops may use: what remains minus the answer reserve."""
        return self.remaining() - self.reserve_s

    def for_hop(self, cap: float) -> float:
        """The timeout of one downstream attempt: at most ``cap``, never past :meth:`usable`."""
        return min(cap, self.usable())


def channel_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        # Reconnect quickly after a downstream restart (defaults back off up to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        # With a dns:/// target over a headless Service this balances per request.
        ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    ]


def open_channel(address: str, security: SecurityConfig | None = None) -> grpc.aio.Channel:
    """A channel to ``address``: TLS (or mTLS) when ``security`` configures it, else plaintext;
    every call carries the internal token when ``security`` has one (INTERNAL_TOKEN)."""
    credentials = channel_credentials(security) if security is not None else None
    token = resolve_internal_token(security) if security is not None else None
    interceptors = [*tracing.client_interceptors(), *(bearer_interceptors(token) if token else ())]
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=channel_options(), interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=channel_options(), interceptors=interceptors)


def _invalid_argument(exc: grpc.aio.AioRpcError) -> InvalidArgument:
    """Keep the downstream's BadRequest field, so the caller learns which field was wrong."""
    try:
        status = rpc_status.from_call(exc)
    except Exception:  # noqa: BLE001 - a malformed status detail must not hide the error
        status = None
    for detail in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad) and bad.field_violations:
            violation = bad.field_violations[0]
            return InvalidArgument(violation.field, violation.description)
    return InvalidArgument("", exc.details() or "invalid argument")


def downstream_error(target: str, method: str, exc: grpc.aio.AioRpcError, timeout: float, deadline_bound: bool) -> ServiceError:
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        error: ServiceError = _invalid_argument(exc)
    elif code in PASSTHROUGH:
        error = PASSTHROUGH[code](details)
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED and deadline_bound:
        error = DeadlineExceeded(f"{target} did not answer {method} within the request's deadline ({timeout:.2f} s were left)")
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        error = Unavailable(f"{target} service did not answer {method} within its {timeout:.2f} s timeout")
    elif code == grpc.StatusCode.UNAVAILABLE:
        error = Unavailable(f"{target} service unavailable during {method}: {details}")
    else:
        error = Unavailable(f"{target} service failed {method}: {code.name}: {details}")
    error.downstream_code = code
    return error


class Downstream:
    """A stub with per-attempt timeouts from the request budget, retries, metrics and error mapping."""

    def __init__(
        self,
        target: str,
        channel: grpc.aio.Channel,
        stub: Any,
        *,
        retry_policy: RetryPolicy | None = None,
        retry_budget: RetryBudget | None = None,
    ) -> None:
        self.target = target
        self.channel = channel
        self.stub = stub
        self.retry_policy = retry_policy or RetryPolicy()
        self.retry_budget = retry_budget or RetryBudget(target=target)

    async def call_once(
        self, method: str, request: Any, timeout: float, deadline_bound: bool = True,
        metadata: tuple[tuple[str, str], ...] = (), trailers: dict[str, str] | None = None,
    ) -> Any:
        """One attempt; ``metadata`` is sent with the call and, given a dict, ``trailers`` gets
        the answer's trailing metadata."""
        if timeout <= 0:
            raise DeadlineExceeded(f"no time left in the request's deadline to call {self.target} {method}")
        outgoing = tracing.outgoing_metadata()
        if metadata:
            outgoing = (*(outgoing or ()), *metadata)
        try:
            async with metrics.observe_downstream(self.target, method):
                call = getattr(self.stub, method)(request, timeout=timeout, wait_for_ready=False, metadata=outgoing)
                response = await call
                if trailers is not None:
                    trailers.update(await call.trailing_metadata() or ())
                return response
        except grpc.aio.AioRpcError as exc:
            raise downstream_error(self.target, method, exc, timeout, deadline_bound) from exc

    async def call(
        self, method: str, request: Any, budget: Budget, cap: float, *, idempotent: bool = False,
        metadata: tuple[tuple[str, str], ...] = (), trailers: dict[str, str] | None = None,
    ) -> Any:
        """Call ``method`` with a timeout of at most ``cap`` per attempt, within ``budget``.

        Only ``idempotent`` calls are retried (a non-idempotent write that timed out may
        have happened; repeating it is the caller's decision).
        """

        async def attempt() -> Any:
            timeout = budget.for_hop(cap)
            return await self.call_once(method, request, timeout, deadline_bound=timeout < cap,
                                        metadata=metadata, trailers=trailers)

        if not idempotent:
            return await attempt()
        return await call_with_retries(
            attempt,
            policy=self.retry_policy,
            budget=self.retry_budget,
            time_left=budget.usable,
            describe=f"{self.target}.{method}",
        )

    async def close(self) -> None:
        await self.channel.close()


def retrieval(address: str, security: SecurityConfig | None = None, **kwargs: Any) -> Downstream:
    channel = open_channel(address, security)
    return Downstream("retrieval", channel, retrieval_service_pb2_grpc.RetrievalServiceStub(channel), **kwargs)


def reranker(address: str, security: SecurityConfig | None = None, **kwargs: Any) -> Downstream:
    channel = open_channel(address, security)
    return Downstream("reranker", channel, rerank_service_pb2_grpc.RerankServiceStub(channel), **kwargs)
