"""The reranker's transport: RerankService over gRPC on a dynamically batched cross-encoder."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import grpc
import numpy as np

from search.v1 import rerank_service_pb2 as pb, rerank_service_pb2_grpc as pb_grpc
from services.common import metrics, tracing, validation
from services.common.batching import BatcherMetrics, BatchStats, DynamicBatcher
from services.common.errors import InvalidArgument, Unavailable
from services.reranker.config import RerankerConfig

log = logging.getLogger(__name__)


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


class Reranker:
    """Cross-encoder scoring of a query against passages, batched across callers."""

    def __init__(self, encoder, batcher: DynamicBatcher, executor: ThreadPoolExecutor) -> None:
        self.encoder = encoder
        self.batcher = batcher
        self.executor = executor

    async def score(self, query: str, passages: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        with tracing.span("tokenize", **{"rerank.pairs": len(passages)}):
            encodings = await loop.run_in_executor(
                self.executor, self.encoder.tokenize_pairs, [(query, p) for p in passages]
            )
        metrics.RERANK_TOKENIZATION_SECONDS.observe(time.perf_counter() - start)
        with tracing.span("batch.score", **{"rerank.pairs": len(passages)}):
            return await self.batcher.submit(encodings)


class RerankServicer(pb_grpc.RerankServiceServicer):
    def __init__(self) -> None:
        self.reranker: Reranker | None = None

    async def Rerank(self, request: pb.RerankRequest, context: grpc.aio.ServicerContext) -> pb.RerankResponse:
        if self.reranker is None:
            raise Unavailable("the reranker is still loading its model; retry shortly")
        query = validation.query_text(request.query)
        passages = list(request.passages)
        if not passages:
            raise InvalidArgument("passages", "give at least one passage")
        if len(passages) > validation.MAX_RERANK_PASSAGES:
            raise InvalidArgument("passages", f"{len(passages)} passages; the limit is {validation.MAX_RERANK_PASSAGES}")
        for i, passage in enumerate(passages):
            if len(passage) > validation.MAX_PASSAGE_CHARS:
                raise InvalidArgument(f"passages[{i}]", f"is {len(passage)} characters; the limit is {validation.MAX_PASSAGE_CHARS}")
        top_k = request.top_k
        if top_k < 0:
            raise InvalidArgument("top_k", f"must be >= 0 (0 returns every passage), got {top_k}")
        scores = await self.reranker.score(query, passages)
        order = np.argsort(-scores, kind="stable")
        if top_k:
            order = order[:top_k]
        return pb.RerankResponse(
            results=[pb.RerankResult(index=int(i), score=float(scores[i])) for i in order],
            model=self.reranker.encoder.name,
        )


class RerankerService:
    name = "reranker"
    grpc_service_names = (pb.DESCRIPTOR.services_by_name["RerankService"].full_name,)

    def __init__(self, config: RerankerConfig) -> None:
        self.config = config
        # One thread runs inference (ORT parallelises inside a batch); one tokenizes.
        self.inference_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.tokenize_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tokenize")
        self.servicer = RerankServicer()
        self.batcher: DynamicBatcher | None = None

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_RerankServiceServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        from services.common.models import default_models_dir, resolve_model_dir
        from services.reranker.cross_encoder import CrossEncoder

        cfg = self.config
        loop = asyncio.get_running_loop()
        encoder = await loop.run_in_executor(
            self.inference_executor,
            partial(
                CrossEncoder,
                resolve_model_dir(cfg.model_dir or default_models_dir() / "ms-marco-MiniLM-L-12-v2"),
                max_length=cfg.max_length,
                batch_size=cfg.max_batch_pairs,
                provider=cfg.provider,
                intra_op_threads=cfg.intra_op_threads,
            ),
        )
        metrics.RERANK_PROVIDER_INFO.info({"provider": encoder.provider, "model": encoder.name})
        self.batcher = DynamicBatcher(
            encoder.infer,
            lambda encoding: len(encoding.ids),
            self.inference_executor,
            max_batch_items=cfg.max_batch_pairs,
            max_batch_tokens=cfg.max_batch_tokens,
            max_wait_s=cfg.max_wait_ms / 1000.0,
            max_queue_items=cfg.max_queue_pairs,
            metrics=RerankMetrics(),
        )
        reranker = Reranker(encoder, self.batcher, self.tokenize_executor)
        # Warm up with a full-size batch so the first caller does not pay for allocation.
        await reranker.score("warmup query", ["warmup passage " * 16] * min(cfg.max_batch_pairs, 8))
        self.servicer.reranker = reranker
        log.info("reranker ready", extra={"model": encoder.name, "provider": encoder.provider, "max_length": cfg.max_length})

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        self.inference_executor.shutdown(wait=True, cancel_futures=True)
        self.tokenize_executor.shutdown(wait=True, cancel_futures=True)
