"""Domain errors -> gRPC status, at the edge: one table, one interceptor.

:class:`ErrorMappingInterceptor` turns a :class:`~services.common.errors.ServiceError` into
the status ``STATUS_CODES`` gives its class, with a message a caller can act on (and a
``google.rpc.BadRequest`` detail naming the field for InvalidArgument). Any other exception
becomes INTERNAL with the trace id in the message, and is logged with its traceback: a bug
never crashes the server and is never silent. A request body that does not parse as the
method's message is INVALID_ARGUMENT (gRPC's default would be UNKNOWN).

An :class:`~services.common.errors.EngineError` (a storage engine call that failed) answers by
``ENGINE_ERRORS``: the condition the engine's error names, its status and what the operator can
do, so that nothing an operator can fix answers INTERNAL.
"""

from __future__ import annotations

import errno
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.errors import (
    AlreadyExists,
    DeadlineExceeded,
    EngineError,
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


@dataclass(frozen=True)
class EngineCondition:
    """A condition of the storage engine, recognised by its error: an errno, MemoryError, or a
    text the engine puts in its message. qdrant-edge-py 0.9 raises plain ``Exception`` with the
    Rust error's text: the lock's, the damage's and the swap's texts below were seen by provoking
    them (tests/store/test_engine_errors.py); a full disk's and memory's are the OS errors' own
    texts as Rust prints them ("No space left on device (os error 28)")."""

    name: str
    code: grpc.StatusCode
    texts: tuple[str, ...]
    advice: str  # what to do; may name {collection}, {path} and {free} (the free disk under path)
    errnos: tuple[int, ...] = ()
    exception: type[BaseException] | None = None
    retry_after_s: float | None = None  # sent as google.rpc.RetryInfo

    def matches(self, cause: BaseException) -> bool:
        if self.exception is not None and isinstance(cause, self.exception):
            return True
        if getattr(cause, "errno", None) in self.errnos:
            return True
        text = str(cause)
        return any(t in text for t in self.texts)


#: Engine errors -> status, first match wins (the lock's text is checked before the damage's:
#: both come from opening the write-ahead log).
ENGINE_ERRORS: tuple[EngineCondition, ...] = (
    EngineCondition("disk full", grpc.StatusCode.RESOURCE_EXHAUSTED, ("No space left on device", "os error 28"),
                    "the disk under {path} is full ({free} free): free space (or move large collections to a "
                    "Qdrant cluster with searchctl migrate) and retry; everything acknowledged is stored",
                    errnos=(errno.ENOSPC, errno.EDQUOT)),
    EngineCondition("out of memory", grpc.StatusCode.RESOURCE_EXHAUSTED, ("Cannot allocate memory", "os error 12"),
                    "the retrieval service ran out of memory on collection {collection!r}: give it more memory "
                    "(or keep the dense vectors on disk, EDGE_DENSE_STORAGE) and retry",
                    errnos=(errno.ENOMEM,), exception=MemoryError),
    EngineCondition("shard locked", grpc.StatusCode.FAILED_PRECONDITION,
                    ("Kind(WouldBlock)", "Resource temporarily unavailable", "os error 11"),
                    "the shard at {path} is locked by another process: is another retrieval service using this "
                    "data directory? Stop it, or give each service its own QDRANT_PATH"),
    EngineCondition("shard being swapped", grpc.StatusCode.UNAVAILABLE, ("Shard is not initialized",),
                    "the shard of collection {collection!r} was being swapped (an optimization or a restore "
                    "finishing): retry in a second", retry_after_s=1.0),
    EngineCondition("shard damaged", grpc.StatusCode.FAILED_PRECONDITION,
                    ("Illegal segment header", "InvalidData", "Can't parse version", "Failed to deserialize",
                     "unexpected end of file", "UnexpectedEof", "corrupt", "checksum"),
                    "the shard at {path} is damaged: restore the collection from a snapshot (searchctl snapshot "
                    "restore) or move its folder out of the data directory; nothing was changed"),
)
#: Any other engine failure: while opening a shard, the shard cannot be served as it is; while
#: serving, the engine failed this once (retry; the log has the engine's error).
ENGINE_OPEN_FAILED = EngineCondition("shard cannot be opened", grpc.StatusCode.FAILED_PRECONDITION, (),
                                     "the shard at {path} cannot be opened (an incompatible engine version?); "
                                     "nothing was changed")
ENGINE_FAILED = EngineCondition("engine failure", grpc.StatusCode.UNAVAILABLE, (),
                                "retry; if it persists, the retrieval service's log has the engine's error",
                                retry_after_s=1.0)


def engine_condition(exc: EngineError) -> EngineCondition:
    """The row of ``ENGINE_ERRORS`` that ``exc``'s cause matches (or the fallback)."""
    for condition in ENGINE_ERRORS:
        if condition.matches(exc.cause):
            return condition
    return ENGINE_OPEN_FAILED if exc.opening else ENGINE_FAILED


def _free(path: str) -> str:
    at = Path(path)
    while not at.exists() and at != at.parent:
        at = at.parent
    try:
        return f"{shutil.disk_usage(at).free / 2**20:.0f} MB"
    except OSError:
        return "unknown"


def status_message(exc: ServiceError) -> str:
    """The message ``exc`` answers with: an engine error says the condition and what to do."""
    if not isinstance(exc, EngineError):
        return exc.message
    condition = engine_condition(exc)
    free = _free(exc.path) if "{free}" in condition.advice else ""
    advice = condition.advice.format(collection=exc.collection, path=exc.path, free=free)
    return f"{condition.name} ({exc.engine}, collection {exc.collection!r}): {advice} [engine: {exc.cause}]"


def status_code(exc: ServiceError) -> grpc.StatusCode:
    """The status ``exc`` answers with."""
    if isinstance(exc, EngineError):
        return engine_condition(exc).code
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


def error_details(exc: ServiceError) -> list[Any]:
    """The rich-status details of ``exc``: the field violation of an InvalidArgument, the retry
    advice of a ResourceExhausted or an engine error that knows when to retry (``google.rpc.RetryInfo``)."""
    if isinstance(exc, InvalidArgument):
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.description)
        return [error_details_pb2.BadRequest(field_violations=[violation])]
    retry_after_s = exc.retry_after_s if isinstance(exc, ResourceExhausted) else (
        engine_condition(exc).retry_after_s if isinstance(exc, EngineError) else None)
    if retry_after_s is not None:
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(max(1_000_000, int(retry_after_s * 1e9)))  # at least 1 ms
        return [info]
    return []


def error_status(exc: ServiceError) -> grpc.Status:
    return to_rpc_status(status_code(exc), status_message(exc), error_details(exc))


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
        return status_code(exc), status_message(exc)
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
