"""The filter and query language in each engine's types (services/retrieval/backends/translation.py):
every kind of condition selects the same points on Qdrant Edge and on the server backend
(qdrant-client's local mode), in counts, scrolls, deletes and queries, on indexed and on
unindexed fields."""

from __future__ import annotations

from typing import get_args

import pytest
import qdrant_edge as qe

from services.common.errors import FailedPrecondition
from services.retrieval.backends import base, translation
from services.retrieval.backends.base import DENSE, SPARSE, Filter, Match, MatchAny, Nearest, Range
from services.retrieval.backends.edge_shard import EDGE
from services.retrieval.backends.qdrant_server import SERVER

#: Declared filter fields (payload indexes); "flag" and "n" are left unindexed, "kw" and "rank"
#: are both declared and used, so each condition kind runs on an index and without one.
FIELDS = {"kw": "keyword", "rank": "integer", "score": "float", "on": "bool"}
PAYLOADS = {
    1: {"kw": "a", "rank": 1, "score": 0.5, "on": True, "flag": True, "n": 10},
    2: {"kw": "b", "rank": 2, "score": 1.5, "on": False, "flag": False, "n": 20},
    3: {"kw": "c", "rank": 3, "score": 2.5, "on": True, "flag": True, "n": 30},
    4: {"kw": "a", "rank": 4, "score": 3.5, "on": False, "flag": False, "n": 40},
}


def key(name: str) -> str:
    return f"{base.CALLER_PAYLOAD}.{name}"


CASES = [
    (Match(key("kw"), "a"), {1, 4}),
    (Match(key("rank"), 3), {3}),
    (Match(key("n"), 20), {2}),
    (Match(key("on"), True), {1, 3}),
    (Match(key("on"), False), {2, 4}),
    (Match(key("flag"), True), {1, 3}),
    (Match(key("flag"), False), {2, 4}),
    (MatchAny(key("kw"), ("b", "c")), {2, 3}),
    (MatchAny(key("rank"), (1, 4)), {1, 4}),
    (MatchAny(key("n"), (30, 40)), {3, 4}),
    (Range(key("score"), gt=1.5), {3, 4}),
    (Range(key("score"), gte=1.5), {2, 3, 4}),
    (Range(key("n"), lt=20), {1}),
    (Range(key("n"), lte=20, gt=10), {2}),
    (Filter(should=(Match(key("kw"), "c"), Filter(must=(Match(key("flag"), False), Range(key("rank"), gte=4))))), {3, 4}),
]


def pid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


@pytest.fixture
def points(backend):
    backend.create_collection(base.CollectionSchema("t", 4, True, filter_fields=FIELDS))
    backend.upsert("t", [
        base.PointIn(id=pid(n), dense=[1.0, float(n), 0.0, 0.5], sparse=base.SparseVector((n,), (1.0,)),
                     payload={base.DOC_ID: str(n), base.PASSAGE: 0, base.CALLER_PAYLOAD: payload})
        for n, payload in PAYLOADS.items()
    ])
    return backend


def selected(backend, where: Filter) -> set[int]:
    page, _ = backend.scroll("t", None, 100, False, where)
    return {int(payload[base.DOC_ID]) for _, payload, _ in page}


@pytest.mark.parametrize("condition,expected", CASES, ids=lambda v: repr(v)[:60] if not isinstance(v, set) else "")
def test_each_condition_kind_selects_the_same_points(points, condition, expected):
    must, must_not = Filter(must=(condition,)), Filter(must_not=(condition,))
    assert selected(points, must) == expected
    assert points.count("t", must) == len(expected)
    assert selected(points, must_not) == set(PAYLOADS) - expected
    hits = points.query("t", [Nearest(DENSE, [1.0, 1.0, 0.0, 0.5], 10, must),
                              Nearest(SPARSE, base.SparseVector((1, 2, 3, 4), (1.0,) * 4), 10, must)])
    assert [{int(h.payload[base.DOC_ID]) for h in found} for found in hits] == [expected, expected]


def test_a_filtered_delete_removes_exactly_what_it_selects(points):
    points.delete_where("t", Filter(must=(Match(key("flag"), True),)))
    assert selected(points, Filter()) == {2, 4}


def test_every_condition_kind_and_field_type_has_a_builder_on_each_engine():
    assert set(translation.CONDITIONS) == set(get_args(base.Condition))
    for engine in (EDGE, SERVER):
        assert set(engine.index_types) == set(base.FIELD_TYPES)


def test_qdrant_edge_reads_a_python_bool_as_an_integer(tmp_path):
    """The engine quirk the Edge builder works around: a plain ``True`` becomes the integer 1,
    which matches no boolean payload value. When this fails, the binding was fixed and the
    numpy bool in edge_shard._match can go."""
    config = qe.EdgeConfig(vectors={DENSE: qe.EdgeVectorParams(size=2, distance=qe.Distance.Cosine)})
    shard = qe.EdgeShard.create(str(tmp_path / "shard"), config)
    try:
        shard.update(qe.UpdateOperation.upsert_points([qe.Point(1, {DENSE: [1.0, 0.0]}, {"flag": True})]))
        assert type(qe.MatchValue(value=True).value) is int
        plain = qe.FieldCondition(key="flag", match=qe.MatchValue(value=True))
        assert shard.count(qe.CountRequest(exact=True, filter=qe.Filter(must=[plain]))) == 0
        translated = translation.engine_filter(EDGE, Filter(must=(Match("flag", True),)))
        assert shard.count(qe.CountRequest(exact=True, filter=translated)) == 1
    finally:
        shard.close()


def test_a_scrolled_point_is_written_back_whole_or_refused():
    point = translation.point_in("p", {"doc_id": "d"}, {DENSE: [1.0], SPARSE: base.SparseVector((1,), (2.0,)),
                                                       base.LATE: [[0.5]]})
    assert (point.dense, point.sparse.indices, point.late) == ([1.0], (1,), [[0.5]])
    with pytest.raises(FailedPrecondition, match="other"):
        translation.point_in("p", {}, {DENSE: [1.0], "other": [1.0]})
    with pytest.raises(FailedPrecondition, match="without dense"):
        translation.point_in("p", {}, {SPARSE: base.SparseVector((1,), (2.0,))})


def test_the_schema_record_reads_back_and_older_records_still_read():
    schema = base.CollectionSchema("c", 8, False, {"k": "keyword"}, {"m": 1}, late_dimension=4, late_quantization="binary")
    assert translation.schema_from_record("c", translation.schema_record(schema)) == schema
    old = translation.schema_from_record("c", {"dense_dimension": 8, "sparse": True})
    assert (old.filter_fields, old.metadata, old.late_dimension, old.late_quantization) == ({}, {}, 0, "int8")
