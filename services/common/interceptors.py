"""The one scaffold every server interceptor of the platform shares.

A grpc.aio server interceptor that wraps a method replaces its handler by one with the same
(de)serializers and a new behaviour. :func:`with_unary` is that step, written once; each
interceptor keeps only what it does around the call (services/common/status.py,
metrics.py, tracing.py, server.py, security.py, services/gateway/resilience.py,
services/retrieval/conditional_retrieve.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def with_unary(handler: grpc.RpcMethodHandler, behavior: Behavior,
               request_deserializer: Callable[[bytes], Any] | None = None) -> grpc.RpcMethodHandler:
    """``handler`` answering with ``behavior`` instead of its own unary-unary behaviour; its
    response serializer kept, its request deserializer unless another is given."""
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
