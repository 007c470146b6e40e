"""The internal token on a real grpc.aio server run by services.common.server.run (a fake
reranker, no model): internal services refuse callers without it, the gateway's channels send it,
the edge service does not require it; health and reflection stay open."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from search.v1 import rerank_service_pb2 as pb, rerank_service_pb2_grpc as pb_grpc
from services.cli.procs import free_port
from services.common.security import SecurityConfig
from services.common.server import Endpoint, run
from services.gateway import clients

TOKEN = "internal-3b8e61c0d2f4a975"


class FakeReranker(pb_grpc.RerankServiceServicer):
    def __init__(self) -> None:
        self.calls = 0

    async def Rerank(self, request, context):
        self.calls += 1
        return pb.RerankResponse(results=[pb.RerankResult(index=0, score=1.0)], model="fake")


class FakeService:
    name = "fake-reranker"
    grpc_service_names = (pb.DESCRIPTOR.services_by_name["RerankService"].full_name,)

    def __init__(self, edge: bool = False) -> None:
        self.servicer = FakeReranker()
        if edge:
            self.edge = True

    def register(self, server) -> None:
        pb_grpc.add_RerankServiceServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


@pytest.fixture
async def serve():
    started = []

    async def start(service: FakeService, security: SecurityConfig) -> str:
        stop = asyncio.Event()
        port = free_port()
        task = asyncio.ensure_future(run(service, Endpoint("127.0.0.1", port, 0, 0.5), stop_event=stop, security=security))
        started.append((stop, task))
        address = f"127.0.0.1:{port}"
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(100):
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return address
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(address)

    yield start
    for stop, task in started:
        stop.set()
        await asyncio.wait_for(task, 10)


async def rerank(address: str, metadata=None, security: SecurityConfig | None = None) -> pb.RerankResponse:
    channel = clients.open_channel(address, security) if security is not None else grpc.aio.insecure_channel(address)
    async with channel:
        return await pb_grpc.RerankServiceStub(channel).Rerank(pb.RerankRequest(query="q", passages=["p"]), timeout=5,
                                                               metadata=metadata)


@pytest.mark.parametrize(
    "metadata, reason",
    [
        (None, "missing internal token"),
        ((("authorization", f"Bearer {TOKEN}x"),), "invalid internal token"),
        ((("authorization", TOKEN),), "malformed authorization"),
        ((("x-internal-token", TOKEN),), "missing internal token"),
    ],
)
async def test_an_internal_service_refuses_calls_without_the_token(serve, metadata, reason):
    service = FakeService()
    address = await serve(service, SecurityConfig(internal_token=TOKEN))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rerank(address, metadata)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason in info.value.details()
    assert service.servicer.calls == 0  # refused before the handler: nothing was done


async def test_the_gateways_channel_sends_the_token(serve):
    service = FakeService()
    address = await serve(service, SecurityConfig(internal_token=TOKEN))
    assert (await rerank(address, security=SecurityConfig(internal_token=TOKEN))).model == "fake"
    assert (await rerank(address, (("authorization", f"Bearer {TOKEN}"),))).model == "fake"
    with pytest.raises(grpc.aio.AioRpcError):  # a gateway with no token configured is refused too
        await rerank(address, security=SecurityConfig())
    assert service.servicer.calls == 2


async def test_health_and_reflection_need_no_token(serve):
    address = await serve(FakeService(), SecurityConfig(internal_token=TOKEN))
    async with grpc.aio.insecure_channel(address) as channel:
        status = (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=5)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        await call.done_writing()
        names = {s.name async for r in call for s in r.list_services_response.service}
    assert "search.v1.RerankService" in names


async def test_without_a_token_configured_nothing_is_required(serve):
    address = await serve(FakeService(), SecurityConfig())
    assert (await rerank(address)).model == "fake"


async def test_the_edge_service_does_not_require_the_token(serve):
    address = await serve(FakeService(edge=True), SecurityConfig(internal_token=TOKEN))
    assert (await rerank(address)).model == "fake"
