"""Server reflection (services/common/reflection.py) on a real server run by
services.common.server.run: both names answer (v1, which current clients ask first, and
v1alpha), the platform's files come with their comments, imports are served with them, and an
unknown symbol is NOT_FOUND."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from search.v1 import rerank_service_pb2 as pb, rerank_service_pb2_grpc as pb_grpc
from search.v1 import search_service_pb2  # noqa: F401 - its file (and common.proto) in this process's pool
from services.cli.procs import free_port
from services.common.reflection import V1, V1ALPHA, Reflection, documented_files
from services.common.security import SecurityConfig
from services.common.server import Endpoint, run


class Reranker(pb_grpc.RerankServiceServicer):
    async def Rerank(self, request, context):
        return pb.RerankResponse(model="fake")


class Service:
    name = "reflection-test"
    grpc_service_names = (pb.DESCRIPTOR.services_by_name["RerankService"].full_name,)

    def register(self, server) -> None:
        pb_grpc.add_RerankServiceServicer_to_server(Reranker(), server)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


@pytest.fixture
async def address():
    stop = asyncio.Event()
    port = free_port()
    task = asyncio.ensure_future(run(Service(), Endpoint("127.0.0.1", port, 0, 0.5), stop_event=stop,
                                     security=SecurityConfig()))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
    yield f"127.0.0.1:{port}"
    stop.set()
    await task


async def ask(address: str, service: str, *requests: rpb.ServerReflectionRequest) -> list[rpb.ServerReflectionResponse]:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(f"/{service}/ServerReflectionInfo",
                                     request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=rpb.ServerReflectionResponse.FromString)(timeout=10)
        for request in requests:
            await call.write(request)
        await call.done_writing()
        return [reply async for reply in call]


def files(reply: rpb.ServerReflectionResponse) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    parsed = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in reply.file_descriptor_response.file_descriptor_proto]
    return {f.name: f for f in parsed}


def comments(file: descriptor_pb2.FileDescriptorProto) -> str:
    return " ".join(loc.leading_comments for loc in file.source_code_info.location)


@pytest.mark.parametrize("service", [V1, V1ALPHA])
async def test_both_names_list_the_services_and_serve_documented_contracts(address, service):
    listed, found = await ask(address, service, rpb.ServerReflectionRequest(list_services=""),
                              rpb.ServerReflectionRequest(file_containing_symbol="search.v1.SearchRequest"))
    names = {s.name for s in listed.list_services_response.service}
    assert {"search.v1.RerankService", "grpc.health.v1.Health", V1, V1ALPHA} <= names
    served = files(found)
    assert "search/v1/search_service.proto" in served and "search/v1/common.proto" in served  # with its imports
    assert "google/protobuf/struct.proto" in served  # common.proto's import, from the runtime pool
    # The comments of the .proto files reach the client (grpcurl describe prints them).
    assert "A numeric range; unset bounds are open." in comments(served["search/v1/common.proto"])
    assert "Whether to store sparse (lexical) vectors next to dense ones." in comments(served["search/v1/search_service.proto"])


async def test_the_reflection_services_describe_themselves_and_unknown_symbols_are_not_found(address):
    v1, v1alpha, missing, nothing = await ask(
        address, V1, rpb.ServerReflectionRequest(file_containing_symbol=V1),
        rpb.ServerReflectionRequest(file_containing_symbol=V1ALPHA),
        rpb.ServerReflectionRequest(file_containing_symbol="search.v1.NoSuchMessage"),
        rpb.ServerReflectionRequest())
    (file,) = files(v1).values()
    assert file.package == "grpc.reflection.v1" and file.service[0].method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert rpb.DESCRIPTOR.name in files(v1alpha)
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert nothing.error_response.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_the_documented_files_are_the_imported_contracts():
    """The descriptor set beside the stubs describes the very files the process imported (the
    comments aside; no json_name either, which would change how grpcurl names JSON fields):
    what reflection serves for a file is what a client compiled against."""
    from search.v1 import common_pb2, rerank_service_pb2, retrieval_service_pb2, search_service_pb2

    documented = documented_files()
    for module in (common_pb2, rerank_service_pb2, retrieval_service_pb2, search_service_pb2):
        imported = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        served = descriptor_pb2.FileDescriptorProto.FromString(documented[module.DESCRIPTOR.name])
        assert served.HasField("source_code_info")
        served.ClearField("source_code_info")
        assert served == imported, module.DESCRIPTOR.name


def test_without_the_descriptor_set_the_pool_copies_are_served():
    reflection = Reflection(["search.v1.RerankService"], documented={})
    reply = reflection.answer(rpb.ServerReflectionRequest(file_by_filename="search/v1/common.proto"))
    served = files(reply)["search/v1/common.proto"]
    assert served.message_type and not served.HasField("source_code_info")
