"""The gateway's transport: SearchService over gRPC, fanning out to retrieval and reranker."""

from __future__ import annotations

import logging

import grpc

from search.v1 import retrieval_service_pb2 as rpb, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.common import validation
from services.common.security import (
    ApiKeyInterceptor,
    SecurityConfig,
    load_api_keys,
    load_security,
    resolve_internal_token,
)
from services.gateway import clients
from services.gateway.collections import CollectionsMixin
from services.gateway.config import GatewayConfig
from services.gateway.pipeline import Budget, RerankDefaults, SearchPipeline, budget_for
from services.gateway.result_cache import SearchResultCache
from services.gateway.resilience import (
    CircuitBreaker,
    InFlightLimiter,
    InFlightLimitInterceptor,
    RetryBudget,
    RetryPolicy,
)

log = logging.getLogger(__name__)

SEARCH_SERVICE = pb.DESCRIPTOR.services_by_name["SearchService"].full_name


class SearchServicer(CollectionsMixin, pb_grpc.SearchServiceServicer):
    def __init__(self, config: GatewayConfig, security: SecurityConfig | None = None) -> None:
        self.config = config
        policy = RetryPolicy(
            max_attempts=max(1, config.retry_max_attempts),
            initial_backoff_s=config.retry_initial_backoff_seconds,
            max_backoff_s=config.retry_max_backoff_seconds,
        )

        def retry_budget(target: str) -> RetryBudget:  # one per downstream: one's outage must not spend the other's
            return RetryBudget(
                ratio=config.retry_budget_ratio, min_per_second=config.retry_budget_min_per_second, target=target
            )

        self.retrieval = clients.retrieval(
            config.retrieval_addr, security, retry_policy=policy, retry_budget=retry_budget("retrieval")
        )
        self.reranker = clients.reranker(
            config.reranker_addr, security, retry_policy=policy, retry_budget=retry_budget("reranker")
        )
        self.breaker = CircuitBreaker("reranker", config.breaker_failures, config.breaker_cooldown_seconds)
        self.pipeline = SearchPipeline(
            self.retrieval,
            self.reranker,
            defaults=RerankDefaults(
                candidates=config.default_candidates,
                combination=config.score_combination,
                rerank_weight=config.rerank_weight,
            ),
            retrieval_timeout_s=config.retrieval_timeout_seconds,
            rerank_timeout_s=config.rerank_timeout_seconds,
            breaker=self.breaker,
        )
        # Search responses, valid while retrieval reports the collection unchanged (result_cache.py).
        self.results = SearchResultCache(config.result_cache_size, int(config.result_cache_mb * 1024 * 1024))

    def _budget(self, context: grpc.aio.ServicerContext, default_s: float) -> Budget:
        return budget_for(context, default_s, self.config.answer_reserve_seconds)

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        budget = self._budget(context, self.config.default_deadline_seconds)
        return await self.results.search(self.pipeline.search, request, budget)

    async def Upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.UpsertResponse:
        collection = validation.collection_name(request.collection)
        validation.documents(request.documents)  # the whole request is valid before anything is written
        budget = self._budget(context, self.config.write_timeout_seconds * 4)
        written = await self._upsert_batches(collection, list(request.documents), budget)
        return pb.UpsertResponse(upserted=written)

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        collection = validation.collection_name(request.collection)
        ids = validation.ids(request.ids)
        budget = self._budget(context, self.config.write_timeout_seconds * 4)
        size = self.config.upsert_batch_size * 4
        deleted = 0
        for start in range(0, len(ids), size):
            # Deleting by id is idempotent; a retry after a lost reply may count fewer deletions.
            reply = await self.retrieval.call(
                "Delete",
                rpb.RetrievalServiceDeleteRequest(collection=collection, ids=ids[start : start + size]),
                budget,
                self.config.write_timeout_seconds,
                idempotent=True,
            )
            deleted += reply.deleted
        return pb.DeleteResponse(deleted=deleted)

    async def CreateCollection(self, request, context):
        name = validation.collection_name(request.name, "name")
        validation.filter_fields(request.filter_fields)
        # Not retried: a create whose reply was lost would come back ALREADY_EXISTS.
        reply = await self.retrieval.call(
            "CreateCollection",
            rpb.RetrievalServiceCreateCollectionRequest(
                name=name,
                filter_fields=request.filter_fields,
                sparse=request.sparse if request.HasField("sparse") else True,
                late_interaction=request.late_interaction if request.HasField("late_interaction") else None,
            ),
            self._budget(context, self.config.write_timeout_seconds),
            self.config.write_timeout_seconds,
        )
        return pb.CreateCollectionResponse(collection=reply.collection)

    async def DescribeCollection(self, request, context):
        reply = await self.retrieval.call(
            "DescribeCollection",
            rpb.RetrievalServiceDescribeCollectionRequest(name=validation.collection_name(request.name, "name")),
            self._budget(context, self.config.retrieval_timeout_seconds),
            self.config.retrieval_timeout_seconds,
            idempotent=True,
        )
        return pb.DescribeCollectionResponse(collection=reply.collection)


class GatewayService:
    name = "gateway"
    grpc_service_names = (SEARCH_SERVICE,)
    edge = True  # callers are outside the platform: API keys here; INTERNAL_TOKEN is sent downstream, not required

    def __init__(self, config: GatewayConfig, security: SecurityConfig | None = None) -> None:
        self.config = config
        self.security = security if security is not None else load_security()
        # Read at construction: a missing or empty key file stops start-up (never auth silently off).
        self.api_keys = load_api_keys(config.api_keys_file, config.api_keys)
        self.limiter = InFlightLimiter(config.max_in_flight)
        self.servicer: SearchServicer | None = None

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Auth first (an unauthenticated call takes no in-flight slot), then the in-flight cap."""
        chain: list[grpc.aio.ServerInterceptor] = []
        if self.api_keys:
            chain.append(ApiKeyInterceptor(self.api_keys))
        chain.append(InFlightLimitInterceptor(self.limiter, self.grpc_service_names))
        return chain

    def register(self, server: grpc.aio.Server) -> None:
        self.servicer = SearchServicer(self.config, self.security)
        pb_grpc.add_SearchServiceServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        if self.api_keys and not resolve_internal_token(self.security) and not self.security.client_cert_file:
            log.warning(
                "API keys are required here, but retrieval and reranker get no credential from the gateway "
                "(neither INTERNAL_TOKEN nor TLS_CLIENT_CERT_FILE is set): whoever reaches their ports bypasses "
                "the keys unless the network closes them (docs/RELIABILITY.md, Security)"
            )
        log.info(
            "gateway ready",
            extra={
                "retrieval": self.config.retrieval_addr,
                "reranker": self.config.reranker_addr,
                "api_keys": len(self.api_keys),
                "max_in_flight": self.config.max_in_flight,
                **self.security.describe(),
            },
        )

    async def stop(self) -> None:
        if self.servicer is not None:
            await self.servicer.retrieval.close()
            await self.servicer.reranker.close()


__all__ = ["GatewayService", "SearchServicer", "Budget"]
