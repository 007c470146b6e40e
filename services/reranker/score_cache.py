"""Rerank scores cached by (model identity, query, document id, document content hash).

:class:`CachedReranker` wraps the service's :class:`~services.reranker.server.Reranker`: of a
request's passages, those scored before against the same query by the same model are answered
from a :class:`~services.common.cache.BoundedCache` named ``rerank_score``; only the others
are tokenized and sent to the cross-encoder (in one call, so they still share batches).

The key: the model identity (model directory name, its weights' digest, the token limit: what
decides a score), the query with Unicode NFC and whitespace runs collapsed (the tokenizer
splits on whitespace), the passage's document id when the caller sends ids
(``RerankRequest.ids``; "" otherwise) and the sha256 of the passage text: a document whose
text changed gets a new key, so an edited document is never scored from the cache.

Memory: one entry is a float and a key of about 150 bytes plus the query text; the default
bound of 50000 entries (``RERANKER_SCORE_CACHE_SIZE``) is about 15 MiB.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from services.common.cache import BoundedCache, model_identity, normalise_query

__all__ = ["CachedReranker"]

CACHE_NAME = "rerank_score"


def content_hash(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


class CachedReranker:
    """``reranker`` (``score(query, passages)``, ``encoder``) with its scores cached."""

    def __init__(self, reranker: Any, max_entries: int, identity: str | None = None) -> None:
        self.inner = reranker
        self.encoder = reranker.encoder
        self.cache: BoundedCache[float] = BoundedCache(CACHE_NAME, max_entries)
        encoder = reranker.encoder
        self.identity = identity if identity is not None else model_identity(encoder.name, encoder.model_dir,
                                                                              encoder.max_length)

    async def score(self, query: str, passages: list[str], ids: Sequence[str] = ()) -> np.ndarray:
        if not self.cache.enabled:
            return await self.inner.score(query, passages)
        q = normalise_query(query)
        keys = [(self.identity, q, ids[i] if i < len(ids) else "", content_hash(p)) for i, p in enumerate(passages)]
        scores = np.empty(len(passages), dtype=np.float32)
        missing = []
        for i, key in enumerate(keys):
            cached = self.cache.get(key)
            if cached is None:
                missing.append(i)
            else:
                scores[i] = cached
        if missing:
            fresh = await self.inner.score(query, [passages[i] for i in missing])
            for i, value in zip(missing, fresh):
                scores[i] = value
                self.cache.put(keys[i], float(value))
        return scores
