"""Typed clients for the gateway's downstream services, with deadlines and status mapping.

Every call carries an explicit timeout (grpc.aio does not propagate deadlines by
itself). Errors come back as domain errors: the caller's mistakes (INVALID_ARGUMENT,
NOT_FOUND, ALREADY_EXISTS) keep their code and message; a downstream outage becomes
UNAVAILABLE naming the service, so a caller knows what failed.
"""

from __future__ import annotations

import json
from typing import Any

import grpc

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
from services.common.server import MAX_MESSAGE_BYTES

PASSTHROUGH = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def channel_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        # Reconnect quickly after a downstream restart (defaults back off up to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 5_000),
        # With a dns:/// target over a headless Service this balances per request.
        ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    ]


def open_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=channel_options(), interceptors=tracing.client_interceptors())


def downstream_error(target: str, method: str, exc: grpc.aio.AioRpcError) -> ServiceError:
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument("", details)
    if code in PASSTHROUGH:
        return PASSTHROUGH[code](details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{target} did not answer {method} within the request's deadline")
    return Unavailable(f"{target} service unavailable during {method}: {code.name}: {details}")


class Downstream:
    """A stub with per-call timeouts, metrics and error mapping."""

    def __init__(self, target: str, channel: grpc.aio.Channel, stub: Any) -> None:
        self.target = target
        self.channel = channel
        self.stub = stub

    async def call(self, method: str, request: Any, timeout: float) -> Any:
        if timeout <= 0:
            raise DeadlineExceeded(f"no time left in the request's deadline to call {self.target}")
        try:
            async with metrics.observe_downstream(self.target, method):
                return await getattr(self.stub, method)(request, timeout=timeout, wait_for_ready=False)
        except grpc.aio.AioRpcError as exc:
            raise downstream_error(self.target, method, exc) from exc

    async def close(self) -> None:
        await self.channel.close()


def retrieval(address: str) -> Downstream:
    channel = open_channel(address)
    return Downstream("retrieval", channel, retrieval_service_pb2_grpc.RetrievalServiceStub(channel))


def reranker(address: str) -> Downstream:
    channel = open_channel(address)
    return Downstream("reranker", channel, rerank_service_pb2_grpc.RerankServiceStub(channel))
