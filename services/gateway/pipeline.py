"""A Search, top to bottom: validate -> retrieve candidates -> rerank -> combine -> respond.

Deadlines: the caller's deadline (or the configured default) bounds the whole request.
Each hop gets an explicit timeout from what remains, minus a reserve to answer in.
Degradation: if reranking fails or runs out of its share of time, the response carries
the retrieval ranking with ``degraded`` set and the reason, rather than an error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import grpc

from search.v1 import (
    rerank_service_pb2,
    retrieval_service_pb2,
    search_service_pb2 as pb,
)
from services.common import metrics, tracing, validation
from services.common.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, ServiceError
from services.gateway import combine
from services.gateway.clients import Downstream

log = logging.getLogger(__name__)

ANSWER_RESERVE_S = 0.02
COMBINATIONS = {
    pb.SCORE_COMBINATION_RERANK_ONLY: "rerank_only",
    pb.SCORE_COMBINATION_WEIGHTED_ZSCORE: "weighted_zscore",
    pb.SCORE_COMBINATION_WEIGHTED_RRF: "weighted_rrf",
}


@dataclass(frozen=True)
class RerankDefaults:
    """Defaults chosen by measurement on SciFact train queries (docs/QUALITY.md)."""

    candidates: int = 50
    combination: str = "weighted_zscore"
    rerank_weight: float = 0.5


class Budget:
    """What is left of a request's deadline."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def for_hop(self, cap: float) -> float:
        return min(cap, self.remaining() - ANSWER_RESERVE_S)


def budget_for(context: grpc.aio.ServicerContext, default_s: float) -> Budget:
    remaining = context.time_remaining()
    return Budget(default_s if remaining is None else min(remaining, 3600.0))


def rerank_text(title: str, text: str) -> str:
    return f"{title}\n{text}" if title else text


class SearchPipeline:
    def __init__(
        self,
        retrieval: Downstream,
        reranker: Downstream,
        *,
        defaults: RerankDefaults,
        retrieval_timeout_s: float,
        rerank_timeout_s: float,
    ) -> None:
        self.retrieval = retrieval
        self.reranker = reranker
        self.defaults = defaults
        self.retrieval_timeout_s = retrieval_timeout_s
        self.rerank_timeout_s = rerank_timeout_s

    def _options(self, request: pb.SearchRequest) -> tuple[bool, int, str, float]:
        opts = request.rerank
        enabled = opts.enabled if opts.HasField("enabled") else True
        candidates = opts.candidates if opts.HasField("candidates") else self.defaults.candidates
        validation.bounded_int(candidates, "rerank.candidates", 1, validation.MAX_CANDIDATES)
        if opts.combination and opts.combination not in COMBINATIONS:
            raise InvalidArgument("rerank.combination", f"unknown score combination {opts.combination}")
        combination = COMBINATIONS.get(opts.combination, self.defaults.combination)
        weight = opts.rerank_weight if opts.HasField("rerank_weight") else self.defaults.rerank_weight
        if not 0.0 <= weight <= 1.0:
            raise InvalidArgument("rerank.rerank_weight", f"must be between 0 and 1, got {weight}")
        return enabled, candidates, combination, weight

    async def search(self, request: pb.SearchRequest, budget: Budget) -> pb.SearchResponse:
        collection = validation.collection_name(request.collection)
        query = validation.query_text(request.query)
        top_k = validation.top_k(request.top_k)
        enabled, candidates, combination, weight = self._options(request)
        limit = max(top_k, candidates) if enabled else top_k

        retrieved = await self.retrieval.call(
            "Retrieve",
            retrieval_service_pb2.RetrieveRequest(
                collection=collection, query=query, limit=limit, filter=request.filter, mode=request.mode,
                fusion=request.fusion,
            ),
            budget.for_hop(self.retrieval_timeout_s),
        )
        found = list(retrieved.candidates)
        metrics.GATEWAY_CANDIDATES.observe(len(found))
        tracing.set_attributes(**{"search.collection": collection, "search.top_k": top_k, "search.candidates": len(found)})
        response = pb.SearchResponse(mode=retrieved.mode)
        if not enabled or not found:
            response.results.extend(_result(c, c.score) for c in found[:top_k])
            return response

        to_rerank = found[:candidates]
        try:
            reranked = await self.reranker.call(
                "Rerank",
                rerank_service_pb2.RerankRequest(query=query, passages=[rerank_text(c.title, c.text) for c in to_rerank]),
                budget.for_hop(self.rerank_timeout_s),
            )
        except ServiceError as exc:
            reason = _degraded_reason(exc)
            metrics.GATEWAY_DEGRADED.labels(reason=pb.DegradedReason.Name(reason)).inc()
            log.warning("reranking failed; serving the retrieval ranking", extra={"reason": pb.DegradedReason.Name(reason), "error": exc.message})
            response.degraded = True
            response.degraded_reason = reason
            response.results.extend(_result(c, c.score) for c in found[:top_k])
            return response

        rerank_scores = [0.0] * len(to_rerank)
        for r in reranked.results:
            rerank_scores[r.index] = r.score
        with tracing.span("combine", **{"combine.method": combination}):
            final = combine.combine_scores([c.score for c in to_rerank], rerank_scores, combination, weight)
        order = sorted(range(len(to_rerank)), key=lambda i: (-final[i], i))[:top_k]
        response.reranked = True
        response.results.extend(_result(to_rerank[i], final[i], rerank_scores[i]) for i in order)
        return response


def _degraded_reason(exc: ServiceError) -> int:
    if isinstance(exc, DeadlineExceeded):
        return pb.DEGRADED_REASON_RERANKER_TIMEOUT
    if isinstance(exc, ResourceExhausted):
        return pb.DEGRADED_REASON_RERANKER_OVERLOADED
    return pb.DEGRADED_REASON_RERANKER_ERROR


def _result(candidate: retrieval_service_pb2.Candidate, score: float, rerank_score: float | None = None) -> pb.SearchResult:
    return pb.SearchResult(
        id=candidate.id,
        score=score,
        retrieval_score=candidate.score,
        rerank_score=rerank_score,
        title=candidate.title,
        text=candidate.text,
        payload=candidate.payload,
    )


