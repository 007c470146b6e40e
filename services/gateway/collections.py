"""SearchService's operations on collections: list, delete, documents by id, aliases, the
streamed ingest, reindex and snapshots. Validated here, done by the retrieval service.

Mixed into :class:`services.gateway.server.SearchServicer`, which provides ``retrieval`` (the
downstream client), ``config`` and ``_budget``.

Ingest: services/gateway/ingest.py (each message one batch, acknowledged once durable). A
stream into a collection that does not exist creates it, for a caller with the ``admin`` scope
only (access.py).

Streams to and from retrieval (reindex progress, snapshots) are relayed message by message,
bounded by the caller's deadline (none: no bound).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format

from search.v1 import retrieval_service_pb2 as rpb, search_service_pb2 as pb
from services.common import api_names, payload_types, streams, validation
from services.common.errors import InvalidArgument, NotFound
from services.gateway import access
from services.gateway.clients import Budget, downstream_error
from services.gateway.ingest import IngestStream

INGEST_METHOD = f"/{pb.DESCRIPTOR.services_by_name['SearchService'].full_name}/Ingest"
_DOCUMENT_FIELD = re.compile(r"^documents\[(\d+)\]")


def _declared(info: Any) -> dict[str, str]:
    return {f.key: api_names.FIELD_TYPES[f.type] for f in info.filter_fields if f.type in api_names.FIELD_TYPES}


def _shifted(exc: InvalidArgument, offset: int) -> InvalidArgument:
    """``exc`` with its ``documents[i]`` field renumbered ``documents[i + offset]``."""
    match = _DOCUMENT_FIELD.match(exc.field)
    if not match or not offset:
        return exc
    shifted = InvalidArgument(f"documents[{int(match.group(1)) + offset}]{exc.field[match.end():]}", exc.description)
    shifted.downstream_code = exc.downstream_code
    return shifted


def _as(message: Any, cls: type) -> Any:
    """``message`` as ``cls``: the gateway's and retrieval's messages have the same fields."""
    return cls.FromString(message.SerializeToString())


class CollectionsMixin:
    retrieval: Any
    config: Any

    def _budget(self, context, default_s: float) -> Budget: ...  # provided by SearchServicer

    async def _unary(self, method: str, request: Any, context, reply_cls: type, *, idempotent: bool, write: bool = False):
        cap = self.config.write_timeout_seconds if write else self.config.retrieval_timeout_seconds
        reply = await self.retrieval.call(method, request, self._budget(context, cap), cap, idempotent=idempotent)
        return _as(reply, reply_cls)

    async def ListCollections(self, request, context):
        return await self._unary("ListCollections", rpb.RetrievalServiceListCollectionsRequest(), context,
                                 pb.ListCollectionsResponse, idempotent=True)

    async def DeleteCollection(self, request, context):
        name = validation.collection_name(request.name, "name")
        # Not retried: a delete whose reply was lost would come back NOT_FOUND.
        return await self._unary("DeleteCollection", rpb.RetrievalServiceDeleteCollectionRequest(name=name), context,
                                 pb.DeleteCollectionResponse, idempotent=False, write=True)

    async def GetDocuments(self, request, context):
        collection = validation.collection_name(request.collection)
        ids = validation.ids(request.ids)
        return await self._unary("GetDocuments", rpb.RetrievalServiceGetDocumentsRequest(collection=collection, ids=ids),
                                 context, pb.GetDocumentsResponse, idempotent=True)

    async def CreateAlias(self, request, context):
        alias = validation.collection_name(request.alias, "alias")
        collection = validation.collection_name(request.collection)
        return await self._unary("CreateAlias", rpb.RetrievalServiceCreateAliasRequest(alias=alias, collection=collection),
                                 context, pb.CreateAliasResponse, idempotent=False, write=True)

    async def SwitchAlias(self, request, context):
        alias = validation.collection_name(request.alias, "alias")
        collection = validation.collection_name(request.collection)
        if request.expected_collection:
            validation.collection_name(request.expected_collection, "expected_collection")
        # Idempotent: switching again to the same collection changes nothing.
        return await self._unary("SwitchAlias", rpb.RetrievalServiceSwitchAliasRequest(
            alias=alias, collection=collection, expected_collection=request.expected_collection),
            context, pb.SwitchAliasResponse, idempotent=not request.expected_collection, write=True)

    async def DeleteAlias(self, request, context):
        alias = validation.collection_name(request.alias, "alias")
        return await self._unary("DeleteAlias", rpb.RetrievalServiceDeleteAliasRequest(alias=alias), context,
                                 pb.DeleteAliasResponse, idempotent=False, write=True)

    async def ListAliases(self, request, context):
        return await self._unary("ListAliases", rpb.RetrievalServiceListAliasesRequest(), context,
                                 pb.ListAliasesResponse, idempotent=True)

    # -- streams ----------------------------------------------------------------------

    async def Ingest(self, request_iterator, context) -> AsyncIterator[pb.IngestResponse]:
        # The stream's protocol, and how it ends when it fails: services/gateway/ingest.py.
        stream = IngestStream(self._ensure_collection, self._ingest_batch, self.config.ingest_window, INGEST_METHOD)
        async for reply in stream.run(request_iterator):
            yield reply

    async def _ingest_batch(self, collection: str, docs: list) -> int:
        return await self._upsert_batches(collection, docs, Budget(self.config.write_timeout_seconds * 4))

    async def _ensure_collection(self, collection: str) -> None:
        budget = Budget(self.config.write_timeout_seconds)
        try:
            await self.retrieval.call("DescribeCollection", rpb.RetrievalServiceDescribeCollectionRequest(name=collection),
                                      budget, self.config.retrieval_timeout_seconds, idempotent=True)
            return
        except NotFound:
            access.require_admin_to_create(collection)  # creating a collection is an admin call
        try:
            await self.retrieval.call("CreateCollection", rpb.RetrievalServiceCreateCollectionRequest(name=collection, sparse=True),
                                      budget, self.config.write_timeout_seconds)
        except Exception as exc:  # noqa: BLE001 - created concurrently is fine
            if getattr(exc, "downstream_code", None) != grpc.StatusCode.ALREADY_EXISTS:
                raise

    async def _upsert_batches(self, collection: str, docs: list, budget: Budget) -> int:
        """Write validated ``docs`` to retrieval in GATEWAY_UPSERT_BATCH_SIZE slices; a refusal
        names the document by its index in ``docs``, not in the slice."""
        size = self.config.upsert_batch_size
        if len(docs) > size:  # retrieval checks each batch; a later one refused would leave the first written
            await self._check_declared_types(collection, docs, budget)
        written = 0
        for start in range(0, len(docs), size):
            try:
                reply = await self.retrieval.call(  # idempotent (point ids derive from document ids): retried
                    "Upsert", rpb.RetrievalServiceUpsertRequest(collection=collection, documents=docs[start : start + size]),
                    budget, self.config.write_timeout_seconds, idempotent=True)
            except InvalidArgument as exc:
                raise _shifted(exc, start) from exc
            written += reply.upserted
        return written

    async def _check_declared_types(self, collection: str, docs: list, budget: Budget) -> None:
        """Refuse ``docs`` before any batch is written when a payload holds another type than its
        collection declares for filtering (services/common/payload_types.py)."""
        reply = await self.retrieval.call("DescribeCollection", rpb.RetrievalServiceDescribeCollectionRequest(name=collection),
                                          budget, self.config.retrieval_timeout_seconds, idempotent=True)
        declared = _declared(reply.collection)
        if declared:
            payload_types.check(reply.collection.name, declared,
                                [json_format.MessageToDict(doc.payload) for doc in docs])

    async def _relay(self, method: str, call, reply_cls: type) -> AsyncIterator[Any]:
        try:
            async for message in call:
                yield _as(message, reply_cls)
        except grpc.aio.AioRpcError as exc:
            raise downstream_error("retrieval", method, exc, 0.0, deadline_bound=True) from exc

    async def Reindex(self, request, context):
        source = validation.collection_name(request.source, "source")
        if request.target:
            validation.collection_name(request.target, "target")
        validation.filter_fields(request.add_filter_fields, "add_filter_fields")
        call = self.retrieval.stub.Reindex(
            rpb.RetrievalServiceReindexRequest(source=source, target=request.target, reembed=request.reembed,
                                               add_filter_fields=request.add_filter_fields),
            timeout=context.time_remaining())
        async for message in self._relay("Reindex", call, pb.ReindexResponse):
            yield message

    async def ExportSnapshot(self, request, context):
        collection = validation.collection_name(request.collection)
        call = self.retrieval.stub.ExportSnapshot(rpb.RetrievalServiceExportSnapshotRequest(collection=collection),
                                                  timeout=context.time_remaining())
        async for message in self._relay("ExportSnapshot", call, pb.ExportSnapshotResponse):
            yield message

    async def RestoreSnapshot(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        try:
            if first is None or not first.HasField("header"):
                raise InvalidArgument("header", "the first message carries the target collection and the snapshot's header")
            validation.collection_name(first.collection)
        except InvalidArgument:
            await streams.drain(request_iterator)  # answered once the caller has finished writing
            raise

        async def forward():
            yield _as(first, rpb.RetrievalServiceRestoreSnapshotRequest)
            async for message in request_iterator:
                yield _as(message, rpb.RetrievalServiceRestoreSnapshotRequest)

        try:
            reply = await self.retrieval.stub.RestoreSnapshot(forward(), timeout=context.time_remaining())
        except grpc.aio.AioRpcError as exc:
            raise downstream_error("retrieval", "RestoreSnapshot", exc, 0.0, deadline_bound=True) from exc
        return _as(reply, pb.RestoreSnapshotResponse)
