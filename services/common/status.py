"""Domain errors -> gRPC status, at the edge: one table, one interceptor.

:class:`ErrorMappingInterceptor` turns a :class:`~services.common.errors.ServiceError` into
the status ``STATUS_CODES`` gives its class, with a message a caller can act on (and a
``google.rpc.BadRequest`` detail naming the field for InvalidArgument). Any other exception
becomes INTERNAL with the trace id in the message, and is logged with its traceback: a bug
never crashes the server and is never silent. A request body that does not parse as the
method's message is INVALID_ARGUMENT (gRPC's default would be UNKNOWN).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    MalformedRequest,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from services.common.interceptors import with_unary

log = logging.getLogger(__name__)

#: The one mapping of domain errors to status codes (a subclass maps as its nearest listed base).
STATUS_CODES: dict[type[ServiceError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    MalformedRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    ServiceError: grpc.StatusCode.INTERNAL,
}


def status_code(exc: ServiceError) -> grpc.StatusCode:
    """The status ``exc`` answers with."""
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


def error_details(exc: ServiceError) -> list[Any]:
    """The rich-status details of ``exc``: the field violation of an InvalidArgument, the retry
    advice of a ResourceExhausted that knows when to retry (``google.rpc.RetryInfo``)."""
    if isinstance(exc, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.description)
        return [error_details_pb2.BadRequest(field_violations=[violation])]
    if isinstance(exc, ResourceExhausted) and exc.retry_after_s is not None:
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(max(1_000_000, int(exc.retry_after_s * 1e9)))  # at least 1 ms
        return [info]
    return []


def error_status(exc: ServiceError) -> grpc.Status:
    return to_rpc_status(status_code(exc), exc.message, error_details(exc))


def to_rpc_status(code: grpc.StatusCode, message: str, details: list[Any] = ()) -> grpc.Status:
    """A rich status; inside a traced request it also carries the trace id, as a
    ``google.rpc.RequestInfo`` detail (``request_id``) and as ``x-trace-id`` trailing
    metadata (``abort_with_status`` replaces what the tracing interceptor had set)."""
    from services.common import tracing

    trace_id = tracing.current_trace_id()
    if trace_id:
        details = [*details, error_details_pb2.RequestInfo(request_id=trace_id, serving_data="trace_id")]
    packed = []
    for detail in details:
        container = any_pb2.Any()
        container.Pack(detail)
        packed.append(container)
    status = rpc_status.to_status(
        status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)
    )
    if trace_id:
        status = status._replace(
            trailing_metadata=(*status.trailing_metadata, (tracing.TRACE_ID_METADATA_KEY, trace_id))
        )
    return status


Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class _Malformed:
    """Stands in for a request whose bytes could not be parsed."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserialize):
    """The handler's deserializer, returning a :class:`_Malformed` instead of raising: gRPC
    would turn the exception into UNKNOWN, and a malformed body is the caller's mistake."""

    def tolerant(raw: bytes) -> Any:
        try:
            return deserialize(raw) if deserialize is not None else raw
        except Exception as exc:  # noqa: BLE001 - DecodeError, bad UTF-8, recursion limit
            return _Malformed(f"{exc}")

    return tolerant


def _malformed(method: str, request: _Malformed) -> ServiceError:
    return MalformedRequest(f"the request body is not a valid message for {method}: {request.reason}")


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Maps :class:`ServiceError` to its status and any other exception to INTERNAL."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is not None and handler.unary_unary is None and (handler_call_details.method or "").startswith(STREAMS_GUARDED):
            return _guard_stream(handler, handler_call_details.method)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior: Behavior = handler.unary_unary
        method = handler_call_details.method

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if isinstance(request, _Malformed):
                    raise _malformed(method, request)
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - the last line of defence for a server
                await abort_with_error(context, method, exc)

        return with_unary(handler, guarded, _tolerant(handler.request_deserializer))


#: Streaming methods are mapped too when they are the platform's own (async generators);
#: health's and reflection's streams are left as they are.
STREAMS_GUARDED = ("/search.v1.",)


def public_status(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    """The status code and message a call of ``method`` failing with ``exc`` answers with (a
    stream that announces its end before it ends says the same, services/gateway/ingest.py)."""
    if isinstance(exc, ServiceError):
        return status_code(exc), exc.message
    from services.common import tracing

    trace_id = tracing.current_trace_id()
    suffix = f" (trace id {trace_id})" if trace_id else ""
    return grpc.StatusCode.INTERNAL, f"internal error in {method}{suffix}"


async def abort_with_error(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    """End the call with ``exc``'s status (INTERNAL, logged with its traceback, when it is not a
    :class:`ServiceError`); raises ``grpc.aio.AbortError``. For interceptors outside this one."""
    if isinstance(exc, ServiceError):
        await context.abort_with_status(error_status(exc))
    log.error("unhandled error", extra={"method": method}, exc_info=exc)
    await context.abort_with_status(to_rpc_status(*public_status(exc, method)))


def _guard_stream(handler, method: str):
    """The same mapping for streaming handlers (responses streamed: async generators), and the
    same answer to a malformed request message: INVALID_ARGUMENT, never UNKNOWN."""
    async def checked(requests):
        async for request in requests:
            if isinstance(request, _Malformed):
                raise _malformed(method, request)
            yield request

    kw = {"request_deserializer": _tolerant(handler.request_deserializer), "response_serializer": handler.response_serializer}
    if handler.stream_unary is not None:
        behavior = handler.stream_unary

        async def guarded_unary(requests, context):
            try:
                return await behavior(checked(requests), context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped like a unary call's
                await abort_with_error(context, method, exc)

        return grpc.stream_unary_rpc_method_handler(guarded_unary, **kw)
    unary_stream = handler.unary_stream is not None
    behavior = handler.unary_stream or handler.stream_stream

    async def guarded_stream(request_or_requests, context):
        try:
            if unary_stream and isinstance(request_or_requests, _Malformed):
                raise _malformed(method, request_or_requests)
            async for reply in behavior(request_or_requests if unary_stream else checked(request_or_requests), context):
                yield reply
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped like a unary call's
            await abort_with_error(context, method, exc)

    make = grpc.unary_stream_rpc_method_handler if unary_stream else grpc.stream_stream_rpc_method_handler
    return make(guarded_stream, **kw)
