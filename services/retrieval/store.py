"""Documents in a vector engine: dense + sparse vectors, payload filters, hybrid retrieval.

Knows nothing of gRPC, and nothing of any one engine: it talks to a
:class:`services.retrieval.backends.base.Backend` (Qdrant Edge in-process by default, a
Qdrant server or cluster with ``QDRANT_URL``). Everything here is shared by every engine:
embedding, passages, point ids, fusion and the payload layout.

Point layout: one point per document (or per passage of a long document when the
collection splits them, see passages.py), id ``uuid5(doc id)`` (``uuid5(doc id#n)`` for
passage n > 0) so a re-upsert replaces the earlier version and never duplicates it; stale
passages of a document that got shorter are deleted after the new ones are written.
Payload: ``doc_id``, ``passage``, ``title``, ``text`` and the caller's payload under
``payload`` (filters on key ``k`` address ``payload.k``, so a caller's keys can never collide
with ours). Vectors: ``dense`` (cosine) and ``sparse`` (BM25 term
weights with Qdrant's IDF modifier, so document frequencies live in the engine and stay
right as documents come and go).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from services.common import metrics, payload_types, tracing, validation
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.retrieval import calibration, filters, fusion, model_guard
from services.retrieval.calibration import Calibration
from services.retrieval.backends.base import (
    DENSE, FIELD_TYPES, LATE, SPARSE, Backend, CollectionSchema, CollectionStats, Filter, Fused, Hit, Match,
    MatchAny, Nearest, PointIn, Range, Rescore, SparseVector,
)
from services.retrieval.passages import Passage, PassageSplitter

log = logging.getLogger(__name__)

POINT_NAMESPACE = uuid.UUID("6f0c1f7e-3b7a-4f57-9a53-5f0e1c2d9a10")
#: Dense weight of hybrid fusion where neither the request nor the collection's calibration
#: sets one: z-score fusion at 0.6, chosen on SciFact train (docs/QUALITY.md).
DEFAULT_DENSE_WEIGHT = 0.6


class Embedder(Protocol):
    name: str
    dimension: int
    #: Where its ``model.onnx`` is (what the model guard records), None when it has no file.
    model_dir: Path | None

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...


class TokenEncoder(Protocol):
    """Token vectors per text (services/retrieval/late_interaction.py), one ``(tokens, dimension)`` array each."""

    name: str
    model_dir: Path
    dimension: int

    def embed_queries(self, texts: Sequence[str]) -> list[np.ndarray]: ...

    def embed_documents(self, texts: Sequence[str]) -> list[np.ndarray]: ...


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
class DocumentOut:
    """A stored document as GetDocuments returns it."""

    id: str
    title: str
    text: str
    payload: dict[str, Any]


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
    late_interaction_model: str = ""
    late_interaction_dimension: int = 0
    #: The collection's own fusion measurement (services/retrieval/calibration.py), if any.
    calibration: Calibration | None = None


@dataclass
class FirstStageSignals:
    """What a Retrieve learns about its collection's first stage besides the candidates."""

    #: The collection's fusion check found one of its lists weak (calibration.one_list_weak).
    one_list_weak: bool = False


@dataclass(frozen=True)
class Fusion:
    """How hybrid retrieval fuses the dense and sparse rankings."""

    # Chosen on SciFact train queries (docs/QUALITY.md): z-score fusion, dense weight 0.6.
    method: str = "weighted_zscore"  # rrf | dbsf | weighted_zscore | weighted_rrf
    #: None: the collection's calibrated weight (services/retrieval/calibration.py), else DEFAULT_DENSE_WEIGHT.
    dense_weight: float | None = None
    rrf_k: int = 60
    prefetch_limit: int = 100
    #: Late interaction on collections that have it: None = the store's default (on).
    late_interaction: bool | None = None
    #: Candidates the dense and sparse lists each give the MaxSim stage (None = the store's).
    late_candidates: int | None = None


