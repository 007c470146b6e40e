"""A Search, top to bottom: validate -> retrieve candidates -> rerank -> combine -> respond.

Deadlines: the caller's deadline (or the configured default) bounds the whole request.
Each hop gets an explicit timeout from what remains (capped per hop), minus a reserve to
answer in; retrieval and rerank calls are retried within it (resilience.py).
Degradation: if reranking fails, runs out of its share of time, is shed by an overloaded
reranker, or the reranker's circuit breaker is open, the response carries the retrieval
ranking with ``degraded`` set and the reason, rather than an error. A retrieval failure
is never hidden: it is the request's error (UNAVAILABLE naming the service).
"""

from __future__ import annotations

import logging
from dataclasses import KW_ONLY, dataclass, field

import grpc

from search.v1 import (
    rerank_service_pb2,
    retrieval_service_pb2,
    search_service_pb2 as pb,
)
from services.common import api_names, metrics, tracing, validation
from services.common.errors import DeadlineExceeded, InvalidArgument, ServiceError
from services.gateway import cascade, paging, score_combination
from services.gateway.clients import ANSWER_RESERVE_S, Budget, Downstream
from services.gateway import result_cache
from services.gateway.resilience import CircuitBreaker

log = logging.getLogger(__name__)

#: The longest deadline honoured; a caller's longer (or absent) deadline is cut to this.
MAX_DEADLINE_S = 3600.0
#: Score combination enum -> the name score_combination.py uses (one map, services/common/api_names.py).
COMBINATIONS = api_names.SCORE_COMBINATIONS
#: Reranker outcomes that say it is unhealthy (they count toward opening the breaker).
#: RESOURCE_EXHAUSTED (shed, answered at once) and the caller's own mistakes do not.
BREAKER_FAILURES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


@dataclass(frozen=True)
class RerankDefaults:
    """What a Search reranks when the request does not say. No defaults here: their one home
    is the gateway's settings (GATEWAY_DEFAULT_CANDIDATES, GATEWAY_SCORE_COMBINATION,
    GATEWAY_RERANK_WEIGHT in services/gateway/config.py, which also bounds them), chosen on SciFact train
    (docs/QUALITY.md)."""

    candidates: int
    combination: str
    rerank_weight: float



def budget_for(
    context: grpc.aio.ServicerContext, default_s: float, reserve_s: float = ANSWER_RESERVE_S
) -> Budget:
    """The request's budget: the caller's deadline, or ``default_s`` when it set none."""
    remaining = context.time_remaining()
    return Budget(default_s if remaining is None else min(remaining, MAX_DEADLINE_S), reserve_s)


def rerank_text(title: str, text: str) -> str:
    """The passage the cross-encoder reads; cut to the reranker's limit (it truncates to
    RERANKER_MAX_LENGTH tokens anyway, far fewer than this many characters)."""
    return validation.document_text(title, text)[: validation.MAX_PASSAGE_CHARS]


