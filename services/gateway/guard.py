"""The gateway's caller interceptor: who is calling, may they, and may they now. Transport only;
the rules are in callers.py (who), access.py (scopes, collections) and admission.py (quotas,
fair share).

For every SearchService call (health and reflection pass untouched), in this order:

1. **Identify** the caller: ``authorization: Bearer <key>``; else the client certificate's URI
   SANs (the gateway's own mTLS, ``TLS_CLIENT_CA_FILE``), or the ``x-forwarded-client-cert``
   header a mesh sidecar sets (``GATEWAY_TRUST_FORWARDED_CLIENT_CERT``). No credential, or one
   that names no caller: UNAUTHENTICATED. No callers configured: everyone is ``anonymous``.
2. **Scope** of the method: PERMISSION_DENIED naming the scope it needs.
3. **Quota** of the caller for the method's class: RESOURCE_EXHAUSTED with RetryInfo.
4. **Fair share** of the in-flight cap (unary calls): RESOURCE_EXHAUSTED with RetryInfo.
5. **Collections** the request names (a limited caller's), and afterwards the collection that
   answered: PERMISSION_DENIED.

Calls refused at 1-3 are refused before their body is parsed. Every call is announced (the
caller on the request span as ``enduser.id``, on every log line as ``caller``), counted in
``search_gateway_caller_requests_total{caller, method, code}``, and every admin-scope call gets
an audit line (logger ``search.audit``: who, what, on which names, outcome, duration; the time
is the line's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message

from services.common import logs, metrics, streams, tracing
from services.common.errors import ServiceError, Unauthenticated
from services.common.status import abort_with_error
from services.gateway import access
from services.gateway.admission import FairShare, RateLimits
from services.gateway.callers import ADMIN, NOBODY, OTHER, SEARCH, Caller, CallersSource

audit_log = logging.getLogger("search.audit")

XFCC = "x-forwarded-client-cert"
_ALIAS_CHANGES = frozenset({"CreateAlias", "SwitchAlias", "DeleteAlias", "Reindex", "DeleteCollection"})
_END = object()


def forwarded_uris(header: str) -> list[str]:
    """The ``URI=`` values of the last element of an ``x-forwarded-client-cert`` header: the one the
    nearest proxy (the sidecar) added; elements before it came from further away, or from the
    caller itself."""
    elements, current, quoted = [], [], False
    for ch in header:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            elements.append("".join(current))
            current = []
        else:
            current.append(ch)
    elements.append("".join(current))
    uris = []
    for pair in _split(elements[-1], ";"):
        key, _, value = pair.partition("=")
        if key.strip().lower() == "uri":
            uris.append(value.strip().strip('"'))
    return [u for u in uris if u]


def _split(text: str, sep: str) -> list[str]:
    parts, current, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _value(metadata: Any, key: str) -> str | None:
    for k, v in metadata or ():
        if k.lower() == key:
            return v.decode(errors="replace") if isinstance(v, bytes) else v
    return None


class Call:
    """One call's state between the interceptor's steps."""

    __slots__ = ("method", "path", "caller", "error", "request", "holding", "started", "parse")

    def __init__(self, method: str, path: str, parse: Any = None) -> None:
        self.method, self.path, self.parse = method, path, parse
        self.caller: Caller | None = None
        self.error: ServiceError | None = None
        self.request: Any = None
        self.holding = False
        self.started = time.perf_counter()


class CallerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, source: CallersSource, limits: RateLimits, share: FairShare, aliases: access.AliasDirectory,
                 services: Sequence[str], *, peer_identity: bool = False, trust_forwarded: bool = False) -> None:
        self.source, self.limits, self.share, self.aliases = source, limits, share, aliases
        self.prefixes = tuple(f"/{s}/" for s in services)
        self.peer_identity, self.trust_forwarded = peer_identity, trust_forwarded

    # -- the steps ---------------------------------------------------------------------

    def _identify(self, metadata: Any) -> Caller | None:
        """The caller, from the metadata; None when only the peer's certificate can tell."""
        book = self.source.book
        if not book.enabled:
            return NOBODY
        value = _value(metadata, "authorization")
        if value is not None:
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("malformed authorization metadata: expected 'Bearer <key>'")
            caller = book.by_key(token.strip())
            if caller is None:
                raise Unauthenticated("invalid API key")
            return caller
        if self.trust_forwarded:
            forwarded = _value(metadata, XFCC)
            if forwarded:
                return self._by_identity(forwarded_uris(forwarded))
        if self.peer_identity:
            return None
        raise Unauthenticated("missing API key: send metadata 'authorization: Bearer <key>'")

    def _by_identity(self, uris: list[str]) -> Caller:
        caller = self.source.book.by_identity(uris)
        if caller is None:
            shown = ", ".join(uris) if uris else "none"
            raise Unauthenticated(f"missing API key, and the client certificate's identity ({shown}) is not a "
                                  "configured caller: send 'authorization: Bearer <key>'")
        return caller

    def _admit(self, call: Call) -> None:
        scope = access.require_scope(call.caller, call.method)
        self.limits.take(call.caller, scope)

    def _announce(self, call: Call) -> None:
        name = call.caller.name if call.caller is not None else "unauthenticated"
        logs.CALLER.set(name)
        if call.caller is not None:
            access.CURRENT.set(call.caller)
        tracing.set_attributes(**{"enduser.id": name})

    async def _open(self, call: Call, context: grpc.aio.ServicerContext, slot: bool) -> None:
        if call.caller is None and call.error is None:  # the peer's certificate decides
            try:
                uris = [v.decode(errors="replace") for v in (context.auth_context() or {}).get("peer_uri", [])]
                call.caller = self._by_identity(uris)
                self._admit(call)
            except ServiceError as exc:
                call.error = exc
        self._announce(call)
        if call.error is not None:
            raise call.error
        if slot:
            self.share.acquire(call.caller)
            call.holding = True

    async def _check_request(self, call: Call, request: Any) -> None:
        if not isinstance(request, Message):
            return  # a body that did not parse: the handler answers INVALID_ARGUMENT
        call.request = request
        if access.needs_aliases(call.caller, call.method):
            aliases = await self.aliases.get(fresh=access.scope_of(call.method) != SEARCH)
            access.check_uses(call.caller, call.method, request, aliases)

    def _close(self, call: Call, context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
        if call.holding:
            self.share.release(call.caller)
        if isinstance(error, GeneratorExit):
            error = asyncio.CancelledError()
        code = metrics.final_code(context, error)
        label = call.caller.label if call.caller is not None else OTHER
        metrics.GATEWAY_CALLER_REQUESTS.labels(caller=label, method=call.path, code=code).inc()
        if code == "OK" and call.method in _ALIAS_CHANGES:
            self.aliases.invalidate()
        if access.scope_of(call.method) == ADMIN:
            if isinstance(call.request, bytes) and call.parse is not None:  # refused unread: read it for the audit
                call.request = call.parse(call.request)
            audit_log.info("admin call", extra={
                "caller": call.caller.name if call.caller is not None else "unauthenticated",
                "method": call.path, "outcome": code, "duration_ms": round(1000 * (time.perf_counter() - call.started), 3),
                **access.audit_fields(call.method, call.request)})

    async def _peeked(self, call: Call, requests: Any) -> Any:
        """``requests`` with its first message checked (it names the collection of the stream)."""
        iterator = aiter(requests)
        first = await anext(iterator, _END)
        if first is not _END:
            await self._check_request(call, first)

        async def chained():
            if first is not _END:
                yield first
            async for message in iterator:
                yield message

        return chained()

    # -- the interceptor ---------------------------------------------------------------

    async def intercept_service(self, continuation, handler_call_details):
        path = handler_call_details.method or ""
        handler = await continuation(handler_call_details)
        if handler is None or not path.startswith(self.prefixes):
            return handler
        call = Call(path.rsplit("/", 1)[-1], path.lstrip("/"), handler.request_deserializer)
        try:
            call.caller = self._identify(handler_call_details.invocation_metadata)
            if call.caller is not None:
                self._admit(call)
        except ServiceError as exc:
            call.error = exc
        return self._wrap(handler, call)

    @contextlib.asynccontextmanager
    async def _guarded(self, call: Call, context: grpc.aio.ServicerContext, slot: bool,
                       request: Any = _END, requests: Any = None) -> AsyncIterator[None]:
        """The handler's body runs inside: the call opened (identity, scope, quota; ``slot``: a
        share of the in-flight cap) and its ``request`` checked (streams: their first message,
        :meth:`_peeked`), a refusal answered with its status (a client stream's once the caller
        has finished writing, at most streams.DRAIN_SECONDS: services/common/streams.py), and
        the call closed (slot released, counted, audited) however it ends."""
        error = None
        if request is not _END:
            call.request = request
        try:
            try:
                await self._open(call, context, slot=slot)
                if request is not _END:
                    await self._check_request(call, request)
                yield
            except ServiceError as exc:
                if requests is not None:
                    await streams.drain_quietly(requests)
                await abort_with_error(context, call.path, exc)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._close(call, context, error)

    def _wrap(self, handler: grpc.RpcMethodHandler, call: Call) -> grpc.RpcMethodHandler:
        refused = call.error is not None  # refused before its body is read: no deserializer
        kw = {"request_deserializer": None if refused else handler.request_deserializer,
              "response_serializer": handler.response_serializer}
        guard = self
        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            async def unary_unary(request, context):
                async with guard._guarded(call, context, slot=True, request=request):
                    return access.check_answer(call.caller, call.method, await behavior(request, context))

            return grpc.unary_unary_rpc_method_handler(unary_unary, **kw)
        if handler.unary_stream is not None:
            behavior = handler.unary_stream

            async def unary_stream(request, context):
                async with guard._guarded(call, context, slot=False, request=request):
                    async for reply in behavior(request, context):
                        yield reply

            return grpc.unary_stream_rpc_method_handler(unary_stream, **kw)
        if handler.stream_unary is not None:
            behavior = handler.stream_unary

            async def stream_unary(requests, context):
                async with guard._guarded(call, context, slot=False, requests=requests):
                    return await behavior(await guard._peeked(call, requests), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, **kw)
        behavior = handler.stream_stream

        async def stream_stream(requests, context):
            async with guard._guarded(call, context, slot=False, requests=requests):
                async for reply in behavior(await guard._peeked(call, requests), context):
                    yield reply

        return grpc.stream_stream_rpc_method_handler(stream_stream, **kw)
