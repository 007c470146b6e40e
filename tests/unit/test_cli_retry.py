"""searchctl's one retry policy (services/cli/client.py retry_policy, tenacity): transient
failures are retried with backoff, others are raised at once."""

from __future__ import annotations

import grpc
import pytest
from tenacity import Retrying

from services.cli.client import retry_policy, transient
from services.cli.evaluate import _call


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)


def failing(codes: list[grpc.StatusCode]):
    """A call that fails with ``codes`` in turn, then answers how often it was called."""
    calls = []

    def call() -> int:
        calls.append(1)
        if len(calls) <= len(codes):
            raise rpc_error(codes[len(calls) - 1])
        return len(calls)

    return call


def test_transient_failures_are_retried_until_success():
    policy = {**retry_policy(5), "sleep": lambda s: None}
    call = failing([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED])
    assert Retrying(**policy)(call) == 4


def test_other_failures_and_the_last_attempt_are_raised():
    assert not transient(rpc_error(grpc.StatusCode.INVALID_ARGUMENT)) and not transient(ValueError("x"))
    call = failing([grpc.StatusCode.INVALID_ARGUMENT])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        Retrying(**{**retry_policy(5), "sleep": lambda s: None})(call)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    calls = []

    def always_unavailable(request, timeout):
        calls.append(request)
        raise rpc_error(grpc.StatusCode.UNAVAILABLE)

    with pytest.raises(grpc.RpcError):
        _call(always_unavailable, "req", timeout=1, attempts=2)
    assert len(calls) == 2