@dataclass(eq=False)
class SearchPipeline:
    retrieval: Downstream
    reranker: Downstream
    _: KW_ONLY
    defaults: RerankDefaults
    cascade_settings: cascade.CascadeSettings
    retrieval_timeout_s: float
    rerank_timeout_s: float
    breaker: CircuitBreaker = field(default_factory=lambda: CircuitBreaker("reranker"))
    #: Near-tie (auto_uncertain) reranks in flight now; the event loop is one thread, so the
    #: check in cascade.admit and the increment below happen with no await between them.
    auto_in_flight: int = field(default=0, init=False)

    def _options(self, request: pb.SearchRequest) -> tuple[str, int, str, float]:
        """(policy, candidates, combination, weight): with ``auto`` the candidates are the deepest
        the policy may rerank (the request's cap, else GATEWAY_AUTO_RERANK_DEPTH)."""
        opts = request.rerank
        if opts.policy and opts.policy not in api_names.RERANK_POLICIES:
            raise InvalidArgument("rerank.policy", f"unknown rerank policy {opts.policy}; one of "
                                  f"{', '.join(sorted(api_names.RERANK_POLICY_ENUM))} (or unset for the server default)")
        policy = api_names.RERANK_POLICIES.get(opts.policy, self.cascade_settings.policy)
        if opts.HasField("enabled") and not opts.enabled:
            if opts.policy and policy != "never":
                raise InvalidArgument("rerank.enabled", f"enabled=false contradicts policy {policy}; send one of them")
            policy = "never"
        if opts.HasField("candidates"):
            candidates = opts.candidates
        else:
            candidates = self.cascade_settings.auto_depth if policy == "auto" else self.defaults.candidates
        validation.bounded_int(candidates, "rerank.candidates", 1, validation.MAX_CANDIDATES)
        if opts.combination and opts.combination not in COMBINATIONS:
            raise InvalidArgument("rerank.combination", f"unknown score combination {opts.combination}")
        combination = COMBINATIONS.get(opts.combination, self.defaults.combination)
        weight = opts.rerank_weight if opts.HasField("rerank_weight") else self.defaults.rerank_weight
        validation.unit_interval(weight, "rerank.rerank_weight")
        return policy, candidates, combination, weight

    async def search(self, request: pb.SearchRequest, budget: Budget) -> pb.SearchResponse:
        collection = validation.collection_name(request.collection)
        query = validation.query_text(request.query)
        top_k = validation.top_k(request.top_k)
        page = paging.parse(request, top_k)
        depth = page.depth(top_k)  # this page is cut from the first `depth` results (paging.py)
        validation.retrieval_mode(request.mode)
        validation.fusion_options(request.fusion)
        validation.payload_filter(request.filter)
        policy, candidates, combination, weight = self._options(request)
        limit = depth + 1  # one more: is there a next page?
        if policy == "always":
            limit = max(limit, candidates)
        elif policy == "auto":  # a collection with a weak list is reranked as with always
            limit = max(limit, candidates, request.rerank.candidates or self.defaults.candidates)

        retrieved = await self.retrieval.call(
            "Retrieve",
            retrieval_service_pb2.RetrieveRequest(
                collection=page.collection or collection, query=query, limit=limit, filter=request.filter, mode=request.mode,
                fusion=request.fusion,
            ),
            budget,
            self.retrieval_timeout_s,
            idempotent=True,
            **result_cache.retrieve_options(),
        )
        if result_cache.answered_from_cache():  # the held answer is current: the result cache serves it
            return pb.SearchResponse()
        found = list(retrieved.candidates)
        metrics.GATEWAY_CANDIDATES.observe(len(found))
        decision = cascade.decide(policy, candidates, [c.score for c in found], self.cascade_settings, retrieved.one_list_weak,
                                  always_depth=request.rerank.candidates or self.defaults.candidates)
        decision = cascade.admit(decision, self.auto_in_flight, self.cascade_settings)
        metrics.GATEWAY_RERANK_DECISIONS.labels(policy=decision.policy, reason=decision.reason).inc()
        tracing.set_attributes(**{"search.collection": collection, "search.top_k": top_k, "search.candidates": len(found),
                                  "search.rerank": decision.depth > 0, "search.rerank_policy": decision.policy,
                                  "search.rerank_reason": decision.reason, "search.rerank_signal": decision.signal,
                                  "search.rerank_candidates": decision.depth or None})
        response = pb.SearchResponse(mode=retrieved.mode, collection=retrieved.collection or collection,
                                     rerank_decision=_decision(decision))
        more = len(found) > depth
        if not decision.depth:
            response.results.extend(_result(c, c.score) for c in found[:depth])
            return _page(request, response, page, top_k, more)

        to_rerank = found[:decision.depth]
        near_tie = decision.reason == cascade.AUTO_UNCERTAIN
        self.auto_in_flight += near_tie
        try:
            reranked = await self._rerank(query, to_rerank, budget)
        finally:
            self.auto_in_flight -= near_tie
        if isinstance(reranked, int):  # a DegradedReason
            self._degrade(response, reranked)
            response.results.extend(_result(c, c.score) for c in found[:depth])
            return _page(request, response, page, top_k, more)

        rerank_scores = [0.0] * len(to_rerank)
        for r in reranked.results:
            rerank_scores[r.index] = r.score
        with tracing.span("combine", **{"combine.method": combination, "combine.candidates": len(to_rerank)}):
            final = score_combination.combine_scores([c.score for c in to_rerank], rerank_scores, combination, weight)
        order = sorted(range(len(to_rerank)), key=lambda i: (-final[i], i))[:depth]
        response.reranked = True
        response.results.extend(_result(to_rerank[i], final[i], rerank_scores[i]) for i in order)
        # Asked for more than were reranked: the rest follow in first-stage order, scored
        # below every reranked result so `score` stays monotonic.
        floor = min(final) if final else 0.0
        for n, candidate in enumerate(found[len(to_rerank) : len(to_rerank) + depth - len(order)], 1):
            response.results.append(_result(candidate, floor - n * 1e-3))
        return _page(request, response, page, top_k, more)

    async def _rerank(
        self, query: str, candidates: list[retrieval_service_pb2.Candidate], budget: Budget
    ) -> rerank_service_pb2.RerankResponse | int:
        """The reranker's answer, or the DegradedReason why there is none."""
        if not self.breaker.allow():
            return pb.DEGRADED_REASON_RERANKER_CIRCUIT_OPEN
        request = rerank_service_pb2.RerankRequest(query=query, passages=[rerank_text(c.title, c.text) for c in candidates],
                                                   ids=[c.id for c in candidates])
        try:
            reranked = await self.reranker.call("Rerank", request, budget, self.rerank_timeout_s, idempotent=True)
        except ServiceError as exc:
            if exc.downstream_code in BREAKER_FAILURES:
                self.breaker.failure()
            else:
                self.breaker.neutral()
            reason = _degraded_reason(exc)
            log.warning(
                "reranking failed; serving the retrieval ranking",
                extra={"reason": pb.DegradedReason.Name(reason), "error": exc.message},
            )
            return reason
        except BaseException:  # cancelled by the caller: says nothing about the reranker
            self.breaker.neutral()
            raise
        self.breaker.success()
        return reranked

    @staticmethod
    def _degrade(response: pb.SearchResponse, reason: int) -> None:
        metrics.GATEWAY_DEGRADED.labels(reason=pb.DegradedReason.Name(reason)).inc()
        tracing.set_attributes(**{"search.degraded_reason": pb.DegradedReason.Name(reason)})
        response.degraded = True
        response.degraded_reason = reason


def _decision(decision: cascade.Decision) -> pb.RerankDecision:
    return pb.RerankDecision(policy=api_names.RERANK_POLICY_ENUM[decision.policy], depth=decision.depth,
                             reason=api_names.RERANK_REASON_ENUM[decision.reason], signal=decision.signal)


def _degraded_reason(exc: ServiceError) -> int:
    code = exc.downstream_code
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or (code is None and isinstance(exc, DeadlineExceeded)):
        return pb.DEGRADED_REASON_RERANKER_TIMEOUT
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return pb.DEGRADED_REASON_RERANKER_OVERLOADED
    return pb.DEGRADED_REASON_RERANKER_ERROR


def _page(request: pb.SearchRequest, response: pb.SearchResponse, page: paging.Page, top_k: int,
          more: bool) -> pb.SearchResponse:
    """Keep this page's results of the ranking in ``response``, and the next page's token."""
    ranked = list(response.results)
    returned = page.cut(ranked, top_k)
    del response.results[:]
    response.results.extend(returned)
    response.next_page_token = page.next_token(request, response.collection, ranked, returned, more, top_k)
    return response


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


