"""The engine-neutral language of ``base.py`` in an engine's own types: one walk, one table of
builders per engine.

A backend describes its engine once, as an :class:`EngineTypes` (``edge_shard.EDGE``,
``qdrant_server.SERVER``): how that engine builds a filter, each kind of condition, a sparse
vector, a point, the "nearest to this vector" and fusion parts of a query, a prefetch and a
query request, and which payload index each field type gets. Everything else is written here
once for every engine: which condition kind is which (:data:`CONDITIONS`), how a fused or
rescored query nests its prefetches, which named vectors a point carries, the payload indexes
a collection gets, the schema record each engine keeps, and a scrolled point read back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.errors import FailedPrecondition
from services.retrieval.backends.base import (
    CALLER_PAYLOAD, DENSE, DOC_ID, LATE, PASSAGE, SPARSE, CollectionSchema, Filter, Fused, Match, MatchAny,
    Nearest, PointIn, Range, Rescore, SparseVector,
)


@dataclass(frozen=True)
class EngineTypes:
    """How one engine builds each part of the language (every builder takes keywords)."""

    #: ``filter(must=, should=, must_not=)``, each a list of built conditions or None.
    filter: Callable[..., Any]
    #: ``match(key, value)``: the field equals a keyword, an integer or a boolean.
    match: Callable[[str, str | int | bool], Any]
    #: ``match_any(key, values)``: the field equals one of the keywords or integers.
    match_any: Callable[[str, list], Any]
    #: ``range(key, gt=, gte=, lt=, lte=)``, unset bounds None.
    range: Callable[..., Any]
    sparse_vector: Callable[[list[int], list[float]], Any]
    #: The engine's sparse vector type, as scrolled points carry it.
    sparse_type: type
    #: ``point(id, vectors, payload)``, vectors by name.
    point: Callable[[Any, dict[str, Any], dict[str, Any]], Any]
    #: ``nearest(vector, using)``: the keywords that make a request or prefetch rank by ``using``.
    nearest: Callable[[Any, str], dict[str, Any]]
    #: ``fusion(method, rrf_k)``: the keywords that make it fuse its prefetches (``rrf`` or ``dbsf``).
    fusion: Callable[[str, int], dict[str, Any]]
    #: ``prefetch(limit=, filter=, params=, prefetches=, **nearest or fusion)``.
    prefetch: Callable[..., Any]
    #: ``request(limit=, filter=, params=, prefetches=, with_payload=, **nearest or fusion)``.
    request: Callable[..., Any]
    #: The payload index of each field type (base.FIELD_TYPES).
    index_types: dict[str, Any]


# -- filters -------------------------------------------------------------------------------

#: Every kind of condition of the filter language and what it is made of.
CONDITIONS: dict[type, Callable[[EngineTypes, Any], Any]] = {
    Match: lambda engine, c: engine.match(c.key, c.value),
    MatchAny: lambda engine, c: engine.match_any(c.key, list(c.values)),
    Range: lambda engine, c: engine.range(c.key, gt=c.gt, gte=c.gte, lt=c.lt, lte=c.lte),
    Filter: lambda engine, c: engine_filter(engine, c),
}


def engine_filter(engine: EngineTypes, flt: Filter | None) -> Any:
    """``flt`` in the engine's types (None stays None)."""
    if flt is None:
        return None
    return engine.filter(must=_conditions(engine, flt.must), should=_conditions(engine, flt.should),
                         must_not=_conditions(engine, flt.must_not))


def _conditions(engine: EngineTypes, conditions: Sequence[Any]) -> list[Any] | None:
    built = []
    for c in conditions:
        build = CONDITIONS.get(type(c))
        if build is None:
            raise TypeError(f"unknown filter condition {c!r}")
        built.append(build(engine, c))
    return built or None


# -- queries -------------------------------------------------------------------------------


def vector(engine: EngineTypes, v: Sequence[float] | SparseVector) -> Any:
    if isinstance(v, SparseVector):
        return engine.sparse_vector(list(v.indices), list(v.values))
    return list(v)


def rows(v: Sequence[Sequence[float]]) -> list[list[float]]:
    """Token vectors (a multivector) as lists of floats."""
    return v if isinstance(v, list) else [list(map(float, row)) for row in v]


