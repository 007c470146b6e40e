"""Write versions of collections: what lets a Search result cache never serve a stale answer.

Every write that could change what a collection returns (Upsert, Delete, creating or deleting
the collection, whichever request or code path issues it) goes through the engine's
:class:`~services.retrieval.backends.base.Backend`; :class:`VersionedBackend` wraps that backend
and gives the collection a new version **after** each such call returns (or fails: a failed
write may have written part of its points). A version is an opaque token that never repeats:

* embedded engine (Qdrant Edge): one retrieval process owns a collection, so versions live in
  this process (:class:`LocalVersions`): a random per-process prefix and a counter; a restart
  draws a new prefix, so nothing cached before it matches after it;
* Qdrant server or cluster (several retrieval replicas may write): the version is a random token
  kept in the collection's own metadata (:class:`MetadataVersions`), read from Qdrant at every
  check, so a write through any replica changes what every replica reports.

The retrieval service reports the version with every Retrieve the caller asks it for (gRPC
metadata, the headers of services/common/cache.py: ``IF_VERSION_HEADER`` in the request,
``VERSION_HEADER`` in the trailing metadata), read *before* the engine query: an answer is
therefore never labelled with a version newer than the data it saw. When the caller's cached
answer has the current version, retrieval answers at once with no candidates and
``NOT_MODIFIED_HEADER`` (no embedding, no engine query): the gateway's result cache
(services/gateway/result_cache.py) then serves its copy.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from typing import Any

__all__ = ["LocalVersions", "MetadataVersions", "VersionedBackend"]

#: Key in a Qdrant server collection's metadata.
METADATA_KEY = "search_platform_write_version"

_WRITES = ("create_collection", "delete_collection", "update_metadata", "upsert", "delete_ids", "delete_where")


class LocalVersions:
    """Versions owned by this process (the embedded engine)."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:12]
        self._counter = itertools.count(1)
        self._versions: dict[str, str] = {}
        self._lock = threading.Lock()

    def current(self, name: str) -> str:
        version = self._versions.get(name)
        if version is None:
            with self._lock:
                version = self._versions.setdefault(name, self._next())
        return version

    def bump(self, name: str) -> None:
        with self._lock:
            self._versions[name] = self._next()

    def _next(self) -> str:
        return f"{self._prefix}-{next(self._counter)}"


class MetadataVersions:
    """Versions kept in a Qdrant server collection's metadata, shared by every replica."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def current(self, name: str) -> str:
        try:
            metadata = self.client.get_collection(name).config.metadata or {}
        except Exception:  # noqa: BLE001 - no such collection (yet): the Retrieve says NOT_FOUND itself
            return ""
        return str(metadata.get(METADATA_KEY, "unversioned"))

    def bump(self, name: str) -> None:
        try:
            metadata = dict(self.client.get_collection(name).config.metadata or {})
        except Exception:  # noqa: BLE001 - deleted: nothing to version
            return
        metadata[METADATA_KEY] = uuid.uuid4().hex
        self.client.update_collection(name, metadata=metadata)


class VersionedBackend:
    """``backend`` with a new collection version after every write (see the module docstring)."""

    def __init__(self, backend: Any, versions: LocalVersions | MetadataVersions | None = None) -> None:
        self._inner = backend
        if versions is None:
            client = getattr(backend, "client", None) if getattr(backend, "kind", "") == "qdrant" else None
            versions = MetadataVersions(client) if client is not None else LocalVersions()
        self.versions = versions
        for name in _WRITES:
            if hasattr(backend, name):
                setattr(self, name, self._versioned(name, getattr(backend, name)))

    def _versioned(self, operation: str, fn):
        def write(first, *args, **kwargs):
            name = first.name if operation == "create_collection" else first
            try:
                return fn(first, *args, **kwargs)
            finally:
                self.versions.bump(name)

        write.__name__ = operation
        return write

    def version(self, name: str) -> str:
        return self.versions.current(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
