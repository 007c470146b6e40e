"""The retrieval service's transport: RetrievalService over gRPC on the DocumentStore."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import grpc

from search.v1 import retrieval_service_pb2 as pb, retrieval_service_pb2_grpc as pb_grpc
from services.common import api_names, metrics, validation
from services.common.config import ConfigError
from services.common.errors import ServiceError, Unavailable
from services.common.status import status_message
from services.retrieval.config import RetrievalConfig
from services.retrieval.backends import BackendSettings, open_backend
from services.retrieval.backends.legacy_local import IMPORT_COMMAND, legacy_collections
from services.retrieval.calibration import FusionCalibrator
from services.retrieval.filters import to_filter
from services.retrieval.messages import collection_info, filter_fields, fusion_options, struct
from services.retrieval.operations import CollectionOperations, run_in
from services.retrieval.query_cache import CachedQueryEmbedder
from services.retrieval.conditional_retrieve import ConditionalRetrieveInterceptor
from services.retrieval.write_versions import VersionedBackend
from services.retrieval.store import DEFAULT_DENSE_WEIGHT, DocumentIn, DocumentStore, FirstStageSignals, LateInteraction

log = logging.getLogger(__name__)

def late_interaction_stage(cfg: RetrievalConfig, threads: int) -> LateInteraction | None:
    """The late-interaction stage the settings ask for, or None (model 'off' or absent)."""
    from services.common.model_dir import LATE_INTERACTION, default_models_dir
    from services.retrieval.late_interaction import LateInteractionEncoder, LazyEncoder

    if cfg.late_interaction_model_dir == "off":
        return None
    model_dir = cfg.late_interaction_model_dir or default_models_dir() / LATE_INTERACTION
    if not (Path(model_dir) / "model.onnx").is_file():
        if cfg.late_interaction_model_dir or cfg.late_interaction_default:
            raise ConfigError(f"late-interaction model not found in {model_dir}; run `searchctl models fetch` "
                              "or set RETRIEVAL_LATE_INTERACTION_MODEL_DIR=off")
        log.info("no late-interaction model in %s: collections without the stage only", model_dir)
        return None
    encoder = LazyEncoder(model_dir, partial(LateInteractionEncoder.from_config, cfg, model_dir, threads))
    return LateInteraction(encoder, candidates=cfg.late_interaction_candidates, weight=cfg.late_interaction_weight,
                           quantization=cfg.late_interaction_quantization, default_on=cfg.late_interaction_default)


def _uses_late_interaction(backend) -> bool:
    for name in backend.list_collections():
        try:
            if backend.schema(name).late_dimension:
                return True
        except ServiceError:  # deleted meanwhile, or unreadable: its own calls will say so
            continue
    return False


class RetrievalServicer(pb_grpc.RetrievalServiceServicer):
    """RetrievalService's handlers: messages to store calls and back; the collection RPCs are
    :class:`CollectionOperations`'."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self.executor = executor
        self._operations: CollectionOperations | None = None
        self._embedder: CachedQueryEmbedder | None = None

    def serve(self, operations: CollectionOperations, embedder: CachedQueryEmbedder) -> None:
        """Start answering: the store is loaded (``embedder`` is its query embedder)."""
        self._embedder = embedder
        self._operations = operations

    @property
    def operations(self) -> CollectionOperations:
        if self._operations is None:
            raise Unavailable("the retrieval service is still loading its model and store; retry shortly")
        return self._operations

    @property
    def store(self) -> DocumentStore:
        return self.operations.store

    async def _run(self, fn, *args, **kwargs):
        return await run_in(self.executor, fn, *args, **kwargs)

    async def Retrieve(self, request: pb.RetrieveRequest, context: grpc.aio.ServicerContext) -> pb.RetrieveResponse:
        name = validation.collection_name(request.collection)
        query = validation.query_text(request.query)
        limit = validation.retrieve_limit(request.limit)
        mode = api_names.RETRIEVAL_MODES[validation.retrieval_mode(request.mode)]
        qfilter = to_filter(request.filter)
        fusion = fusion_options(request.fusion)
        operations = self.operations
        if mode != "sparse":
            await self._embedder.prefetch(query)  # on the loop: the store's call then finds the vector
        signals = FirstStageSignals()
        collection, (candidates, used) = await operations.retrieve(name, query, limit, qfilter, mode, fusion, signals)
        return pb.RetrieveResponse(
            one_list_weak=signals.one_list_weak,
            collection=collection,
            candidates=[
                pb.Candidate(
                    id=c.id,
                    score=c.score,
                    title=c.title,
                    text=c.text,
                    payload=struct(c.payload),
                    dense_score=c.dense_score,
                    sparse_score=c.sparse_score,
                )
                for c in candidates
            ],
            mode=api_names.RETRIEVAL_MODE_ENUM[used],
        )

    async def Upsert(self, request, context):
        name = validation.collection_name(request.collection)
        docs = [DocumentIn(**d) for d in validation.documents(request.documents)]
        operations = self.operations
        written = await self._run(operations.write, name, [d.id for d in docs], operations.store.upsert, docs)
        if operations.calibrator is not None:
            operations.calibrator.note_writes(operations.resolve(name), written)
        return pb.RetrievalServiceUpsertResponse(upserted=written)

    async def Delete(self, request, context):
        name = validation.collection_name(request.collection)
        ids = validation.ids(request.ids)
        deleted = await self._run(self.operations.write, name, ids, self.store.delete, ids)
        return pb.RetrievalServiceDeleteResponse(deleted=deleted)

    async def CreateCollection(self, request, context):
        name = validation.collection_name(request.name, "name")
        sparse = request.sparse if request.HasField("sparse") else True
        late = request.late_interaction if request.HasField("late_interaction") else None
        await self._run(self.operations.aliases.check_collection_name_free, name)
        desc = await self._run(self.store.create_collection, name, filter_fields(request.filter_fields), sparse, late)
        return pb.RetrievalServiceCreateCollectionResponse(collection=collection_info(desc))

    async def DescribeCollection(self, request, context):
        name = validation.collection_name(request.name, "name")
        _, desc = await self._run(self.operations.read, name, self.store.describe)
        return pb.RetrievalServiceDescribeCollectionResponse(collection=collection_info(desc))

    async def DeleteCollection(self, request, context):
        name = validation.collection_name(request.name, "name")
        await self._run(self.operations.aliases.check_deletable, name)
        await self._run(self.store.delete_collection, name)
        return pb.RetrievalServiceDeleteCollectionResponse()

    # -- collection operations (operations.py) -------------------------------------------

    async def ListCollections(self, request, context):
        return await self.operations.list_collections(request)

    async def GetDocuments(self, request, context):
        return await self.operations.get_documents(request)

    async def CreateAlias(self, request, context):
        return await self.operations.create_alias(request)

    async def SwitchAlias(self, request, context):
        return await self.operations.switch_alias(request)

    async def DeleteAlias(self, request, context):
        return await self.operations.delete_alias(request)

    async def ListAliases(self, request, context):
        return await self.operations.list_aliases(request)

    async def Reindex(self, request, context):
        async for progress in self.operations.reindex(request):
            yield progress

    async def ExportSnapshot(self, request, context):
        async for part in self.operations.export_snapshot(request):
            yield part

    async def RestoreSnapshot(self, request_iterator, context):
        return await self.operations.restore_snapshot(request_iterator)


