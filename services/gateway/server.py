"""The gateway's transport: SearchService over gRPC, fanning out to retrieval and reranker."""

from __future__ import annotations

import logging

import grpc

from search.v1 import retrieval_service_pb2 as rpb, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.common import validation
from services.gateway import clients
from services.gateway.config import GatewayConfig
from services.gateway.pipeline import Budget, RerankDefaults, SearchPipeline, budget_for

log = logging.getLogger(__name__)


class SearchServicer(pb_grpc.SearchServiceServicer):
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.retrieval = clients.retrieval(config.retrieval_addr)
        self.reranker = clients.reranker(config.reranker_addr)
        self.pipeline = SearchPipeline(
            self.retrieval,
            self.reranker,
            defaults=RerankDefaults(candidates=config.default_candidates),
            retrieval_timeout_s=config.retrieval_timeout_seconds,
            rerank_timeout_s=config.rerank_timeout_seconds,
        )

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        return await self.pipeline.search(request, budget_for(context, self.config.default_deadline_seconds))

    async def Upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.UpsertResponse:
        collection = validation.collection_name(request.collection)
        validation.documents(request.documents)  # the whole request is valid before anything is written
        budget = budget_for(context, self.config.write_timeout_seconds * 4)
        size = self.config.upsert_batch_size
        docs = list(request.documents)
        written = 0
        for start in range(0, len(docs), size):
            reply = await self.retrieval.call(
                "Upsert",
                rpb.RetrievalServiceUpsertRequest(collection=collection, documents=docs[start : start + size]),
                budget.for_hop(self.config.write_timeout_seconds),
            )
            written += reply.upserted
        return pb.UpsertResponse(upserted=written)

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        collection = validation.collection_name(request.collection)
        ids = validation.ids(request.ids)
        budget = budget_for(context, self.config.write_timeout_seconds * 4)
        size = self.config.upsert_batch_size * 4
        deleted = 0
        for start in range(0, len(ids), size):
            reply = await self.retrieval.call(
                "Delete",
                rpb.RetrievalServiceDeleteRequest(collection=collection, ids=ids[start : start + size]),
                budget.for_hop(self.config.write_timeout_seconds),
            )
            deleted += reply.deleted
        return pb.DeleteResponse(deleted=deleted)

    async def CreateCollection(self, request, context):
        reply = await self.retrieval.call(
            "CreateCollection",
            rpb.RetrievalServiceCreateCollectionRequest(
                name=validation.collection_name(request.name, "name"),
                filter_fields=request.filter_fields,
                sparse=request.sparse if request.HasField("sparse") else True,
            ),
            budget_for(context, self.config.write_timeout_seconds).for_hop(self.config.write_timeout_seconds),
        )
        return pb.CreateCollectionResponse(collection=reply.collection)

    async def DescribeCollection(self, request, context):
        reply = await self.retrieval.call(
            "DescribeCollection",
            rpb.RetrievalServiceDescribeCollectionRequest(name=validation.collection_name(request.name, "name")),
            budget_for(context, self.config.retrieval_timeout_seconds).for_hop(self.config.retrieval_timeout_seconds),
        )
        return pb.DescribeCollectionResponse(collection=reply.collection)


class GatewayService:
    name = "gateway"
    grpc_service_names = (pb.DESCRIPTOR.services_by_name["SearchService"].full_name,)

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.servicer: SearchServicer | None = None

    def register(self, server: grpc.aio.Server) -> None:
        self.servicer = SearchServicer(self.config)
        pb_grpc.add_SearchServiceServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        log.info(
            "gateway ready",
            extra={"retrieval": self.config.retrieval_addr, "reranker": self.config.reranker_addr},
        )

    async def stop(self) -> None:
        if self.servicer is not None:
            await self.servicer.retrieval.close()
            await self.servicer.reranker.close()


__all__ = ["GatewayService", "SearchServicer", "Budget"]
