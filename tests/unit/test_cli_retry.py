"""searchctl's one retry policy (services/cli/client.py retry_policy, tenacity): transient
failures are retried with backoff, others are raised at once."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from search.v1 import common_pb2
from services.cli import client
from services.cli.evaluate import _call


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)


class FlakyUpsert:
    def __init__(self, failures: list[grpc.StatusCode]) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def Upsert(self, request, timeout):  # noqa: N802 - the stub's name
        self.calls += 1
        if self.failures:
            raise rpc_error(self.failures.pop(0))
        return type("Reply", (), {"upserted": len(request.documents)})()


def test_transient_failures_are_retried_until_success():
    stub = FlakyUpsert([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
    assert asyncio.run(client.upsert_with_retry(stub, "c", [common_pb2.Document(id="a", text="x")])) == 1
    assert stub.calls == 3


def test_other_failures_and_the_last_attempt_are_raised():
    stub = FlakyUpsert([grpc.StatusCode.INVALID_ARGUMENT])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        asyncio.run(client.upsert_with_retry(stub, "c", [common_pb2.Document(id="a", text="x")]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and stub.calls == 1

    calls = []

    def always_unavailable(request, timeout):
        calls.append(request)
        raise rpc_error(grpc.StatusCode.UNAVAILABLE)

    with pytest.raises(grpc.RpcError):
        _call(always_unavailable, "req", timeout=1, attempts=2)
    assert len(calls) == 2
