"""Qdrant Edge's types: a collection's shard config and search parameters, its schema record,
and the engine's builders of the filter and query language (:data:`EDGE`, walked by
translation.py).

The serving process (``edge.py``), the optimizer's child process (``edge_optimizer.py``) and
snapshots all open shards with :func:`shard_config`, so a shard is never loaded with a
config that disagrees with the one it was written with (the engine refuses that: a late-
interaction collection optimized with a config lacking its token vectors failed to load).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from services.common.errors import FailedPrecondition
from services.retrieval.backends import translation
from services.retrieval.backends.base import (
    DENSE, LATE, SPARSE, CollectionSchema, Filter, Fused, Nearest, PointIn, Rescore,
)
from services.retrieval.backends.edge_tuning import ShardTuning
from services.retrieval.backends.translation import (
    EngineTypes, engine_filter, engine_point, schema_from_record, scrolled,
)

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
    record = {"layout_version": LAYOUT_VERSION, "name": schema.name, **translation.schema_record(schema)}
    return json.dumps(record, indent=2, sort_keys=True)


def read_schema(path: Path) -> CollectionSchema:
    """The schema recorded at ``path``; FailedPrecondition naming the file when it cannot be read."""
    try:
        raw = json.loads(path.read_text())
        if raw.get("layout_version") != LAYOUT_VERSION:
            raise ValueError(f"layout version {raw.get('layout_version')!r}, this service reads {LAYOUT_VERSION}")
        return schema_from_record(raw["name"], raw)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FailedPrecondition(f"cannot read collection schema {path}: {exc}") from exc


# -- points, queries and filters: the walk is translation.py's --------------------------


def _match(key: str, value: str | int | bool) -> qe.FieldCondition:
    # qdrant-edge-py 0.9 reads a Python bool as the integer 1 or 0 (bool is an int, and its
    # argument conversion tries integers first), and an integer never equals a boolean payload
    # value: such a filter matched nothing. numpy's bool is no int, so it reaches the engine
    # as a boolean (docs/UPSTREAM-qdrant-edge-bool-match.md).
    return qe.FieldCondition(key=key, match=qe.MatchValue(value=np.bool_(value) if isinstance(value, bool) else value))


#: Qdrant Edge's builders of the filter and query language (services/retrieval/backends/translation.py).
EDGE = EngineTypes(
    filter=qe.Filter,
    match=_match,
    match_any=lambda key, values: qe.FieldCondition(key=key, match=qe.MatchAny(any=values)),
    range=lambda key, **bounds: qe.FieldCondition(key=key, range=qe.RangeFloat(**bounds)),
    sparse_vector=lambda indices, values: qe.SparseVector(indices=indices, values=values),
    sparse_type=qe.SparseVector,
    point=qe.Point,
    nearest=lambda vector, using: {"query": qe.Query.Nearest(vector, using=using)},
    fusion=lambda method, k: {"query": qe.Fusion.Rrf(k=k) if method == "rrf" else qe.Fusion.Dbsf()},
    prefetch=qe.Prefetch,
    request=qe.QueryRequest,
    index_types=INDEX_TYPES,
)


def edge_filter(flt: Filter) -> qe.Filter:
    return engine_filter(EDGE, flt)


def edge_point(p: PointIn) -> qe.Point:
    return engine_point(EDGE, p)


def query_request(q: Nearest | Fused | Rescore, params: qe.SearchParams | None) -> qe.QueryRequest:
    return translation.query_request(EDGE, q, params)


def scroll(shard: qe.EdgeShard, offset, limit: int, with_vectors: bool, where: Filter | None):
    request = qe.ScrollRequest(offset=offset, limit=limit, with_payload=True, with_vector=with_vectors,
                               filter=engine_filter(EDGE, where))
    records, next_offset = shard.scroll(request)
    return scrolled(EDGE, records, with_vectors), None if next_offset is None else str(next_offset)
