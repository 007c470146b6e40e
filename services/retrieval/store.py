"""Documents in Qdrant: dense + sparse vectors, payload filters, hybrid retrieval.

Knows nothing of gRPC. One code path serves Qdrant's embedded local mode (an on-disk
path; the default) and a Qdrant server or cluster (``url``), because both are the same
``QdrantClient`` API.

Point layout: one point per document (or per passage of a long document when the
collection splits them, see passages.py), id ``uuid5(doc id)`` (``uuid5(doc id#n)`` for
passage n > 0) so a re-upsert replaces the earlier version and never duplicates it; stale
passages of a document that got shorter are deleted after the new ones are written.
Payload: ``doc_id``, ``passage``, ``title``, ``text`` and the caller's payload under
``payload`` (filters on key ``k`` address ``payload.k``, so a caller's keys can never collide
with ours). Vectors: ``dense`` (cosine) and ``sparse`` (BM25 term
weights with Qdrant's IDF modifier, so document frequencies live in Qdrant and stay right
as documents come and go).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from services.common import metrics, tracing
from services.common.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from services.retrieval import fusion
from services.retrieval.passages import Passage, PassageSplitter

log = logging.getLogger(__name__)

DENSE = "dense"
SPARSE = "sparse"
POINT_NAMESPACE = uuid.UUID("6f0c1f7e-3b7a-4f57-9a53-5f0e1c2d9a10")

FIELD_SCHEMAS = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
}


class Embedder(Protocol):
    name: str
    dimension: int

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...


class SparseEncoder(Protocol):
    def encode_documents(self, texts: Sequence[str]) -> list[Any]: ...

    def encode_query(self, text: str) -> Any: ...


@dataclass(frozen=True)
class DocumentIn:
    id: str
    title: str
    text: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidate:
    id: str
    score: float
    title: str
    text: str
    payload: dict[str, Any]
    dense_score: float | None = None
    sparse_score: float | None = None


@dataclass(frozen=True)
class CollectionDescription:
    name: str
    document_count: int
    point_count: int
    dense_model: str
    dense_dimension: int
    sparse_enabled: bool
    filter_fields: dict[str, str]


@dataclass(frozen=True)
class Fusion:
    """How hybrid retrieval fuses the dense and sparse rankings."""

    # Chosen on SciFact train queries (docs/QUALITY.md): z-score fusion, dense weight 0.6.
    method: str = "weighted_zscore"  # rrf | dbsf | weighted_zscore | weighted_rrf
    dense_weight: float = 0.6
    rrf_k: int = 60
    prefetch_limit: int = 100


@dataclass(frozen=True)
class QdrantSettings:
    path: str = ".data/qdrant"
    url: str | None = None
    api_key: str | None = None
    shard_number: int = 1
    replication_factor: int = 1
    write_consistency_factor: int = 1
    timeout_s: float = 10.0


def point_id(doc_id: str, passage: int = 0) -> str:
    """The Qdrant point id of a document's passage: stable across processes and machines."""
    return str(uuid.uuid5(POINT_NAMESPACE, doc_id if passage == 0 else f"{doc_id}#{passage}"))


def open_client(settings: QdrantSettings) -> QdrantClient:
    if settings.url:
        return QdrantClient(url=settings.url, api_key=settings.api_key, timeout=int(settings.timeout_s))
    return QdrantClient(path=settings.path)


