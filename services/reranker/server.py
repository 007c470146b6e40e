"""The reranker's transport: RerankService over gRPC on a dynamically batched cross-encoder."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from search.v1 import rerank_service_pb2 as pb, rerank_service_pb2_grpc as pb_grpc
from services.common import metrics, tracing, validation
from services.common.batching import DynamicBatcher
from services.common.errors import InvalidArgument, Unavailable
from services.reranker.config import RerankerConfig
from services.reranker.reranker import QUEUE_NAMES, PerRequestScorer, RerankMetrics, Reranker
from services.reranker.score_cache import CachedReranker

log = logging.getLogger(__name__)


class RerankServicer(pb_grpc.RerankServiceServicer):
    def __init__(self) -> None:
        self.reranker: Reranker | CachedReranker | None = None

    async def Rerank(self, request: pb.RerankRequest, context: grpc.aio.ServicerContext) -> pb.RerankResponse:
        if self.reranker is None:
            raise Unavailable("the reranker is still loading its model; retry shortly")
        query = validation.query_text(request.query)
        passages = validation.rerank_passages(request.passages)
        top_k = request.top_k
        if top_k < 0:
            raise InvalidArgument("top_k", f"must be >= 0 (0 returns every passage), got {top_k}")
        ids = list(request.ids)  # optional: part of the score cache's key (services/reranker/score_cache.py)
        if ids and len(ids) != len(passages):
            raise InvalidArgument("ids", f"give one id per passage ({len(passages)}) or none, got {len(ids)}")
        for i, doc_id in enumerate(ids):
            if len(doc_id.encode("utf-8", "surrogatepass")) > validation.MAX_ID_BYTES:
                raise InvalidArgument(f"ids[{i}]", f"is longer than {validation.MAX_ID_BYTES} bytes")
        scores = await self.reranker.score(query, passages, ids)
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
        # Inference threads are sized in start(), once the execution provider is known.
        self.inference_executor: ThreadPoolExecutor | None = None
        self.tokenize_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tokenize")
        self.servicer = RerankServicer()
        self.batcher: DynamicBatcher | PerRequestScorer | None = None

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_RerankServiceServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        from services.common.hardware import available_cpus, batching_for, cpu_layout
        from services.reranker.cross_encoder import CrossEncoder

        cfg = self.config
        loop = asyncio.get_running_loop()
        cpus = available_cpus()
        workers, threads = cpu_layout(cfg.inference_workers, cfg.intra_op_threads, cpus)
        encoder = await loop.run_in_executor(self.tokenize_executor, CrossEncoder.from_config, cfg, threads)
        metrics.RERANK_PROVIDER_INFO.info({"provider": encoder.provider, "model": encoder.name})
        workers, prefetch, max_tokens = batching_for(encoder.provider, workers, cfg.inference_workers, cfg.max_batch_tokens)
        self.inference_executor = ThreadPoolExecutor(max_workers=workers + prefetch, thread_name_prefix="inference")
        if cfg.batching == "dynamic":
            self.batcher = DynamicBatcher(
                # Per-request batch.queue_wait / batch.inference spans when tracing is on.
                tracing.traced_batch(encoder.infer, tokens=lambda b: len(b) * max(len(e.ids) for e in b),
                                     **{"onnx.provider": encoder.provider, "model": encoder.name}),
                lambda encoding: len(encoding.ids),
                self.inference_executor,
                max_batch_items=cfg.max_batch_pairs,
                max_batch_tokens=max_tokens,
                max_wait_s=cfg.max_wait_ms / 1000.0,
                max_queue_items=cfg.max_queue_pairs,
                workers=workers,
                prefetch=prefetch,
                metrics=RerankMetrics(),
                **QUEUE_NAMES,
            )
        else:
            self.batcher = PerRequestScorer(encoder, self.inference_executor, cfg.max_queue_pairs, RerankMetrics())
        reranker = Reranker(encoder, self.batcher, self.tokenize_executor)
        # Warm up before reporting SERVING: batches at the full sequence length allocate
        # the buffers (and, on a GPU, load the kernels) the first caller would otherwise wait for.
        await reranker.score("warmup query", ["warmup " * encoder.max_length] * max(workers, min(cfg.max_batch_pairs, 8)))
        await reranker.score("warmup query", ["warmup"])
        # Scores cached by (model identity, query, document id, content hash): services/reranker/score_cache.py.
        self.servicer.reranker = CachedReranker(reranker, cfg.score_cache_size)
        log.info(
            "reranker ready",
            extra={"model": encoder.name, "provider": encoder.provider, "max_length": encoder.max_length,
                   "batching": cfg.batching, "max_batch_pairs": cfg.max_batch_pairs, "max_batch_tokens": max_tokens,
                   "inference_workers": workers, "intra_op_threads": threads, "prefetch": prefetch, "cpus": cpus},
        )

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        if self.inference_executor is not None:
            self.inference_executor.shutdown(wait=True, cancel_futures=True)
        self.tokenize_executor.shutdown(wait=True, cancel_futures=True)
