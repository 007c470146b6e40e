"""Server reflection with the contracts' comments, under both of its names.

grpcio-reflection serves ``grpc.reflection.v1alpha`` only, and answers with descriptors
copied out of the runtime pool, which hold no comments: ``grpcurl describe`` showed the
fields of a message but not what they mean. This servicer answers

* under ``grpc.reflection.v1.ServerReflection`` and ``grpc.reflection.v1alpha.ServerReflection``
  (the same messages in two packages: current clients ask v1 first, older ones v1alpha only);
* with the platform's own files as ``make proto`` compiled them with their comments
  (``gen/search/v1/contracts.binpb``, checked fresh by tests/unit/test_contracts.py), and every
  other file (``google/protobuf/*``, health, reflection itself) from the runtime pool as before.

Reflection stays outside the platform's interceptors' work: no key or token needed
(services/common/security.py), not traced, not counted.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from importlib import resources

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection_pb2 as rpb

log = logging.getLogger(__name__)

V1ALPHA = rpb.DESCRIPTOR.services_by_name["ServerReflection"].full_name
V1 = "grpc.reflection.v1.ServerReflection"
SERVICE_NAMES = (V1, V1ALPHA)
#: The compiled contracts with source info, beside the generated stubs.
CONTRACTS_FILE = "contracts.binpb"

__all__ = ["SERVICE_NAMES", "Reflection", "documented_files", "enable"]


def documented_files() -> dict[str, bytes]:
    """The platform's own .proto files with their comments, serialized, by file name; empty
    (comments left out, reflection otherwise whole) when the descriptor set is missing.

    Each is the imported file plus its comments: the ``json_name`` protoc writes into a
    descriptor set (and never into the stubs) is left out, so clients format JSON exactly as
    they did from the stubs' descriptors (grpcurl: the fields' own names, ``rerank_decision``)."""
    try:
        data = resources.files("search.v1").joinpath(CONTRACTS_FILE).read_bytes()
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        log.warning("reflection serves the contracts without comments: %s (run `make proto`)", exc)
        return {}
    # The set also holds its imports (google/protobuf/struct.proto, for `grpcurl -protoset`): those
    # are served from the runtime pool, as every file not the platform's own.
    files = [f for f in descriptor_pb2.FileDescriptorSet.FromString(data).file if f.name.startswith("search/")]
    for file in files:
        _clear_json_names(file.message_type)
    return {f.name: f.SerializeToString() for f in files}


def _clear_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _clear_json_names(message.nested_type)


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto: v1alpha's file with the package renamed (the two
    versions define the same messages, field for field)."""
    old, new = f".{rpb.DESCRIPTOR.package}.", ".grpc.reflection.v1."
    proto = descriptor_pb2.FileDescriptorProto.FromString(rpb.DESCRIPTOR.serialized_pb)
    proto.name, proto.package = "grpc/reflection/v1/reflection.proto", "grpc.reflection.v1"
    proto.ClearField("options")
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old):]
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old):]
            method.output_type = new + method.output_type[len(old):]
    return proto


class Reflection:
    """Answers ``ServerReflectionInfo`` streams from the default descriptor pool (what the
    process imported) plus the v1 reflection file, serving documented copies where it has them."""

    def __init__(self, service_names: Iterable[str], documented: dict[str, bytes] | None = None) -> None:
        self.service_names = tuple(sorted({*service_names, *SERVICE_NAMES}))
        self.documented = documented_files() if documented is None else documented
        self.pools = [descriptor_pool.Default(), descriptor_pool.DescriptorPool()]
        self.pools[1].Add(_v1_file())

    def _find(self, lookup: str, name: str) -> FileDescriptor | None:
        for pool in self.pools:
            try:
                return getattr(pool, lookup)(name)
            except KeyError:
                continue
        return None

    def _files(self, request: rpb.ServerReflectionRequest, file: FileDescriptor | None) -> rpb.ServerReflectionResponse:
        if file is None:
            return _error(request, grpc.StatusCode.NOT_FOUND, "no such file or symbol here")
        seen: dict[str, FileDescriptor] = {}
        pending = [file]
        while pending:  # the file and everything it imports, each once (imports have no cycles)
            f = pending.pop()
            if f.name not in seen:
                seen[f.name] = f
                pending.extend(f.dependencies)
        return rpb.ServerReflectionResponse(
            original_request=request,
            file_descriptor_response=rpb.FileDescriptorResponse(
                file_descriptor_proto=[self._serialized(f) for f in seen.values()]),
        )

    def _serialized(self, file: FileDescriptor) -> bytes:
        documented = self.documented.get(file.name)
        if documented is not None:
            return documented
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        return proto.SerializeToString()

    def answer(self, request: rpb.ServerReflectionRequest) -> rpb.ServerReflectionResponse:
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            return rpb.ServerReflectionResponse(
                original_request=request,
                list_services_response=rpb.ListServiceResponse(
                    service=[rpb.ServiceResponse(name=name) for name in self.service_names]),
            )
        if kind == "file_by_filename":
            return self._files(request, self._find("FindFileByName", request.file_by_filename))
        if kind == "file_containing_symbol":
            return self._files(request, self._find("FindFileContainingSymbol", request.file_containing_symbol))
        if kind == "file_containing_extension":
            wanted = request.file_containing_extension
            try:
                message = descriptor_pool.Default().FindMessageTypeByName(wanted.containing_type)
                extension = descriptor_pool.Default().FindExtensionByNumber(message, wanted.extension_number)
            except KeyError:
                return _error(request, grpc.StatusCode.NOT_FOUND, "no such extension here")
            return self._files(request, extension.file)
        if kind == "all_extension_numbers_of_type":
            try:
                message = descriptor_pool.Default().FindMessageTypeByName(request.all_extension_numbers_of_type)
            except KeyError:
                return _error(request, grpc.StatusCode.NOT_FOUND, "no such message type here")
            numbers = sorted(e.number for e in descriptor_pool.Default().FindAllExtensions(message))
            return rpb.ServerReflectionResponse(
                original_request=request,
                all_extension_numbers_response=rpb.ExtensionNumberResponse(
                    base_type_name=message.full_name, extension_number=numbers),
            )
        return _error(request, grpc.StatusCode.INVALID_ARGUMENT, "the request names no question")

    async def ServerReflectionInfo(self, requests: AsyncIterator[rpb.ServerReflectionRequest],
                                   context: grpc.aio.ServicerContext) -> AsyncIterator[rpb.ServerReflectionResponse]:
        async for request in requests:
            yield self.answer(request)


def _error(request: rpb.ServerReflectionRequest, code: grpc.StatusCode, message: str) -> rpb.ServerReflectionResponse:
    return rpb.ServerReflectionResponse(
        original_request=request,
        error_response=rpb.ErrorResponse(error_code=code.value[0], error_message=message),
    )


def enable(server: grpc.aio.Server, service_names: Iterable[str]) -> Reflection:
    """Serve reflection on ``server`` under both names, listing ``service_names`` and itself."""
    reflection = Reflection(service_names)
    handler = grpc.stream_stream_rpc_method_handler(
        reflection.ServerReflectionInfo,
        request_deserializer=rpb.ServerReflectionRequest.FromString,
        response_serializer=rpb.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}) for name in SERVICE_NAMES])
    return reflection
