"""Qdrant Edge's types, one conversion each: a collection's shard config, its schema record,
queries, filters and scrolled points.

The serving process (``edge.py``), the optimizer's child process (``edge_optimizer.py``) and
snapshots all open shards with :func:`shard_config`, so a shard is never loaded with a
config that disagrees with the one it was written with (the engine refuses that: a late-
interaction collection optimized with a config lacking its token vectors failed to load).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from services.common.errors import FailedPrecondition
from services.retrieval.backends.base import (
    DENSE,
    LATE,
    SPARSE,
    CollectionSchema,
    Filter,
    Fused,
    Match,
    MatchAny,
    Nearest,
    PointIn,
    Range,
    Rescore,
    SparseVector,
)
from services.retrieval.backends.edge_tuning import ShardTuning

SCHEMA_FILE = "collection.json"
#: Bumped when the on-disk layout written here changes incompatibly.
LAYOUT_VERSION = 1

#: Payload indexes of new collections, kept on disk (memory-mapped): opening a shard then reads
#: them lazily instead of building them in memory, which halved the time the serving process
#: stalls while it opens an optimized shard (0.71 -> 0.29 s at 200k points).
INDEX_TYPES = {
    "keyword": lambda: qe.KeywordIndexParams(memory=qe.Memory.Cold),
    "integer": lambda: qe.IntegerIndexParams(lookup=True, range=True, memory=qe.Memory.Cold),
    "float": lambda: qe.FloatIndexParams(memory=qe.Memory.Cold),
    "bool": lambda: qe.BoolIndexParams(memory=qe.Memory.Cold),
}

# -- the shard config and the schema record ------------------------------------------------


def shard_config(schema: CollectionSchema, tuning: ShardTuning, search_threads: int) -> qe.EdgeConfig:
    """The config every process opens ``schema``'s shard with (the engine checks it against
    the shard's segments on load)."""
    dense: dict[str, Any] = {}
    if tuning.dense_storage in ("int8", "disk-int8"):
        dense["quantization_config"] = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99,
                                                                    memory=qe.Memory.Cached)
    if tuning.dense_storage == "disk-int8":
        dense["memory"] = qe.Memory.Cold
    vectors = {DENSE: qe.EdgeVectorParams(size=schema.dense_dimension, distance=qe.Distance.Cosine, **dense)}
    if schema.late_dimension:
        vectors[LATE] = late_params(schema)
    optimizers = {k: v for k, v in (("indexing_threshold", tuning.indexing_threshold_kb),
                                    ("default_segment_number", tuning.segments)) if v}
    return qe.EdgeConfig(
        vectors=vectors,
        sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)} if schema.sparse else None,
        hnsw_config=qe.HnswIndexConfig(m=tuning.hnsw_m, ef_construct=tuning.ef_construct,
                                       full_scan_threshold=tuning.full_scan_threshold_kb,
                                       max_indexing_threads=tuning.max_indexing_threads),
        optimizers=qe.EdgeOptimizersConfig(**optimizers) if optimizers else None,
        max_search_threads=search_threads,
    )


def late_params(schema: CollectionSchema) -> qe.EdgeVectorParams:
    """Token vectors: MaxSim, no HNSW graph (they only rescore), originals on disk, quantised."""
    quantization = {
        "int8": lambda: qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, memory=qe.Memory.Cached),
        "binary": lambda: qe.BinaryQuantizationConfig(memory=qe.Memory.Cached),
        "none": lambda: None,
    }[schema.late_quantization]()
    return qe.EdgeVectorParams(
        size=schema.late_dimension, distance=qe.Distance.Cosine,
        multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
        hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
        quantization_config=quantization, memory=qe.Memory.Cold,
    )


#: The widest search the size rule asks for.
MAX_HNSW_EF = 4096


def hnsw_ef_for(hnsw_ef: int | None, points: int, ef_points: int) -> int | None:
    """The search breadth for a collection of ``points``: ``hnsw_ef`` up to ``ef_points`` points,
    proportionally wider beyond (``ef_points`` 0: always ``hnsw_ef``). Measured at 1M points
    (docs/BENCHMARKS.md): ef 256 kept 0.950 of the exact dense top 100, 512 0.964, 1024 0.997."""
    if not hnsw_ef or not ef_points or points <= ef_points:
        return hnsw_ef
    return min(MAX_HNSW_EF, max(hnsw_ef, round(hnsw_ef * points / ef_points)))


def search_params(hnsw_ef: int | None, tuning: ShardTuning, exact: bool = False) -> qe.SearchParams | None:
    """Search breadth on HNSW segments; with int8 copies, the candidates rescored by the originals."""
    quantized = tuning.dense_storage != "memory"
    if not hnsw_ef and not quantized and not exact:
        return None
    return qe.SearchParams(hnsw_ef=hnsw_ef or None, exact=exact,
                           quantization=qe.QuantizationSearchParams(rescore=True, oversampling=tuning.oversampling)
                           if quantized else None)


def schema_record(schema: CollectionSchema) -> str:
    """The collection's ``collection.json``."""
    return json.dumps({
        "layout_version": LAYOUT_VERSION, "name": schema.name, "dense_dimension": schema.dense_dimension,
        "sparse": schema.sparse, "filter_fields": schema.filter_fields, "metadata": schema.metadata,
        "late_dimension": schema.late_dimension, "late_quantization": schema.late_quantization,
    }, indent=2, sort_keys=True)