class DocumentStore:
    """Collections of documents searchable by dense, sparse or hybrid retrieval."""

    def __init__(
        self,
        client: QdrantClient,
        embedder: Embedder,
        sparse_encoder: SparseEncoder,
        settings: QdrantSettings = QdrantSettings(),
        splitter: PassageSplitter | None = None,
        long_documents: str = "truncate",
    ) -> None:
        if long_documents == "split" and splitter is None:
            raise ValueError("long_documents='split' needs a PassageSplitter")
        self.client = client
        self.embedder = embedder
        self.sparse_encoder = sparse_encoder
        self.settings = settings
        self.splitter = splitter
        self.long_documents = long_documents
        self.local = not settings.url
        # Embedded local mode is not safe for concurrent writers; a server is.
        self._local_lock = threading.Lock() if self.local else None

    # -- helpers -----------------------------------------------------------------------

    def _qdrant(self, operation: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            with tracing.span(
                f"qdrant.{operation}",
                **{"db.system": "qdrant", "db.operation": operation, "db.collection.name": args[0] if args else None,
                   "qdrant.using": kwargs.get("using"), "qdrant.limit": kwargs.get("limit"),
                   "qdrant.prefetch": ",".join(f"{p.using}:{p.limit}" for p in kwargs["prefetch"])
                   if "prefetch" in kwargs else None},
            ):
                if self._local_lock is not None:
                    with self._local_lock:
                        return fn(*args, **kwargs)
                return fn(*args, **kwargs)
        except UnexpectedResponse as exc:
            if exc.status_code == 404:
                raise NotFound(f"collection not found: {exc.content!r}") from exc
            raise Unavailable(f"Qdrant {operation} failed with HTTP {exc.status_code}") from exc
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise Unavailable(f"Qdrant is unreachable during {operation}: {exc}") from exc
        finally:
            metrics.RETRIEVAL_QDRANT_SECONDS.labels(operation=operation).observe(time.perf_counter() - start)

    def _require(self, name: str) -> models.CollectionInfo:
        if not self._qdrant("collection_exists", self.client.collection_exists, name):
            raise NotFound(f"collection {name!r} does not exist; create it with CreateCollection")
        return self._qdrant("get_collection", self.client.get_collection, name)

    # -- collections -------------------------------------------------------------------

    def create_collection(self, name: str, filter_fields: dict[str, str], sparse: bool = True) -> CollectionDescription:
        if self._qdrant("collection_exists", self.client.collection_exists, name):
            raise AlreadyExists(f"collection {name!r} already exists")
        for key, kind in filter_fields.items():
            if kind not in FIELD_SCHEMAS:
                raise InvalidArgument("filter_fields", f"field {key!r} has unsupported type {kind!r}")
        self._qdrant(
            "create_collection",
            self.client.create_collection,
            name,
            vectors_config={DENSE: models.VectorParams(size=self.embedder.dimension, distance=models.Distance.COSINE)},
            sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)} if sparse else None,
            shard_number=self.settings.shard_number,
            replication_factor=self.settings.replication_factor,
            write_consistency_factor=self.settings.write_consistency_factor,
            metadata={
                "dense_model": self.embedder.name,
                "filter_fields": dict(filter_fields),
                "sparse": sparse,
                "long_documents": self.long_documents,
            },
        )
        # doc_id and passage are always indexed: deletes and counts filter on them.
        indexes = {"doc_id": models.PayloadSchemaType.KEYWORD, "passage": models.PayloadSchemaType.INTEGER}
        indexes.update({f"payload.{key}": FIELD_SCHEMAS[kind] for key, kind in filter_fields.items()})
        if not self.local:  # local mode ignores payload indexes (and warns)
            for key, schema in indexes.items():
                self._qdrant("create_payload_index", self.client.create_payload_index, name, key, schema)
        log.info("collection created", extra={"collection": name, "filter_fields": filter_fields, "sparse": sparse})
        return self.describe(name)

    def describe(self, name: str) -> CollectionDescription:
        info = self._require(name)
        metadata = info.config.metadata or {}
        dense = info.config.params.vectors
        dense_params = dense.get(DENSE) if isinstance(dense, dict) else dense
        points = self._qdrant("count", self.client.count, name, exact=True).count
        documents = self._qdrant("count", self.client.count, name, count_filter=_FIRST_PASSAGE, exact=True).count
        return CollectionDescription(
            name=name,
            document_count=documents,
            point_count=points,
            dense_model=str(metadata.get("dense_model", "")),
            dense_dimension=int(dense_params.size) if dense_params else 0,
            sparse_enabled=bool(info.config.params.sparse_vectors),
            filter_fields=dict(metadata.get("filter_fields", {})),
        )

    def delete_collection(self, name: str) -> None:
        self._require(name)
        self._qdrant("delete_collection", self.client.delete_collection, name)

    # -- documents ---------------------------------------------------------------------

    def upsert(self, name: str, documents: Sequence[DocumentIn]) -> int:
        """Embed and write ``documents``; all or nothing for the batch as the caller sees it."""
        info = self._require(name)
        self._check_model(name, info)
        sparse_enabled = bool(info.config.params.sparse_vectors)
        split = _splits(info)
        units: list[tuple[DocumentIn, Passage]] = []
        for doc in documents:
            passages = self.splitter.split(doc.text) if split and self.splitter else [Passage(0, doc.text)]
            units.extend((doc, passage) for passage in passages)
        texts = [_index_text(doc.title, passage.text) for doc, passage in units]
        start = time.perf_counter()
        with tracing.span("embed.documents", **{"batch.size": len(texts), "embedding.model": self.embedder.name}):
            dense = self.embedder.embed_documents(texts)
        metrics.RETRIEVAL_EMBEDDING_SECONDS.labels(kind="document").observe(time.perf_counter() - start)
        sparse = self.sparse_encoder.encode_documents(texts) if sparse_enabled else [None] * len(texts)
        points = []
        for (doc, passage), vector, sparse_vector in zip(units, dense, sparse):
            vectors: dict[str, Any] = {DENSE: vector.tolist()}
            if sparse_vector is not None and sparse_vector.indices:
                vectors[SPARSE] = models.SparseVector(indices=list(sparse_vector.indices), values=list(sparse_vector.values))
            points.append(
                models.PointStruct(
                    id=point_id(doc.id, passage.index),
                    vector=vectors,
                    payload={"doc_id": doc.id, "passage": passage.index, "title": doc.title, "text": passage.text,
                             "payload": doc.payload},
                )
            )
        self._qdrant("upsert", self.client.upsert, name, points=points, wait=True)
        if split:  # a document that got shorter leaves passages behind: remove them
            counts: dict[str, int] = {}
            for doc, passage in units:
                counts[doc.id] = max(counts.get(doc.id, 0), passage.index + 1)
            stale = models.Filter(
                should=[
                    models.Filter(must=[
                        models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id)),
                        models.FieldCondition(key="passage", range=models.Range(gte=n)),
                    ])
                    for doc_id, n in counts.items()
                ]
            )
            self._qdrant("delete", self.client.delete, name, points_selector=models.FilterSelector(filter=stale), wait=True)
        metrics.RETRIEVAL_POINTS_UPSERTED.inc(len(points))
        return len(documents)

    def delete(self, name: str, ids: Sequence[str]) -> int:
        info = self._require(name)
        present = self._qdrant("retrieve", self.client.retrieve, name, ids=[point_id(i) for i in ids], with_payload=False)
        if not present:
            return 0
        if _splits(info):
            selector: Any = models.FilterSelector(
                filter=models.Filter(must=[models.FieldCondition(key="doc_id", match=models.MatchAny(any=list(ids)))])
            )
        else:
            selector = models.PointIdsList(points=[p.id for p in present])
        self._qdrant("delete", self.client.delete, name, points_selector=selector, wait=True)
        return len(present)

    def _check_model(self, name: str, info: models.CollectionInfo) -> None:
        model = (info.config.metadata or {}).get("dense_model")
        if model and model != self.embedder.name:
            raise InvalidArgument(
                "collection",
                f"collection {name!r} was built with embedding model {model!r} but this service runs "
                f"{self.embedder.name!r}; re-create the collection or run the matching model",
            )

    # -- retrieval ---------------------------------------------------------------------

    def retrieve(
        self,
        name: str,
        query: str,
        limit: int,
        query_filter: models.Filter | None = None,
        mode: str = "hybrid",
        fusion_options: Fusion = Fusion(),
    ) -> tuple[list[Candidate], str]:
        """Candidates for ``query``, best first, and the mode actually used."""
        tracing.set_attributes(**{"retrieval.collection": name, "retrieval.limit": limit, "retrieval.mode": mode})
        info = self._require(name)
        self._check_model(name, info)
        if _splits(info):  # several passages of one document may rank: fetch more, keep each document's best
            candidates, used = self._retrieve(name, info, query, min(limit * 3, 1000), query_filter, mode, fusion_options)
            return _best_per_document(candidates)[:limit], used
        return self._retrieve(name, info, query, limit, query_filter, mode, fusion_options)

    def _retrieve(self, name, info, query, limit, query_filter, mode, fusion_options) -> tuple[list[Candidate], str]:
        sparse_enabled = bool(info.config.params.sparse_vectors)
        if mode in ("sparse", "hybrid") and not sparse_enabled:
            if mode == "sparse":
                raise InvalidArgument("mode", f"collection {name!r} has no sparse vectors; use dense")
            mode = "dense"
        if mode == "sparse":
            sparse_query = self._sparse_query(query)
            if sparse_query is None:  # only stop words: nothing lexical to match
                return [], mode
            points = self._query(name, sparse_query, SPARSE, limit, query_filter)
            return [_candidate(p, sparse=p.score) for p in points], mode

        dense_query = self._dense_query(query)
        if mode == "dense":
            points = self._query(name, dense_query, DENSE, limit, query_filter)
            return [_candidate(p, dense=p.score) for p in points], mode

        sparse_query = self._sparse_query(query)
        if sparse_query is None:
            points = self._query(name, dense_query, DENSE, limit, query_filter)
            return [_candidate(p, dense=p.score) for p in points], mode
        prefetch_limit = max(limit, fusion_options.prefetch_limit)
        if fusion_options.method in ("rrf", "dbsf"):
            fused_query: Any = (
                models.RrfQuery(rrf=models.Rrf(k=fusion_options.rrf_k))
                if fusion_options.method == "rrf"
                else models.FusionQuery(fusion=models.Fusion.DBSF)
            )
            response = self._qdrant(
                "query_points",
                self.client.query_points,
                name,
                prefetch=[
                    models.Prefetch(query=dense_query, using=DENSE, limit=prefetch_limit, filter=query_filter),
                    models.Prefetch(query=sparse_query, using=SPARSE, limit=prefetch_limit, filter=query_filter),
                ],
                query=fused_query,
                limit=limit,
                with_payload=True,
            )
            return [_candidate(p) for p in response.points], mode

        # Weighted fusions the Query API cannot express: two queries, fused here.
        dense_points = self._query(name, dense_query, DENSE, prefetch_limit, query_filter)
        sparse_points = self._query(name, sparse_query, SPARSE, prefetch_limit, query_filter)
        by_id = {p.id: p for p in (*sparse_points, *dense_points)}
        dense_scores = {p.id: p.score for p in dense_points}
        sparse_scores = {p.id: p.score for p in sparse_points}
        rankings = [[(p.id, p.score) for p in dense_points], [(p.id, p.score) for p in sparse_points]]
        weights = [fusion_options.dense_weight, 1.0 - fusion_options.dense_weight]
        with tracing.span("fusion", **{"fusion.method": fusion_options.method, "fusion.candidates": len(by_id)}):
            if fusion_options.method == "weighted_rrf":
                fused = fusion.weighted_rrf(rankings, weights, k=fusion_options.rrf_k)
            else:
                fused = fusion.weighted_zscore(rankings, weights)
        return [
            _candidate(by_id[pid], score=score, dense=dense_scores.get(pid), sparse=sparse_scores.get(pid))
            for pid, score in fused[:limit]
        ], mode

    def _dense_query(self, query: str) -> list[float]:
        start = time.perf_counter()
        with tracing.span("embed.query", **{"embedding.model": self.embedder.name,
                                            "embedding.provider": getattr(self.embedder, "provider", None)}):
            vector = self.embedder.embed_queries([query])[0]
        metrics.RETRIEVAL_EMBEDDING_SECONDS.labels(kind="query").observe(time.perf_counter() - start)
        return vector.tolist()

    def _sparse_query(self, query: str) -> models.SparseVector | None:
        encoded = self.sparse_encoder.encode_query(query)
        if not encoded.indices:
            return None
        return models.SparseVector(indices=list(encoded.indices), values=list(encoded.values))

    def _query(self, name: str, query: Any, using: str, limit: int, query_filter: models.Filter | None):
        response = self._qdrant(
            f"query_{using}",
            self.client.query_points,
            name,
            query=query,
            using=using,
            limit=limit,
            query_filter=query_filter,
            with_payload=True,
        )
        return response.points


_FIRST_PASSAGE = models.Filter(must=[models.FieldCondition(key="passage", match=models.MatchValue(value=0))])


def _splits(info: models.CollectionInfo) -> bool:
    return (info.config.metadata or {}).get("long_documents") == "split"


def _best_per_document(candidates: list[Candidate]) -> list[Candidate]:
    seen: set[str] = set()
    best = []
    for candidate in candidates:
        if candidate.id not in seen:
            seen.add(candidate.id)
            best.append(candidate)
    return best


def _index_text(title: str, text: str) -> str:
    return f"{title}\n{text}" if title else text


def _candidate(point: models.ScoredPoint, score: float | None = None, dense=None, sparse=None) -> Candidate:
    payload = point.payload or {}
    return Candidate(
        id=str(payload.get("doc_id", point.id)),
        score=float(point.score if score is None else score),
        title=str(payload.get("title", "")),
        text=str(payload.get("text", "")),
        payload=dict(payload.get("payload") or {}),
        dense_score=None if dense is None else float(dense),
        sparse_score=None if sparse is None else float(sparse),
    )
