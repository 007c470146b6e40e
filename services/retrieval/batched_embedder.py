"""The retrieval service's embedder, dynamically batched across concurrent requests.

:class:`BatchedEmbedder` has the interface :class:`services.retrieval.store.Embedder`
expects (``name``, ``dimension``, ``embed_queries``, ``embed_documents``) and sends every
text through one :class:`~services.common.batching.DynamicBatcher`, the reranker's
mechanism: concurrent search queries and upserts share length-sorted batches bounded by
texts and padded tokens, inference runs off the event loop (``workers`` batches side by
side on a CPU), and each caller
gets its rows back in its own order. Search queries have priority over documents, so a
search arriving during a bulk upsert waits for at most the batch that is running.

The store calls the embedder synchronously from its worker threads. Those threads
tokenize (in parallel, the tokenizer releases the GIL), then hand the encodings to the
batcher on the event loop with :func:`asyncio.run_coroutine_threadsafe` and block until
their vectors are ready. Calling from the event loop thread itself would deadlock and
raises instead; coroutines use :meth:`BatchedEmbedder.aembed_queries` /
:meth:`BatchedEmbedder.aembed_documents`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from services.common import metrics as platform_metrics
from services.common.batching import BatcherMetrics, BatchStats, DynamicBatcher
from services.retrieval.embedder import BiEncoder

__all__ = ["DOCUMENT_PRIORITY", "QUERY_PRIORITY", "BatchedEmbedder", "EmbedderBatchMetrics"]

QUERY_PRIORITY = 0
DOCUMENT_PRIORITY = 1
#: Up to this many search queries are tokenized on the event loop itself (no thread hand-off).
INLINE_QUERIES = 4


class EmbedderBatchMetrics(BatcherMetrics):
    """Reports the embedder's queue and batches to Prometheus (services/common/metrics.py).

    ``search_retrieval_embed_queue_texts`` / ``_queue_requests`` (gauges),
    ``_batch_texts`` / ``_batch_tokens`` / ``_queue_wait_seconds`` / ``_inference_seconds``
    (histograms) and ``_rejected_requests_total``: the reranker's batching metrics, for the
    bi-encoder. The time a caller spends embedding (queue wait included) is recorded by the
    store as ``search_retrieval_embedding_seconds{kind}``. The hooks also keep plain
    counters (``batches``, ``items``, ``padded_tokens``, ``rejections``) for tests and benchmarks.
    """

    def __init__(self) -> None:
        self.batches = 0
        self.items = 0
        self.padded_tokens = 0
        self.rejections = 0
        self.max_queue_items = 0

    def queue_changed(self, items: int, requests: int) -> None:
        self.max_queue_items = max(self.max_queue_items, items)
        platform_metrics.RETRIEVAL_EMBED_QUEUE_TEXTS.set(items)
        platform_metrics.RETRIEVAL_EMBED_QUEUE_REQUESTS.set(requests)

    def rejected(self) -> None:
        self.rejections += 1
        platform_metrics.RETRIEVAL_EMBED_REJECTED_REQUESTS.inc()

    def queue_wait(self, seconds: float) -> None:
        platform_metrics.RETRIEVAL_EMBED_QUEUE_WAIT_SECONDS.observe(seconds)

    def batch_done(self, stats: BatchStats) -> None:
        self.batches += 1
        self.items += stats.items
        self.padded_tokens += stats.padded_tokens
        platform_metrics.RETRIEVAL_EMBED_BATCH_TEXTS.observe(stats.items)
        platform_metrics.RETRIEVAL_EMBED_BATCH_TOKENS.observe(stats.padded_tokens)
        platform_metrics.RETRIEVAL_EMBED_INFERENCE_SECONDS.observe(stats.seconds)


class BatchedEmbedder:
    """A :class:`BiEncoder` behind a :class:`DynamicBatcher`; the store's ``Embedder``.

    Create it on the event loop (it captures the running loop), use it from any other
    thread, and :meth:`close` it on the loop when the service stops.
    """

    def __init__(
        self,
        encoder: BiEncoder,
        *,
        max_batch_texts: int | None = None,
        max_batch_tokens: int = 512,
        max_wait_s: float = 0.002,
        max_queue_texts: int = 8192,
        workers: int = 1,
        prefetch: int = 0,
        queued: int = 0,
        metrics: BatcherMetrics | None = None,
    ) -> None:
        self.encoder = encoder
        self.name: str = encoder.name
        self.dimension: int = encoder.dimension
        self.provider: str = encoder.provider
        self.max_length: int = encoder.max_length
        self.model_dir: Path = encoder.model_dir
        self.query_prefix: str = encoder.query_prefix
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._executor = ThreadPoolExecutor(max_workers=workers + prefetch, thread_name_prefix="embed-inference")
        self.metrics = metrics if metrics is not None else EmbedderBatchMetrics()
        self.batcher: DynamicBatcher = DynamicBatcher(
            encoder.infer,
            lambda encoding: len(encoding.ids),
            self._executor,
            max_batch_items=max_batch_texts or encoder.batch_size,
            max_batch_tokens=max_batch_tokens,
            max_wait_s=max_wait_s,
            max_queue_items=max_queue_texts,
            item_shape=(encoder.dimension,),
            workers=workers,
            prefetch=prefetch,
            queued=queued,
            metrics=self.metrics,
            request_field="documents",
            item_noun="texts to embed (documents, or their passages when the collection splits them)",
            queue_setting="EMBEDDER_MAX_QUEUE_TEXTS",
        )

    # ------------------------------------------------------------------ the store's interface (any thread but the loop's)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed search queries (with the model's query prefix); ``(n, dimension)`` float32."""
        return self._embed_blocking(self.encoder.tokenize_queries, texts, QUERY_PRIORITY)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages; ``(n, dimension)`` float32, in input order."""
        return self._embed_blocking(self.encoder.tokenize_documents, texts, DOCUMENT_PRIORITY)

    # ------------------------------------------------------------------ coroutine interface (on the loop)

    async def aembed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return await self._submit(self.encoder.tokenize_queries, texts, QUERY_PRIORITY)

    async def aembed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return await self._submit(self.encoder.tokenize_documents, texts, DOCUMENT_PRIORITY)

    async def close(self) -> None:
        """Finish queued work, then stop the inference thread."""
        await self.batcher.close()
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ internals

    async def _submit(self, tokenize, texts: Sequence[str], priority: int) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        if priority == QUERY_PRIORITY and len(texts) <= INLINE_QUERIES:
            encodings = tokenize(texts)  # tens of microseconds: cheaper than a hand-off to a thread and back
        else:  # off the loop: a bulk upsert takes tens of milliseconds
            encodings = await asyncio.get_running_loop().run_in_executor(None, tokenize, texts)
        return await self.batcher.submit(encodings, priority=priority)

    def _embed_blocking(self, tokenize, texts: Sequence[str], priority: int) -> np.ndarray:
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError(
                "BatchedEmbedder.embed_* blocks until the event loop has run the batch; from the loop "
                "thread use aembed_queries / aembed_documents"
            )
        texts = list(texts)
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        if self._loop.is_closed():
            raise RuntimeError("the embedder's event loop is closed")
        encodings = tokenize(texts)  # in the calling thread, in parallel with other callers
        future = asyncio.run_coroutine_threadsafe(self.batcher.submit(encodings, priority=priority), self._loop)
        return future.result()

    def __repr__(self) -> str:
        return f"BatchedEmbedder({self.encoder!r}, max_batch_texts={self.batcher.max_batch_items})"
