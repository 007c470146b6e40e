"""A bounded, thread-safe LRU cache that reports hits, misses, evictions and its size.

One mechanism for the platform's three caches (query embeddings in retrieval, rerank scores in
the reranker, Search results in the gateway): each is a :class:`BoundedCache` with its own
``name`` (the ``cache`` label of the ``search_cache_*`` metrics, docs/METRICS.md) and an
entry bound (``max_entries``; 0 turns the cache off: every lookup misses, nothing is kept).
Memory is bounded by the entry count times the largest value the cache stores, which each
user states next to its setting (a query vector: 384 float32 = 1.5 KiB).

Keys and values are the caller's; values must not be mutated after :meth:`put` (callers
store immutable values or copies). Lookups and insertions take one lock; no I/O under it.
"""

from __future__ import annotations

import hashlib
import os
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Generic, TypeVar

from services.common import metrics

__all__ = ["IF_VERSION_HEADER", "NOT_MODIFIED_HEADER", "VERSION_HEADER", "BoundedCache", "model_identity",
           "normalise_query"]

# The conditional Retrieve between the gateway's Search-result cache and retrieval (gRPC metadata;
# services/retrieval/write_versions.py and conditional_retrieve.py, services/gateway/result_cache.py).
#: Request metadata: the version of the answer the caller holds ("" when it holds none but wants the version).
IF_VERSION_HEADER = "x-if-collection-version"
#: Trailing metadata of Retrieve: the collection's version when the query started.
VERSION_HEADER = "x-collection-version"
#: Trailing metadata of Retrieve: "1" when the caller's version is current (no candidates were computed).
NOT_MODIFIED_HEADER = "x-collection-not-modified"


def normalise_query(text: str) -> str:
    """A query as cache keys see it: NFC, whitespace runs collapsed to one space, ends stripped
    (the models' tokenizers split on whitespace, so these texts tokenize alike)."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def model_identity(name: str, model_dir: str | os.PathLike[str] | None, max_length: int, query_prefix: str = "") -> str:
    """What decides a model's output for a text: its name, its weights' digest when its directory
    is known, its token limit and its query prefix."""
    parts = [name]
    if model_dir is not None:
        parts.append(_file_digest(Path(model_dir) / "model.onnx"))
    return "|".join([*parts, str(max_length), query_prefix])


def _file_digest(path: Path) -> str:
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()[:16]
    except OSError:
        return "?"

V = TypeVar("V")


class BoundedCache(Generic[V]):
    """LRU of at most ``max_entries`` entries (and, with ``size_of``, at most ``max_bytes`` of
    values as ``size_of`` measures them); ``max_entries=0`` is a cache that is off."""

    def __init__(self, name: str, max_entries: int, *, max_bytes: int = 0, size_of=None) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError(f"cache {name!r}: bounds must be >= 0, got {max_entries} entries, {max_bytes} bytes")
        self.name = name
        self.max_entries = max_entries
        self.max_bytes = max_bytes if size_of is not None else 0
        self._size_of = size_of
        self._sizes: dict[Hashable, int] = {}
        self.bytes = 0
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = metrics.CACHE_LOOKUPS.labels(cache=name, outcome="hit")
        self._misses = metrics.CACHE_LOOKUPS.labels(cache=name, outcome="miss")
        self._evictions = metrics.CACHE_EVICTIONS.labels(cache=name)
        self._entries = metrics.CACHE_ENTRIES.labels(cache=name)
        self._entries.set(0)
        metrics.CACHE_CAPACITY.labels(cache=name).set(max_entries)
        # Plain counters for tests and benchmarks.
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable, default: Any = None) -> V | Any:
        """The value stored under ``key`` (now the most recently used), or ``default``; counted."""
        if not self.max_entries:
            return default
        with self._lock:
            value = self._data.get(key, _MISSING)
            if value is _MISSING:
                self.misses += 1
            else:
                self._data.move_to_end(key)
                self.hits += 1
        if value is _MISSING:
            self._misses.inc()
            return default
        self._hits.inc()
        return value

    def put(self, key: Hashable, value: V) -> None:
        """Store ``value`` under ``key``, evicting the least recently used entries past the bound."""
        if not self.max_entries:
            return
        evicted = 0
        size = self._size_of(value) if self._size_of is not None else 0
        if self.max_bytes and size > self.max_bytes:
            return  # larger than the whole cache: not kept
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if self._size_of is not None:
                self.bytes += size - self._sizes.get(key, 0)
                self._sizes[key] = size
            while len(self._data) > self.max_entries or (self.max_bytes and self.bytes > self.max_bytes):
                old, _ = self._data.popitem(last=False)
                self.bytes -= self._sizes.pop(old, 0)
                evicted += 1
            self.evictions += evicted
            size = len(self._data)
        if evicted:
            self._evictions.inc(evicted)
        self._entries.set(size)

    def pop(self, key: Hashable) -> None:
        """Forget ``key`` (not counted as an eviction)."""
        with self._lock:
            self._data.pop(key, None)
            self.bytes -= self._sizes.pop(key, 0)
            size = len(self._data)
        self._entries.set(size)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._sizes.clear()
            self.bytes = 0
        self._entries.set(0)

    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __repr__(self) -> str:
        return f"BoundedCache({self.name!r}, {len(self)}/{self.max_entries}, hits={self.hits}, misses={self.misses})"


_MISSING = object()
