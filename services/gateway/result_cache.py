"""Search responses cached by the whole normalised request, valid only at the collection's version.

The gateway's :class:`SearchResultCache` keeps, per normalised SearchRequest (every field,
serialised deterministically, with the query's Unicode NFC and whitespace runs collapsed; the
collection is a field of it), the last response it built and the collection's write version that
response was computed at (services/retrieval/write_versions.py). Every Search still calls Retrieve,
as a *conditional* Retrieve: it sends the version it holds (``x-if-collection-version``);
retrieval compares it with the collection's current version and either answers "not modified"
at once (no embedding, no engine query, no reranking: the cached response is served) or runs
the query and returns the current version with the candidates, under which the new response is
then stored. A write anywhere (through any gateway, to any retrieval replica of a Qdrant server
backend) changes the version, so a cached answer is never served after a write that could
change it; with several gateway replicas each has its own cache, correct by the same check,
only less effective.

Not cached: degraded responses (a transient failure of the reranker must not outlive itself).
Bounded by entries (``GATEWAY_RESULT_CACHE_SIZE``) and by the bytes of the serialised
responses (``GATEWAY_RESULT_CACHE_MB``); ``GATEWAY_RESULT_CACHE_SIZE=0`` turns it off, and then
no version header is sent at all.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from search.v1 import search_service_pb2 as pb
from services.common.cache import IF_VERSION_HEADER, NOT_MODIFIED_HEADER, VERSION_HEADER, BoundedCache, normalise_query

__all__ = ["CachedSearch", "SearchResultCache", "answered_from_cache", "retrieve_options"]

CACHE_NAME = "search_result"


@dataclass(frozen=True)
class CachedSearch:
    version: str
    payload: bytes

    def response(self) -> pb.SearchResponse:
        return pb.SearchResponse.FromString(self.payload)


@dataclass
class _Lookup:
    """One Search's use of the cache, seen by the pipeline's Retrieve call (same task)."""

    held: CachedSearch | None
    trailers: dict[str, str] = field(default_factory=dict)


_lookup: contextvars.ContextVar[_Lookup | None] = contextvars.ContextVar("search_result_lookup", default=None)


def retrieve_options() -> dict[str, Any]:
    """Extra arguments of the pipeline's Retrieve call: the conditional metadata and a dict for the
    trailers (none while the cache is off)."""
    lookup = _lookup.get()
    if lookup is None:
        return {}
    return {"metadata": SearchResultCache.condition(lookup.held), "trailers": lookup.trailers}


def answered_from_cache() -> bool:
    """After the Retrieve call: retrieval said the held answer is current (the pipeline stops there)."""
    lookup = _lookup.get()
    return lookup is not None and lookup.held is not None and SearchResultCache.not_modified(lookup.trailers)


class SearchResultCache:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.cache: BoundedCache[CachedSearch] = BoundedCache(
            CACHE_NAME, max_entries, max_bytes=max_bytes, size_of=lambda entry: len(entry.payload) + 200
        )

    @property
    def enabled(self) -> bool:
        return self.cache.enabled

    @staticmethod
    def key(request: pb.SearchRequest) -> bytes:
        normal = pb.SearchRequest()
        normal.CopyFrom(request)
        normal.query = normalise_query(request.query)
        return normal.SerializeToString(deterministic=True)

    async def search(
        self, search: Callable[..., Awaitable[pb.SearchResponse]], request: pb.SearchRequest, *args: Any
    ) -> pb.SearchResponse:
        """``search(request, *args)`` (the pipeline) through the cache."""
        if not self.enabled:
            return await search(request, *args)
        key = self.key(request)
        lookup = _Lookup(self.get(key))
        token = _lookup.set(lookup)
        try:
            response = await search(request, *args)
        finally:
            _lookup.reset(token)
        if lookup.held is not None and self.not_modified(lookup.trailers):
            return lookup.held.response()
        self.put(key, lookup.trailers, response)
        return response

    def get(self, key: bytes) -> CachedSearch | None:
        return self.cache.get(key)

    @staticmethod
    def condition(held: CachedSearch | None) -> tuple[tuple[str, str], ...]:
        """The conditional-Retrieve metadata: the version held ("" when none, to learn it)."""
        return ((IF_VERSION_HEADER, held.version if held is not None else ""),)

    @staticmethod
    def not_modified(trailers: Mapping[str, str]) -> bool:
        return trailers.get(NOT_MODIFIED_HEADER) == "1"

    def put(self, key: bytes | None, trailers: Mapping[str, str] | None, response: pb.SearchResponse) -> None:
        """Keep ``response`` under the version retrieval reported for it (nothing without one)."""
        if key is None or trailers is None or response.degraded:
            return
        version = trailers.get(VERSION_HEADER)
        if version:
            self.cache.put(key, CachedSearch(version, response.SerializeToString()))
