"""Query embeddings cached by (model identity, normalised text): the store's embedder, wrapped.

:class:`CachedQueryEmbedder` has the interface :class:`services.retrieval.store.Embedder`
expects; it passes each call to the embedder it wraps (the dynamically batched one,
:class:`QueryEmbedder`), except that ``embed_queries`` answers from a :class:`~services.common.cache.BoundedCache` named
``query_embedding`` the texts it has embedded before and sends only the others to the model.
Documents are never cached (an upsert's texts are seldom seen twice).

The key is the model identity (:func:`model_identity`: model directory name, the sha256 of
its ``model.onnx`` when known, the maximum length and the query prefix: what decides the
vector) and the text with Unicode NFC and runs of whitespace collapsed (the tokenizer splits
on whitespace, so these texts tokenize alike). A cached vector is read-only; callers get it
as stored (``embed_queries`` returns a new array, rows copied).

Embedding on the event loop (:meth:`CachedQueryEmbedder.prefetch`): the retrieval handler awaits
the query's vector *before* it calls the store, and keeps it in a context variable, where
``embed_queries`` finds it. The store's call, on the event loop itself for the embedded engine
(``CollectionOperations.retrieve``) or on a worker thread (which gets a copy of the request's
context), then needs no round trip to the loop's batcher: from the loop that would deadlock, from
a worker it cost two thread hand-offs per query (docs/BENCHMARKS.md).
This works with the cache off too; a prefetched vector is counted as one lookup, not two.

Memory: one entry is a ``dimension`` float32 vector plus the text, about 1.6 KiB for
bge-small-en's 384 dimensions and a short query, so the default bound of 10000 entries
(``RETRIEVAL_QUERY_CACHE_SIZE``) holds at most about 16 MiB.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from services.common.cache import BoundedCache, model_identity, normalise_query

__all__ = ["CachedQueryEmbedder"]

CACHE_NAME = "query_embedding"

#: Query vectors this request already has (normalised text -> vector), see the module docstring.
_prefetched: contextvars.ContextVar[dict[str, np.ndarray] | None] = contextvars.ContextVar("prefetched_queries", default=None)


class QueryEmbedder(Protocol):
    """What :class:`CachedQueryEmbedder` wraps (services/retrieval/batched_embedder.py)."""

    name: str
    dimension: int
    provider: str
    max_length: int
    model_dir: Path | None
    query_prefix: str

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    async def aembed_queries(self, texts: Sequence[str]) -> np.ndarray: ...


class CachedQueryEmbedder:
    """``embedder`` with its query embeddings cached; ``max_entries=0`` passes everything through."""

    def __init__(self, embedder: QueryEmbedder, max_entries: int, identity: str | None = None) -> None:
        self.inner = embedder
        #: The wrapped embedder's description, as the store and the model guard read it.
        self.name, self.dimension, self.provider = embedder.name, embedder.dimension, embedder.provider
        self.model_dir: Path | None = embedder.model_dir
        self.cache: BoundedCache[np.ndarray] = BoundedCache(CACHE_NAME, max_entries)
        if identity is None:
            identity = model_identity(embedder.name, embedder.model_dir, embedder.max_length, embedder.query_prefix)
        self.identity = identity

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Documents are never cached (an upsert's texts are seldom seen twice)."""
        return self.inner.embed_documents(texts)

    async def prefetch(self, query: str) -> None:
        """Embed ``query`` on the event loop (through the cache) for this request's store call."""
        text = normalise_query(query)
        vector = self.cache.get((self.identity, text)) if self.cache.enabled else None
        if vector is None:
            vector = np.array((await self.inner.aembed_queries([text]))[0], dtype=np.float32, copy=True)
            vector.setflags(write=False)
            self.cache.put((self.identity, text), vector)
        _prefetched.set({text: vector})

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        prefetched = _prefetched.get()
        if prefetched is not None and texts:
            known = [prefetched.get(normalise_query(t)) for t in texts]
            if all(v is not None for v in known):
                return np.stack(known)
        if not self.cache.enabled or not texts:
            return self.inner.embed_queries(texts)
        keys = [(self.identity, normalise_query(t)) for t in texts]
        found = [self.cache.get(k) for k in keys]
        missing = [i for i, v in enumerate(found) if v is None]
        if missing:
            # Embed each distinct missing text once, in its normalised form (the cached one).
            distinct = list(dict.fromkeys(keys[i][1] for i in missing))
            vectors = self.inner.embed_queries(distinct)
            fresh = {}
            for text, vector in zip(distinct, vectors):
                stored = np.array(vector, dtype=np.float32, copy=True)
                stored.setflags(write=False)
                fresh[text] = stored
                self.cache.put((self.identity, text), stored)
            for i in missing:
                found[i] = fresh[keys[i][1]]
        return np.stack(found)

    async def aembed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return await self.inner.aembed_queries(texts)

    def __repr__(self) -> str:
        return f"CachedQueryEmbedder({self.inner!r}, {self.cache!r})"