def read_schema(path: Path) -> CollectionSchema:
    """The schema recorded at ``path``; FailedPrecondition naming the file when it cannot be read."""
    try:
        raw = json.loads(path.read_text())
        if raw.get("layout_version") != LAYOUT_VERSION:
            raise ValueError(f"layout version {raw.get('layout_version')!r}, this service reads {LAYOUT_VERSION}")
        return CollectionSchema(
            name=raw["name"], dense_dimension=int(raw["dense_dimension"]), sparse=bool(raw["sparse"]),
            filter_fields=dict(raw.get("filter_fields", {})), metadata=dict(raw.get("metadata", {})),
            late_dimension=int(raw.get("late_dimension", 0)), late_quantization=str(raw.get("late_quantization", "int8")),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FailedPrecondition(f"cannot read collection schema {path}: {exc}") from exc


# -- points ---------------------------------------------------------------------------------


def edge_point(p: PointIn) -> qe.Point:
    vectors: dict[str, Any] = {DENSE: list(p.dense)}
    if p.sparse is not None and p.sparse.indices:
        vectors[SPARSE] = qe.SparseVector(indices=list(p.sparse.indices), values=list(p.sparse.values))
    if p.late is not None:
        vectors[LATE] = p.late if isinstance(p.late, list) else [list(row) for row in p.late]
    return qe.Point(p.id, vectors, p.payload)


def scroll(shard: qe.EdgeShard, offset, limit: int, with_vectors: bool, where: Filter | None):
    request = qe.ScrollRequest(offset=offset, limit=limit, with_payload=True, with_vector=with_vectors,
                               filter=edge_filter(where) if where else None)
    records, next_offset = shard.scroll(request)
    page = []
    for r in records:
        vectors = None
        if with_vectors:
            vectors = {}
            for key, value in (r.vector or {}).items():
                if isinstance(value, qe.SparseVector):
                    vectors[key] = SparseVector(tuple(value.indices), tuple(value.values))
                else:
                    vectors[key] = list(value)
        page.append((str(r.id), r.payload or {}, vectors))
    return page, None if next_offset is None else str(next_offset)


def point_in(pid: str, payload: dict[str, Any], vectors: dict[str, Any] | None) -> PointIn:
    """A scrolled point as the engine-neutral point snapshots carry."""
    vectors = dict(vectors or {})
    dense, sparse, late = vectors.pop(DENSE, None), vectors.pop(SPARSE, None), vectors.pop(LATE, None)
    if vectors or dense is None:
        raise FailedPrecondition(f"point {pid} has vectors {sorted(vectors) or 'without dense'} that snapshots do not carry")
    return PointIn(id=pid, dense=dense, sparse=sparse, payload=payload, **({"late": late} if late is not None else {}))


# -- queries and filters --------------------------------------------------------------------


def _vector(vector):
    if isinstance(vector, SparseVector):
        return qe.SparseVector(indices=list(vector.indices), values=list(vector.values))
    return list(vector)


def _nearest(q: Nearest) -> qe.Query:
    return qe.Query.Nearest(_vector(q.vector), using=q.using)


def query_request(q: Nearest | Fused | Rescore, params: qe.SearchParams | None) -> qe.QueryRequest:
    if isinstance(q, Rescore):
        return qe.QueryRequest(limit=q.limit, prefetches=[_prefetch(p, params) for p in q.prefetch],
                               query=qe.Query.Nearest(_rows(q.vector), using=q.using), with_payload=q.with_payload)
    if isinstance(q, Nearest):
        return qe.QueryRequest(limit=q.limit, query=_nearest(q), filter=edge_filter(q.filter) if q.filter else None,
                               params=params, with_payload=q.with_payload)
    fusion = qe.Fusion.Rrf(k=q.rrf_k) if q.method == "rrf" else qe.Fusion.Dbsf()
    prefetch = [
        qe.Prefetch(limit=p.limit, query=_nearest(p), filter=edge_filter(p.filter) if p.filter else None, params=params)
        for p in q.prefetch
    ]
    return qe.QueryRequest(limit=q.limit, prefetches=prefetch, query=fusion, with_payload=True)


def _prefetch(q: Nearest | Fused, params: qe.SearchParams | None) -> qe.Prefetch:
    if isinstance(q, Nearest):
        return qe.Prefetch(limit=q.limit, query=_nearest(q), filter=edge_filter(q.filter) if q.filter else None,
                           params=params)
    fusion = qe.Fusion.Rrf(k=q.rrf_k) if q.method == "rrf" else qe.Fusion.Dbsf()
    return qe.Prefetch(limit=q.limit, query=fusion, prefetches=[_prefetch(p, params) for p in q.prefetch])


def _rows(vector) -> list[list[float]]:
    return vector if isinstance(vector, list) else [list(map(float, row)) for row in vector]


def edge_filter(flt: Filter) -> qe.Filter:
    return qe.Filter(
        must=[_condition(c) for c in flt.must] or None,
        should=[_condition(c) for c in flt.should] or None,
        must_not=[_condition(c) for c in flt.must_not] or None,
    )


def _condition(c):
    if isinstance(c, Filter):
        return edge_filter(c)
    if isinstance(c, Match):
        return qe.FieldCondition(key=c.key, match=qe.MatchValue(value=c.value))
    if isinstance(c, MatchAny):
        return qe.FieldCondition(key=c.key, match=qe.MatchAny(any=list(c.values)))
    if isinstance(c, Range):
        return qe.FieldCondition(key=c.key, range=qe.RangeFloat(gt=c.gt, gte=c.gte, lt=c.lt, lte=c.lte))
    raise TypeError(f"unknown filter condition {c!r}")
