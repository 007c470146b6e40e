"""Conditional Retrieve: the collection's write version in and out of RetrievalService/Retrieve.

A server interceptor of the retrieval service (services/retrieval/write_versions.py says what a
version is). Only for Retrieve calls whose metadata carries ``x-if-collection-version``
(the gateway sends it while its result cache is on; other callers are untouched):

1. the version of the collection the request names (through its alias, if it is one: the
   token is ``collection@version``, so switching an alias changes it too) is read before the
   handler runs, hence before the engine query;
2. equal to the caller's: answered at once, an empty RetrieveResponse with
   ``x-collection-not-modified: 1`` (no embedding, no engine query);
3. otherwise the handler runs and the answer carries ``x-collection-version``: the version read
   in step 1, which the caller stores its answer under.

Reading the version costs a dict lookup on the embedded engine (run on the event loop) and one
collection-info request on a Qdrant server (run on the service's worker threads).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc

from services.common.cache import IF_VERSION_HEADER, NOT_MODIFIED_HEADER, VERSION_HEADER
from services.common.interceptors import with_unary

log = logging.getLogger(__name__)

RETRIEVE_METHOD = "/search.v1.RetrievalService/Retrieve"


class ConditionalRetrieveInterceptor(grpc.aio.ServerInterceptor):
    """See the module docstring. ``version_of(name)`` returns the token ("" = unknown: no check);
    ``blocking`` says it does I/O (run it off the loop)."""

    def __init__(self, version_of: Callable[[str], str], empty_response: Callable[[], Any], blocking: bool = False) -> None:
        self.version_of = version_of
        self.empty_response = empty_response
        self.blocking = blocking

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler_call_details.method != RETRIEVE_METHOD:
            return handler
        behavior = handler.unary_unary

        async def conditional(request: Any, context: grpc.aio.ServicerContext) -> Any:
            wanted = None
            for key, value in context.invocation_metadata() or ():
                if key == IF_VERSION_HEADER:
                    wanted = value
                    break
            if wanted is None or not isinstance(getattr(request, "collection", None), str):
                return await behavior(request, context)
            if self.blocking:
                version = await asyncio.get_running_loop().run_in_executor(None, self._version, request.collection)
            else:
                version = self._version(request.collection)
            if version and wanted == version:
                _add_trailers(context, (VERSION_HEADER, version), (NOT_MODIFIED_HEADER, "1"))
                return self.empty_response()
            response = await behavior(request, context)
            if version:
                _add_trailers(context, (VERSION_HEADER, version))
            return response

        return with_unary(handler, conditional)

    def _version(self, name: str) -> str:
        try:
            return self.version_of(name)
        except Exception:  # noqa: BLE001 - no version, no cache: the Retrieve itself reports the problem
            log.debug("no collection version for %r", name, exc_info=True)
            return ""


def _add_trailers(context: grpc.aio.ServicerContext, *pairs: tuple[str, str]) -> None:
    """Add to the trailing metadata set so far (``x-trace-id``) instead of replacing it."""
    context.set_trailing_metadata((*tuple(context.trailing_metadata() or ()), *pairs))