class RetrievalService:
    name = "retrieval"
    grpc_service_names = (pb.DESCRIPTOR.services_by_name["RetrievalService"].full_name,)

    def __init__(self, config: RetrievalConfig) -> None:
        self.config = config
        self.executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="retrieval")
        self.servicer = RetrievalServicer(self.executor)
        self._backend: VersionedBackend | None = None
        self._operations: CollectionOperations | None = None
        self._embedder = None
        self._stats_task: asyncio.Task | None = None

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_RetrievalServiceServicer_to_server(self.servicer, server)

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Conditional Retrieve for the gateway's result cache (services/retrieval/conditional_retrieve.py)."""
        return [ConditionalRetrieveInterceptor(self._version_of, pb.RetrieveResponse, blocking=bool(self.config.qdrant_url))]

    def _version_of(self, name: str) -> str:
        """``collection@version`` of the collection ``name`` is (or, as an alias, points to); "" before start."""
        operations = self._operations
        if operations is None or self._backend is None:
            return ""
        collection = operations.resolve(name)
        return f"{collection}@{self._backend.version(collection)}"

    async def start(self) -> None:
        from services.common.hardware import GPU_PROVIDERS, available_cpus, batching_for, cpu_layout
        from services.retrieval.batched_embedder import BatchedEmbedder
        from services.retrieval.embedder import BiEncoder
        from services.retrieval.sparse import Bm25SparseEncoder

        cfg = self.config
        loop = asyncio.get_running_loop()
        workers, threads = cpu_layout(cfg.inference_workers, cfg.intra_op_threads, available_cpus())
        encoder = await loop.run_in_executor(self.executor, BiEncoder.from_config, cfg, threads)
        # Queries and upserts share one dynamic batcher (services/retrieval/batched_embedder.py).
        workers, prefetch, max_tokens = batching_for(encoder.provider, workers, cfg.inference_workers, cfg.max_batch_tokens)
        # On a CPU one batch waits in the executor's queue, so an inference thread goes from one
        # batch to the next without waiting for the event loop (QPS +7.7% at 16 clients: docs/BENCHMARKS.md).
        queued = 0 if encoder.provider in GPU_PROVIDERS else 1
        embedder = BatchedEmbedder(
            encoder,
            max_batch_texts=cfg.batch_size,
            max_batch_tokens=max_tokens,
            max_wait_s=cfg.max_wait_ms / 1000.0,
            max_queue_texts=cfg.max_queue_texts,
            workers=workers,
            prefetch=prefetch,
            queued=queued,
        )
        self._embedder = embedder
        settings = BackendSettings(
            path=cfg.qdrant_path,
            url=cfg.qdrant_url,
            api_key=cfg.qdrant_api_key,
            shard_number=cfg.shard_number,
            replication_factor=cfg.replication_factor,
            write_consistency_factor=cfg.write_consistency_factor,
            timeout_s=cfg.qdrant_timeout_seconds,
            hnsw_ef=cfg.hnsw_ef or None,
            hnsw_ef_points=cfg.hnsw_ef_points,
            search_threads=cfg.edge_search_threads,
            optimize_on_start=cfg.edge_optimize_on_start,
            optimize_after_points=cfg.edge_optimize_after_points,
            optimize_quiet_s=cfg.edge_optimize_quiet_seconds,
            min_free_disk_mb=cfg.edge_min_free_disk_mb,
            tuning=cfg.shard_tuning(),
            query_batching=cfg.edge_query_batching,
        )
        if not cfg.qdrant_url and (legacy := legacy_collections(cfg.qdrant_path)):
            log.error(
                "data of the old embedded store (qdrant-client local mode) found; it is no longer served. "
                "Stop this service and run `%s` to copy it into Qdrant Edge (no re-embedding)",
                IMPORT_COMMAND.format(path=cfg.qdrant_path), extra={"legacy_collections": legacy},
            )
        try:
            # Every write gives its collection a new version (services/retrieval/write_versions.py).
            self._backend = VersionedBackend(await loop.run_in_executor(self.executor, open_backend, settings))
        except ServiceError as exc:  # a shard that cannot be opened: say which, change nothing
            raise RuntimeError(f"cannot open its store: {status_message(exc)}") from exc
        from services.retrieval.passages import PassageSplitter

        splitter = PassageSplitter(encoder.model_dir / "tokenizer.json", embedder.max_length, cfg.passage_overlap)
        late = late_interaction_stage(cfg, threads)
        if late is not None and await loop.run_in_executor(self.executor, _uses_late_interaction, self._backend):
            await loop.run_in_executor(self.executor, late.encoder.get)  # a collection uses it: load before SERVING
        query_embedder = CachedQueryEmbedder(embedder, cfg.query_cache_size)
        store = DocumentStore(
            self._backend, query_embedder, Bm25SparseEncoder(k1=cfg.bm25_k1, b=cfg.bm25_b, avg_doc_length=cfg.bm25_avg_doc_length),
            splitter=splitter, long_documents=cfg.long_documents, late=late,
        )
        # Warm up before reporting SERVING: the first inference allocates; a batch at the
        # full sequence length allocates what the largest documents need.
        await embedder.aembed_documents(["warmup " * encoder.max_length] * max(workers, min(cfg.batch_size, 8)))
        await embedder.aembed_queries(["warmup"])
        calibrator = None
        if cfg.fusion_calibration:
            calibrator = FusionCalibrator(store, embedder.embed_queries, DEFAULT_DENSE_WEIGHT, cfg.fusion_calibration_sample)
        self._operations = CollectionOperations(store, self.executor, calibrator)
        self.servicer.serve(self._operations, query_embedder)
        if cfg.store_stats_seconds > 0:
            self._stats_task = asyncio.create_task(self._export_store_stats(store, cfg.store_stats_seconds))
        log.info(
            "retrieval ready",
            extra={"model": embedder.name, "provider": embedder.provider, "max_length": encoder.max_length,
                   "inference_workers": workers, "intra_op_threads": threads, "max_batch_tokens": max_tokens,
                   "queued_batches": queued, "qdrant": cfg.qdrant_url or f"edge:{cfg.qdrant_path}",
                   "collections": len(self._backend.list_collections())},
        )

    #: How long stop() waits for store calls still running after the gRPC grace period.
    STOP_WAIT_S = 30.0

    async def _export_store_stats(self, store: DocumentStore, every_s: float) -> None:
        """Keep the engine's own figures (points, segments, indexed vectors) on /metrics."""
        exported: set[str] = set()
        while True:
            try:
                stats = await self._run_store(store.stats)
                for name, st in stats.items():
                    metrics.RETRIEVAL_STORE_POINTS.labels(collection=name).set(st.points)
                    metrics.RETRIEVAL_STORE_SEGMENTS.labels(collection=name).set(st.segments)
                    metrics.RETRIEVAL_STORE_INDEXED_VECTORS.labels(collection=name).set(st.indexed_vectors)
                for gone in exported - set(stats):
                    for gauge in (metrics.RETRIEVAL_STORE_POINTS, metrics.RETRIEVAL_STORE_SEGMENTS,
                                  metrics.RETRIEVAL_STORE_INDEXED_VECTORS):
                        gauge.remove(gone)
                exported = set(stats)
            except asyncio.CancelledError:
                raise
            except Exception:  # a figure missing for one round is no reason to stop serving
                log.warning("could not read the store's figures", exc_info=True)
            await asyncio.sleep(every_s)

    async def _run_store(self, fn):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def stop(self) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
        calibrator = self._operations.calibrator if self._operations is not None else None
        if calibrator is not None:  # a measurement in progress needs the embedder and store
            await asyncio.get_running_loop().run_in_executor(None, calibrator.close)
        # Store calls still running (their RPCs were cancelled when the grace period ran out)
        # finish first, while the embedder can still serve them and before Qdrant's client is
        # closed under them; the wait runs off the loop, which those calls need for embedding.
        waiting = asyncio.get_running_loop().run_in_executor(None, partial(self.executor.shutdown, wait=True, cancel_futures=True))
        try:
            await asyncio.wait_for(asyncio.shield(waiting), self.STOP_WAIT_S)
        except TimeoutError:
            log.warning("store calls still running after %.0f s; closing anyway", self.STOP_WAIT_S)
        if self._embedder is not None:
            await self._embedder.close()
        if self._backend is not None:  # flushes the embedded engine's segments
            await asyncio.get_running_loop().run_in_executor(None, self._backend.close)