@dataclass(frozen=True)
class LateInteraction:
    """The late-interaction stage (scripts/study_colbert.py, docs/QUALITY.md): each document's
    token vectors in the engine; at query time the union of the dense and sparse top
    ``candidates`` is scored by MaxSim inside the engine, and that list is fused with the two
    first-stage lists (weighted z-score, ``weight`` to MaxSim)."""

    encoder: TokenEncoder
    candidates: int = 100
    weight: float = 0.4
    quantization: str = "int8"
    #: Whether CreateCollection adds the stage when the request does not say.
    default_on: bool = False


def point_id(doc_id: str, passage: int = 0) -> str:
    """The point id of a document's passage: stable across processes, machines and engines."""
    return str(uuid.uuid5(POINT_NAMESPACE, doc_id if passage == 0 else f"{doc_id}#{passage}"))


@dataclass(eq=False)
class DocumentStore:
    """Collections of documents searchable by dense, sparse or hybrid retrieval."""

    backend: Backend
    embedder: Embedder
    sparse_encoder: SparseEncoder
    splitter: PassageSplitter | None = None
    long_documents: str = "truncate"
    late: LateInteraction | None = None

    def __post_init__(self) -> None:
        if self.long_documents == "split" and self.splitter is None:
            raise ValueError("long_documents='split' needs a PassageSplitter")
        self._identity: model_guard.ModelIdentity | None = None

    # -- helpers -----------------------------------------------------------------------

    def _engine(self, operation: str, name: str, fn, *args, **attributes):
        start = time.perf_counter()
        try:
            with tracing.span(f"qdrant.{operation}", **{"db.system": "qdrant", "db.operation": operation,
                                                         "db.collection.name": name, "qdrant.backend": self.backend.kind,
                                                         **attributes}):
                return fn(name, *args)
        finally:
            metrics.RETRIEVAL_QDRANT_SECONDS.labels(operation=operation).observe(time.perf_counter() - start)

    def _schema(self, name: str) -> CollectionSchema:
        return self.backend.schema(name)

    # -- collections -------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        return self.backend.list_collections()

    def stats(self) -> dict[str, CollectionStats]:
        """The engine's own figures for every collection (one that vanishes meanwhile is left out)."""
        out = {}
        for name in self.backend.list_collections():
            try:
                out[name] = self.backend.stats(name)
            except NotFound:
                continue
        return out

    def create_collection(self, name: str, filter_fields: dict[str, str], sparse: bool = True,
                          late_interaction: bool | None = None) -> CollectionDescription:
        for key, kind in filter_fields.items():
            if kind not in FIELD_TYPES:
                raise InvalidArgument("filter_fields", f"field {key!r} has unsupported type {kind!r}")
        late = self.late.default_on if late_interaction is None and self.late else bool(late_interaction)
        if late and self.late is None:
            raise FailedPrecondition(
                "late_interaction: this retrieval service has no late-interaction model loaded "
                "(RETRIEVAL_LATE_INTERACTION_MODEL_DIR); create the collection without it or load the model"
            )
        models = self.identity.record()
        if not late:
            models.pop("late_interaction", None)
        schema = CollectionSchema(
            name=name, dense_dimension=self.embedder.dimension, sparse=sparse, filter_fields=dict(filter_fields),
            metadata={"dense_model": self.embedder.name, "long_documents": self.long_documents, "models": models},
            late_dimension=self.late.encoder.dimension if late else 0,
            late_quantization=self.late.quantization if late else "int8",
        )
        self._engine("create_collection", name, lambda n: self.backend.create_collection(schema))
        log.info("collection created", extra={"collection": name, "filter_fields": filter_fields, "sparse": sparse})
        return self.describe(name)

    def describe(self, name: str) -> CollectionDescription:
        schema = self._schema(name)
        points = self._engine("count", name, self.backend.count)
        documents = self._engine("count", name, self.backend.count, _FIRST_PASSAGE)
        return CollectionDescription(
            name=name,
            document_count=documents,
            point_count=points,
            dense_model=str(schema.metadata.get("dense_model", "")),
            dense_dimension=schema.dense_dimension,
            sparse_enabled=schema.sparse,
            filter_fields=dict(schema.filter_fields),
            late_interaction_model=str(model_guard.recorded(schema.metadata).get("late_interaction", {}).get("name", ""))
            if schema.late_dimension else "",
            late_interaction_dimension=schema.late_dimension,
            calibration=Calibration.from_metadata(schema.metadata.get(calibration.METADATA_KEY)),
        )

    def delete_collection(self, name: str) -> None:
        self._schema(name)
        self._engine("delete_collection", name, self.backend.delete_collection)

    # -- documents ---------------------------------------------------------------------

    def upsert(self, name: str, documents: Sequence[DocumentIn]) -> int:
        """Embed and write ``documents``; all or nothing for the batch as the caller sees it."""
        schema = self._schema(name)
        self._check_model(name, schema)
        payload_types.check(name, schema.filter_fields, [doc.payload for doc in documents])  # no filter would match
        split = _splits(schema)
        units: list[tuple[DocumentIn, Passage]] = []
        for doc in documents:
            passages = self.splitter.split(doc.text) if split and self.splitter else [Passage(0, doc.text)]
            units.extend((doc, passage) for passage in passages)
        texts = [validation.document_text(doc.title, passage.text) for doc, passage in units]
        start = time.perf_counter()
        with tracing.span("embed.documents", **{"batch.size": len(texts), "embedding.model": self.embedder.name}):
            dense = self.embedder.embed_documents(texts)
        metrics.RETRIEVAL_EMBEDDING_SECONDS.labels(kind="document").observe(time.perf_counter() - start)
        sparse = self.sparse_encoder.encode_documents(texts) if schema.sparse else [None] * len(texts)
        late: list[Any] = [None] * len(texts)
        if schema.late_dimension:
            start = time.perf_counter()
            with tracing.span("embed.late_documents", **{"batch.size": len(texts)}):
                late = [v.tolist() for v in self._late_encoder(name).embed_documents(texts)]
            metrics.RETRIEVAL_EMBEDDING_SECONDS.labels(kind="late_document").observe(time.perf_counter() - start)
        points = [
            PointIn(
                id=point_id(doc.id, passage.index),
                dense=vector.tolist(),
                sparse=SparseVector(tuple(sv.indices), tuple(sv.values)) if sv is not None and sv.indices else None,
                payload={"doc_id": doc.id, "passage": passage.index, "title": doc.title, "text": passage.text,
                         "payload": doc.payload},
                late=tokens,
            )
            for (doc, passage), vector, sv, tokens in zip(units, dense, sparse, late)
        ]
        self._engine("upsert", name, self.backend.upsert, points)
        if split:  # a document that got shorter leaves passages behind: remove them
            counts: dict[str, int] = {}
            for doc, passage in units:
                counts[doc.id] = max(counts.get(doc.id, 0), passage.index + 1)
            stale = Filter(should=tuple(
                Filter(must=(Match("doc_id", doc_id), Range("passage", gte=n))) for doc_id, n in counts.items()
            ))
            self._engine("delete", name, self.backend.delete_where, stale)
        metrics.RETRIEVAL_POINTS_UPSERTED.inc(len(points))
        return len(documents)

    def delete(self, name: str, ids: Sequence[str]) -> int:
        schema = self._schema(name)
        present = self._engine("retrieve", name, self.backend.existing, [point_id(i) for i in ids])
        if not present:
            return 0
        if _splits(schema):
            self._engine("delete", name, self.backend.delete_where, Filter(must=(MatchAny("doc_id", tuple(ids)),)))
        else:
            self._engine("delete", name, self.backend.delete_ids, present)
        return len(present)

    @property
    def identity(self) -> model_guard.ModelIdentity:
        """The loaded models' identity (services/retrieval/model_guard.py), recorded by new collections."""
        if self._identity is None:
            self._identity = model_guard.identity_of(self.embedder, self.sparse_encoder,
                                                     self.late.encoder if self.late else None)
        return self._identity

    def _late_encoder(self, name: str):
        if self.late is None:
            raise FailedPrecondition(
                f"collection {name!r} has a late-interaction stage but this retrieval service has no "
                "late-interaction model loaded (RETRIEVAL_LATE_INTERACTION_MODEL_DIR)"
            )
        return self.late.encoder

    def _check_model(self, name: str, schema: CollectionSchema) -> None:
        model_guard.check(name, schema.metadata, self.identity, sparse=schema.sparse)

    def get_documents(self, name: str, ids: Sequence[str]) -> list[DocumentOut]:
        """The stored documents among ``ids``, in that order (a split document's passages joined)."""
        schema = self._schema(name)
        if not _splits(schema):
            found = self._engine("retrieve", name, self.backend.retrieve, [point_id(i) for i in ids])
            by_doc = {str(p.get("doc_id")): [p] for _, p in found}
        else:
            by_doc = {}
            where = Filter(must=(MatchAny("doc_id", tuple(ids)),))
            offset = None
            while True:
                page, offset = self._engine("scroll", name, self.backend.scroll, offset, 256, False, where)
                for _, payload, _ in page:
                    by_doc.setdefault(str(payload.get("doc_id")), []).append(payload)
                if offset is None:
                    break
        out = []
        for doc_id in ids:
            passages = sorted(by_doc.get(doc_id, ()), key=lambda p: int(p.get("passage", 0)))
            if passages:
                first = passages[0]
                out.append(DocumentOut(doc_id, str(first.get("title", "")),
                                       _join_passages([str(p.get("text", "")) for p in passages]),
                                       dict(first.get("payload") or {})))
        return out

    # -- retrieval ---------------------------------------------------------------------

    def retrieves_in_place(self, name: str) -> bool:
        """Whether :meth:`retrieve` on ``name`` may run on the calling thread now, the event loop's
        included: the engine reads in place (:meth:`Backend.reads_in_place`) and the collection has
        no late-interaction stage (its query encoder releases the GIL: a worker thread overlaps it).
        The query's dense vector must already be at hand (:meth:`CachedQueryEmbedder.prefetch`)."""
        return self.backend.reads_in_place(name) and not self._schema(name).late_dimension

    def retrieve(
        self,
        name: str,
        query: str,
        limit: int,
        query_filter: Filter | None = None,
        mode: str = "hybrid",
        fusion_options: Fusion = Fusion(),
        signals: FirstStageSignals | None = None,
    ) -> tuple[list[Candidate], str]:
        """Candidates for ``query``, best first, and the mode actually used; ``signals``, when
        given, receives what the collection knows of its first stage (no extra engine call)."""
        tracing.set_attributes(**{"retrieval.collection": name, "retrieval.limit": limit, "retrieval.mode": mode})
        schema = self._schema(name)
        self._check_model(name, schema)
        if query_filter is not None and schema.filter_fields:
            filters.check_declared(name, schema.filter_fields, query_filter)
        if signals is not None:
            signals.one_list_weak = calibration.one_list_weak(
                Calibration.from_metadata(schema.metadata.get(calibration.METADATA_KEY)))
        if _splits(schema):  # several passages of one document may rank: fetch more, keep each document's best
            candidates, used = self._retrieve(name, schema, query, min(limit * 3, 1000), query_filter, mode, fusion_options)
            return _best_per_document(candidates)[:limit], used
        return self._retrieve(name, schema, query, limit, query_filter, mode, fusion_options)

    def _retrieve(self, name, schema, query, limit, query_filter, mode, fusion_options) -> tuple[list[Candidate], str]:
        if mode in ("sparse", "hybrid") and not schema.sparse:
            if mode == "sparse":
                raise InvalidArgument("mode", f"collection {name!r} has no sparse vectors; use dense")
            mode = "dense"
        if mode == "sparse":
            sparse_query = self.sparse_query(query)
            if sparse_query is None:  # only stop words: nothing lexical to match
                return [], mode
            hits = self._query(name, "query_sparse", [Nearest(SPARSE, sparse_query, limit, query_filter)])[0]
            return [_candidate(h, sparse=h.score) for h in hits], mode

        dense_query = self._dense_query(query)
        sparse_query = self.sparse_query(query) if mode == "hybrid" else None
        if schema.late_dimension and fusion_options.late_interaction is not False:
            return self._retrieve_late(name, query, limit, query_filter, dense_query, sparse_query, fusion_options), mode
        if sparse_query is None:  # dense, or hybrid with nothing lexical to match
            hits = self._query(name, "query_dense", [Nearest(DENSE, dense_query, limit, query_filter)])[0]
            return [_candidate(h, dense=h.score) for h in hits], mode
        prefetch_limit = max(limit, fusion_options.prefetch_limit)
        dense_q = Nearest(DENSE, dense_query, prefetch_limit, query_filter)
        sparse_q = Nearest(SPARSE, sparse_query, prefetch_limit, query_filter)
        if fusion_options.method in ("rrf", "dbsf"):
            fused_q = Fused((dense_q, sparse_q), fusion_options.method, limit, fusion_options.rrf_k)
            return [_candidate(h) for h in self._query(name, "query_fused", [fused_q])[0]], mode

        # Weighted fusions the engines' query API cannot express: both lists in one batch, fused here.
        # The lists come without payloads (ids and scores); only the fused top `limit` fetch theirs
        # (turning 2 x prefetch_limit payloads into dicts was ~1.5 ms per query, docs/BENCHMARKS.md).
        dense_q = Nearest(DENSE, dense_query, prefetch_limit, query_filter, with_payload=False)
        sparse_q = Nearest(SPARSE, sparse_query, prefetch_limit, query_filter, with_payload=False)
        dense_hits, sparse_hits = self._query(name, "query_hybrid", [dense_q, sparse_q])
        by_id = {h.id: h for h in (*sparse_hits, *dense_hits)}
        dense_scores = {h.id: h.score for h in dense_hits}
        sparse_scores = {h.id: h.score for h in sparse_hits}
        rankings = [[(h.id, h.score) for h in dense_hits], [(h.id, h.score) for h in sparse_hits]]
        dense_weight = _dense_weight(schema, fusion_options)
        weights = [dense_weight, 1.0 - dense_weight]
        with tracing.span("fusion", **{"fusion.method": fusion_options.method, "fusion.candidates": len(by_id)}):
            if fusion_options.method == "weighted_rrf":
                fused = fusion.weighted_rrf(rankings, weights, k=fusion_options.rrf_k)
            else:
                fused = fusion.weighted_zscore(rankings, weights)
        top = fused[:limit]
        payloads = dict(self._engine("retrieve", name, self.backend.retrieve, [pid for pid, _ in top])) if top else {}
        return [
            _candidate(Hit(pid, by_id[pid].score, payloads.get(pid, {})), score=score, dense=dense_scores.get(pid),
                       sparse=sparse_scores.get(pid))
            for pid, score in top
        ], mode

    def _retrieve_late(self, name, query, limit, query_filter, dense_query, sparse_query, options) -> list[Candidate]:
        """First-stage lists and their union rescored by MaxSim, in one engine batch; then the
        lists are fused here (weighted z-score; RRF with ``weighted_rrf``/``rrf``)."""
        encoder = self._late_encoder(name)
        start = time.perf_counter()
        with tracing.span("embed.late_query", **{"embedding.model": encoder.name}):
            tokens = encoder.embed_queries([query])[0].tolist()
        metrics.RETRIEVAL_EMBEDDING_SECONDS.labels(kind="late_query").observe(time.perf_counter() - start)
        k = max(limit, options.late_candidates or self.late.candidates)
        lists = [Nearest(DENSE, dense_query, k, query_filter, with_payload=False)]
        if sparse_query is not None:
            lists.append(Nearest(SPARSE, sparse_query, k, query_filter, with_payload=False))
        rescore = Rescore(tuple(lists), LATE, tokens, k * len(lists), with_payload=False)
        *first, late_hits = self._query(name, "query_late", [*lists, rescore])
        w = self.late.weight
        dense_weight = _dense_weight(self._schema(name), options)
        base = [dense_weight, 1.0 - dense_weight][: len(first)]
        weights = [b / sum(base) * (1.0 - w) for b in base] + [w]
        rankings = [[(h.id, h.score) for h in hits] for hits in (*first, late_hits)]
        with tracing.span("fusion", **{"fusion.method": options.method, "fusion.lists": len(rankings)}):
            if options.method in ("weighted_rrf", "rrf"):
                fused = fusion.weighted_rrf(rankings, weights, k=options.rrf_k)
            else:
                fused = fusion.weighted_zscore(rankings, weights)
        top = fused[:limit]
        payloads = dict(self._engine("retrieve", name, self.backend.retrieve, [pid for pid, _ in top])) if top else {}
        dense_scores = {h.id: h.score for h in first[0]}
        sparse_scores = {h.id: h.score for h in first[1]} if len(first) > 1 else {}
        return [
            _candidate(Hit(pid, score, payloads.get(pid, {})), dense=dense_scores.get(pid), sparse=sparse_scores.get(pid))
            for pid, score in top
        ]

    def _dense_query(self, query: str) -> list[float]:
        start = time.perf_counter()
        with tracing.span("embed.query", **{"embedding.model": self.embedder.name,
                                            "embedding.provider": getattr(self.embedder, "provider", None)}):
            vector = self.embedder.embed_queries([query])[0]
        metrics.RETRIEVAL_EMBEDDING_SECONDS.labels(kind="query").observe(time.perf_counter() - start)
        return vector.tolist()

    @staticmethod
    def index_text(title: str, text: str) -> str:
        """The text a passage is indexed (and its self-retrieval check is cut) from."""
        return validation.document_text(title, text)

    def sparse_query(self, query: str) -> SparseVector | None:
        encoded = self.sparse_encoder.encode_query(query)
        if not encoded.indices:
            return None
        return SparseVector(tuple(encoded.indices), tuple(encoded.values))

    def _query(self, name: str, operation: str, queries: list[Nearest | Fused]) -> list[list[Hit]]:
        return self._engine(operation, name, self.backend.query, queries,
                            **{"qdrant.queries": ",".join(_describe(q) for q in queries)})


