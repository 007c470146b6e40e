"""The reranker's domain: cross-encoder scoring of a query against passages, batched across
callers (the dynamic batcher, or per request as the naive baseline). No gRPC here; the
transport is services/reranker/server.py."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from services.common import metrics, tracing
from services.common.batching import BatcherMetrics, BatchStats, DynamicBatcher, check_fits, check_room

#: How a request larger than the whole queue is refused (see services.common.batching.check_fits).
QUEUE_NAMES = {"request_field": "passages", "item_noun": "passages", "queue_setting": "RERANKER_MAX_QUEUE_PAIRS"}


class RerankMetrics(BatcherMetrics):
    def queue_changed(self, items: int, requests: int) -> None:
        metrics.RERANK_QUEUE_PAIRS.set(items)
        metrics.RERANK_QUEUE_REQUESTS.set(requests)

    def rejected(self) -> None:
        metrics.RERANK_REJECTED_REQUESTS.inc()

    def queue_wait(self, seconds: float) -> None:
        metrics.RERANK_QUEUE_WAIT_SECONDS.observe(seconds)

    def batch_done(self, stats: BatchStats) -> None:
        metrics.RERANK_BATCH_PAIRS.observe(stats.items)
        metrics.RERANK_BATCH_TOKENS.observe(stats.padded_tokens)
        metrics.RERANK_INFERENCE_SECONDS.observe(stats.seconds)
        metrics.RERANK_PAIRS_SCORED.inc(stats.items)


class PerRequestScorer:
    """No cross-request batching: each request is scored on its own, in its own batches.

    Each request is one (or, past ``RERANKER_MAX_BATCH_PAIRS``, a few) batches; concurrent
    requests run side by side on ``executor``'s threads, as on a thread-per-request server,
    with the same ONNX Runtime layout as the batcher. This is the naive baseline ``searchctl bench rerank`` compares the dynamic
    batcher with (``RERANKER_BATCHING=none``); it has the same queue bound and metrics.
    """

    def __init__(self, encoder, executor: ThreadPoolExecutor, max_queue_items: int, metrics_hooks: BatcherMetrics) -> None:
        self.encoder = encoder
        self.executor = executor
        self.max_queue_items = max_queue_items
        self.metrics = metrics_hooks
        self.queued_items = 0
        self.queued_requests = 0

    def check_fits(self, n: int) -> None:
        check_fits(n, self.max_queue_items, **QUEUE_NAMES)

    async def submit(self, encodings) -> np.ndarray:
        n = len(encodings)
        self.check_fits(n)
        check_room(self.queued_items, n, self.max_queue_items, self.metrics)
        self.queued_items += n
        self.queued_requests += 1
        self.metrics.queue_changed(self.queued_items, self.queued_requests)
        enqueued = time.perf_counter()

        def run() -> tuple[np.ndarray, float, float]:
            start = time.perf_counter()
            return self.encoder.score_encodings(encodings), start - enqueued, time.perf_counter() - start

        try:
            scores, waited, seconds = await asyncio.get_running_loop().run_in_executor(self.executor, run)
        finally:
            self.queued_items -= n
            self.queued_requests -= 1
            self.metrics.queue_changed(self.queued_items, self.queued_requests)
        lengths = [len(e.ids) for e in encodings]
        self.metrics.queue_wait(waited)
        self.metrics.batch_done(BatchStats(n, n * max(lengths), sum(lengths), seconds))
        return scores

    async def close(self) -> None:
        return None


class Reranker:
    """Cross-encoder scoring of a query against passages, batched across callers."""

    def __init__(self, encoder, batcher: DynamicBatcher | PerRequestScorer, executor: ThreadPoolExecutor) -> None:
        self.encoder = encoder
        self.batcher = batcher
        self.executor = executor

    async def score(self, query: str, passages: list[str]) -> np.ndarray:
        self.batcher.check_fits(len(passages))  # before tokenizing: a request that can never fit costs nothing
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        with tracing.span("tokenize", **{"rerank.pairs": len(passages)}) as span:
            encodings = await loop.run_in_executor(
                self.executor, self.encoder.tokenize_pairs, [(query, p) for p in passages]
            )
            if span.is_recording():
                span.set_attribute("rerank.tokens", sum(len(e.ids) for e in encodings))
        metrics.RERANK_TOKENIZATION_SECONDS.observe(time.perf_counter() - start)
        with tracing.span("batch.score", **{"rerank.pairs": len(passages)}), tracing.batch_member(encodings):
            return await self.batcher.submit(encodings)
