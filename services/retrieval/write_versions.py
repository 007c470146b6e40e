"""Write versions of collections: what lets a Search result cache never serve a stale answer.

Every write that could change what a collection returns (Upsert, Delete, creating or deleting
the collection, whichever request or code path issues it) goes through the engine's
:class:`~services.retrieval.backends.base.Backend`; :class:`VersionedBackend` wraps that backend
and gives the collection a new version **after** each such call returns (or fails: a failed
write may have written part of its points). A version is an opaque token that never repeats;
the backend keeps it (``Backend.write_version``, ``new_write_version``):

* embedded engine (Qdrant Edge): one retrieval process owns a collection, so versions live in
  this process: a random per-process prefix and a counter; a restart draws a new prefix, so
  nothing cached before it matches after it;
* Qdrant server or cluster (several retrieval replicas may write): the version is a random token
  kept in the collection's own metadata, read from Qdrant at every check, so a write through any
  replica changes what every replica reports.

The retrieval service reports the version with every Retrieve the caller asks it for (gRPC
metadata, the headers of services/common/cache.py: ``IF_VERSION_HEADER`` in the request,
``VERSION_HEADER`` in the trailing metadata), read *before* the engine query: an answer is
therefore never labelled with a version newer than the data it saw. When the caller's cached
answer has the current version, retrieval answers at once with no candidates and
``NOT_MODIFIED_HEADER`` (no embedding, no engine query): the gateway's result cache
(services/gateway/result_cache.py) then serves its copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from services.retrieval.backends.base import (
    Backend, CollectionSchema, CollectionStats, Filter, Fused, Hit, Nearest, PointIn, PointSnapshot, Rescore,
)

__all__ = ["VersionedBackend"]


class VersionedBackend:
    """``backend`` with a new collection version after every write (see the module docstring);
    reads, aliases and the rest are the backend's own calls."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.kind = backend.kind
        self.shared = backend.shared

    def version(self, name: str) -> str:
        return self.backend.write_version(name)

    @contextmanager
    def _writing(self, name: str) -> Iterator[None]:
        try:
            yield
        finally:
            self.backend.new_write_version(name)

    # -- writes: each gives its collection a new version ---------------------------------

    def create_collection(self, schema: CollectionSchema) -> None:
        with self._writing(schema.name):
            self.backend.create_collection(schema)

    def delete_collection(self, name: str) -> None:
        with self._writing(name):
            self.backend.delete_collection(name)

    def update_metadata(self, name: str, updates: dict[str, Any]) -> None:
        with self._writing(name):
            self.backend.update_metadata(name, updates)

    def upsert(self, name: str, points: Sequence[PointIn]) -> None:
        with self._writing(name):
            self.backend.upsert(name, points)

    def delete_ids(self, name: str, ids: Sequence[str]) -> None:
        with self._writing(name):
            self.backend.delete_ids(name, ids)

    def delete_where(self, name: str, where: Filter) -> None:
        with self._writing(name):
            self.backend.delete_where(name, where)

    # -- the rest of the Backend protocol, as the backend answers it ----------------------

    def list_collections(self) -> list[str]:
        return self.backend.list_collections()

    def reads_in_place(self, name: str) -> bool:
        return self.backend.reads_in_place(name)

    def schema(self, name: str) -> CollectionSchema:
        return self.backend.schema(name)

    def existing(self, name: str, ids: Sequence[str]) -> list[str]:
        return self.backend.existing(name, ids)

    def count(self, name: str, where: Filter | None = None) -> int:
        return self.backend.count(name, where)

    def query(self, name: str, queries: Sequence[Nearest | Fused | Rescore]) -> list[list[Hit]]:
        return self.backend.query(name, queries)

    def scroll(self, name: str, offset: str | None, limit: int, with_vectors: bool, where: Filter | None = None):
        return self.backend.scroll(name, offset, limit, with_vectors, where)

    def retrieve(self, name: str, ids: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        return self.backend.retrieve(name, ids)

    def snapshot_points(self, name: str) -> AbstractContextManager[PointSnapshot]:
        return self.backend.snapshot_points(name)

    def list_aliases(self) -> dict[str, str]:
        return self.backend.list_aliases()

    def set_alias(self, alias: str, collection: str) -> None:
        self.backend.set_alias(alias, collection)

    def delete_alias(self, alias: str) -> None:
        self.backend.delete_alias(alias)

    def write_version(self, name: str) -> str:
        return self.backend.write_version(name)

    def new_write_version(self, name: str) -> None:
        self.backend.new_write_version(name)

    def stats(self, name: str) -> CollectionStats:
        return self.backend.stats(name)

    def flush(self) -> None:
        self.backend.flush()

    def close(self) -> None:
        self.backend.close()