def query_request(engine: EngineTypes, q: Nearest | Fused | Rescore, params: Any) -> Any:
    """One query of the language as the engine's request; ``params`` (the engine's search
    parameters, or None) apply to every nearest-vector search in it."""
    if isinstance(q, Nearest):
        return engine.request(limit=q.limit, filter=engine_filter(engine, q.filter), params=params,
                              with_payload=q.with_payload, **engine.nearest(vector(engine, q.vector), q.using))
    prefetches = [_prefetch(engine, p, params) for p in q.prefetch]
    if isinstance(q, Rescore):
        return engine.request(limit=q.limit, prefetches=prefetches, with_payload=q.with_payload,
                              **engine.nearest(rows(q.vector), q.using))
    return engine.request(limit=q.limit, prefetches=prefetches, with_payload=True, **engine.fusion(q.method, q.rrf_k))


def _prefetch(engine: EngineTypes, q: Nearest | Fused, params: Any) -> Any:
    if isinstance(q, Nearest):
        return engine.prefetch(limit=q.limit, filter=engine_filter(engine, q.filter), params=params,
                               **engine.nearest(vector(engine, q.vector), q.using))
    return engine.prefetch(limit=q.limit, prefetches=[_prefetch(engine, p, params) for p in q.prefetch],
                           **engine.fusion(q.method, q.rrf_k))


# -- points --------------------------------------------------------------------------------


def engine_point(engine: EngineTypes, p: PointIn) -> Any:
    """A point to write, with its named vectors (a sparse vector only when it has terms)."""
    vectors: dict[str, Any] = {DENSE: list(p.dense)}
    if p.sparse is not None and p.sparse.indices:
        vectors[SPARSE] = engine.sparse_vector(list(p.sparse.indices), list(p.sparse.values))
    if p.late is not None:
        vectors[LATE] = rows(p.late)
    return engine.point(p.id, vectors, p.payload)


def scrolled(engine: EngineTypes, records: Sequence[Any], with_vectors: bool) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """Scrolled records (``id``, ``payload``, ``vector`` attributes) as ``(id, payload, vectors)``."""
    page = []
    for r in records:
        vectors = None
        if with_vectors:
            vectors = {}
            for key, value in (r.vector or {}).items():
                if isinstance(value, engine.sparse_type):
                    vectors[key] = SparseVector(tuple(value.indices), tuple(value.values))
                else:
                    vectors[key] = list(value)
        page.append((str(r.id), r.payload or {}, vectors))
    return page


def point_in(pid: str, payload: dict[str, Any], vectors: dict[str, Any] | None) -> PointIn:
    """A scrolled point (with its vectors) as a point to write again: snapshots, reindex."""
    vectors = dict(vectors or {})
    dense, sparse, late = vectors.pop(DENSE, None), vectors.pop(SPARSE, None), vectors.pop(LATE, None)
    if vectors or dense is None:
        raise FailedPrecondition(f"point {pid} has vectors {sorted(vectors) or 'without dense'} that snapshots do not carry")
    return PointIn(id=pid, dense=dense, sparse=sparse, payload=payload, late=late)


# -- collections ---------------------------------------------------------------------------


def payload_indexes(schema: CollectionSchema) -> dict[str, str]:
    """Every payload index of a collection, key -> field type: the store's own keys and the
    caller's declared filter fields."""
    return {DOC_ID: "keyword", PASSAGE: "integer",
            **{f"{CALLER_PAYLOAD}.{key}": kind for key, kind in schema.filter_fields.items()}}


def schema_record(schema: CollectionSchema) -> dict[str, Any]:
    """What an engine keeps of a collection's schema (beside its name), as JSON values."""
    return {"dense_dimension": schema.dense_dimension, "sparse": schema.sparse, "filter_fields": schema.filter_fields,
            "metadata": schema.metadata, "late_dimension": schema.late_dimension,
            "late_quantization": schema.late_quantization}


def schema_from_record(name: str, raw: dict[str, Any]) -> CollectionSchema:
    """The schema :func:`schema_record` kept (older records lack the late-interaction keys)."""
    return CollectionSchema(
        name=name, dense_dimension=int(raw["dense_dimension"]), sparse=bool(raw["sparse"]),
        filter_fields=dict(raw.get("filter_fields") or {}), metadata=dict(raw.get("metadata") or {}),
        late_dimension=int(raw.get("late_dimension", 0)), late_quantization=str(raw.get("late_quantization", "int8")),
    )