_FIRST_PASSAGE = Filter(must=(Match("passage", 0),))


def _describe(q: Nearest | Fused | Rescore) -> str:
    if isinstance(q, Nearest):
        return f"{q.using}:{q.limit}"
    if isinstance(q, Rescore):
        return f"{q.using}({'+'.join(_describe(p) for p in q.prefetch)}):{q.limit}"
    return f"{q.method}({'+'.join(_describe(p) for p in q.prefetch)}):{q.limit}"


def _dense_weight(schema: CollectionSchema, options: Fusion) -> float:
    """The request's dense weight, else the collection's calibrated one, else the default."""
    if options.dense_weight is not None:
        return options.dense_weight
    measured = Calibration.from_metadata(schema.metadata.get(calibration.METADATA_KEY))
    return measured.dense_weight if measured is not None else DEFAULT_DENSE_WEIGHT


def _splits(schema: CollectionSchema) -> bool:
    return schema.metadata.get("long_documents") == "split"


def _best_per_document(candidates: list[Candidate]) -> list[Candidate]:
    seen: set[str] = set()
    best = []
    for candidate in candidates:
        if candidate.id not in seen:
            seen.add(candidate.id)
            best.append(candidate)
    return best


def _join_passages(texts: list[str]) -> str:
    """A split document's text from its passages: neighbours share their overlap, kept once."""
    text = texts[0] if texts else ""
    for nxt in texts[1:]:
        overlap = next((n for n in range(min(len(text), len(nxt)), 0, -1) if text.endswith(nxt[:n])), 0)
        text += nxt[overlap:]
    return text


def _candidate(hit: Hit, score: float | None = None, dense=None, sparse=None) -> Candidate:
    payload = hit.payload
    return Candidate(
        id=str(payload.get("doc_id", hit.id)),
        score=float(hit.score if score is None else score),
        title=str(payload.get("title", "")),
        text=str(payload.get("text", "")),
        payload=dict(payload.get("payload") or {}),
        dense_score=None if dense is None else float(dense),
        sparse_score=None if sparse is None else float(sparse),
    )
