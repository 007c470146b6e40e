"""The gateway's transport: SearchService over gRPC, fanning out to retrieval and reranker."""

from __future__ import annotations

import asyncio
import logging

import grpc

from search.v1 import retrieval_service_pb2 as rpb, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.common import validation
from services.common import metrics
from services.common.security import SecurityConfig, load_security, resolve_internal_token
from services.gateway import clients
from services.gateway.access import AliasDirectory
from services.gateway.admission import FairShare, RateLimits
from services.gateway.callers import CallerBook, CallersSource, announce
from services.gateway.collections import CollectionsMixin
from services.gateway.config import GatewayConfig
from services.gateway.cascade import CascadeSettings
from services.gateway.guard import CallerInterceptor
from services.gateway.pipeline import Budget, RerankDefaults, SearchPipeline, budget_for
from services.gateway.result_cache import SearchResultCache
from services.gateway.resilience import CircuitBreaker, RetryBudget, RetryPolicy

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
            cascade_settings=CascadeSettings(config.rerank_policy, config.auto_rerank_depth, config.auto_rerank_max_gap,
                                             config.auto_rerank_max_in_flight),
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
        # Read at construction: a bad or missing callers file stops start-up (never auth silently off).
        self.callers = CallersSource(config.api_keys_file, config.api_keys)
        self.callers.listeners.append(self._reloaded)
        self.limits = RateLimits()
        self.share = FairShare(config.max_in_flight)
        self.aliases = AliasDirectory(self._fetch_aliases)
        self.servicer: SearchServicer | None = None
        self._watch: asyncio.Task | None = None

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Who is calling, may they, may they now (services/gateway/guard.py): one interceptor."""
        return [CallerInterceptor(self.callers, self.limits, self.share, self.aliases, self.grpc_service_names,
                                  peer_identity=self.security.server_mtls,
                                  trust_forwarded=self.config.trust_forwarded_client_cert)]

    def register(self, server: grpc.aio.Server) -> None:
        self.servicer = SearchServicer(self.config, self.security)
        pb_grpc.add_SearchServiceServicer_to_server(self.servicer, server)

    async def _fetch_aliases(self) -> dict[str, str]:
        timeout = self.config.retrieval_timeout_seconds
        reply = await self.servicer.retrieval.call("ListAliases", rpb.RetrievalServiceListAliasesRequest(),
                                                   Budget(timeout), timeout, idempotent=True)
        return {a.alias: a.collection for a in reply.aliases}

    def _reloaded(self, book: CallerBook | None) -> None:
        metrics.GATEWAY_CALLERS_RELOADS.labels(outcome="ok" if book is not None else "error").inc()
        if book is not None:
            self.limits.update(book)

    def reload(self) -> None:
        """SIGHUP: load GATEWAY_API_KEYS_FILE again (a bad file keeps the rules in force)."""
        self.callers.reload()

    async def start(self) -> None:
        book = self.callers.book
        if book.enabled and not resolve_internal_token(self.security) and not self.security.client_cert_file:
            log.warning(
                "API keys are required here, but retrieval and reranker get no credential from the gateway "
                "(neither INTERNAL_TOKEN nor TLS_CLIENT_CERT_FILE is set): whoever reaches their ports bypasses "
                "the keys unless the network closes them (docs/RELIABILITY.md, Security)"
            )
        announce(book)
        if self.config.api_keys_file and self.config.api_keys_reload_seconds > 0:
            self._watch = asyncio.ensure_future(self.callers.watch(self.config.api_keys_reload_seconds))
        log.info(
            "gateway ready",
            extra={
                "retrieval": self.config.retrieval_addr,
                "reranker": self.config.reranker_addr,
                "callers": len(book.callers),
                "api_keys": book.key_count,
                "max_in_flight": self.config.max_in_flight,
                **self.security.describe(),
            },
        )

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.servicer is not None:
            await self.servicer.retrieval.close()
            await self.servicer.reranker.close()


__all__ = ["GatewayService", "SearchServicer", "Budget"]
