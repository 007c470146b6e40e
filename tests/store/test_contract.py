"""One contract for every backend: the same calls give the same answers on Qdrant Edge and
on the Qdrant server backend (ids, payload layout, filters, fusion, idempotent re-upsert,
stale-passage removal, collection metadata)."""

from __future__ import annotations

import pytest

from search.v1 import common_pb2 as c
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.retrieval.filters import to_filter
from services.retrieval.store import DocumentIn, Fusion, point_id
from tests.store.conftest import make_backend, make_store

DOCS = [
    DocumentIn("photosynthesis", "Photosynthesis", "Plants convert sunlight, water and carbon dioxide into glucose and oxygen.", {"topic": "biology", "year": 2019}),
    DocumentIn("volcano", "Volcanoes", "A volcano lets hot lava, ash and gases escape from a magma chamber below the crust.", {"topic": "geology", "year": 2021}),
    DocumentIn("sourdough", "Baking sourdough", "Sourdough bread rises thanks to a fermented starter of wild yeast and lactic acid bacteria.", {"topic": "cooking", "year": 2020}),
    DocumentIn("tides", "Ocean tides", "Tides are the rise and fall of sea level caused by the gravitational pull of the Moon.", {"topic": "geology", "year": 2018}),
    DocumentIn("vaccines", "How vaccines work", "Vaccines train the immune system to recognise a pathogen so antibodies are ready.", {"topic": "biology", "year": 2022}),
]
FIELDS = {"topic": "keyword", "year": "integer"}
FUSIONS = [Fusion(method=m) for m in ("weighted_zscore", "weighted_rrf", "rrf", "dbsf")]


def field(**kw):
    return c.Condition(field=c.FieldCondition(**kw))


@pytest.fixture
def loaded(store):
    store.create_collection("docs", FIELDS)
    assert store.upsert("docs", DOCS) == len(DOCS)
    return store


def test_collection_lifecycle(store):
    desc = store.create_collection("c1", FIELDS)
    assert (desc.name, desc.document_count, desc.point_count, desc.sparse_enabled) == ("c1", 0, 0, True)
    assert desc.filter_fields == FIELDS and desc.dense_dimension == 384 and desc.dense_model == store.embedder.name
    with pytest.raises(AlreadyExists) as taken:
        store.create_collection("c1", {})
    assert str(taken.value) == "collection 'c1' already exists: name another (DeleteCollection removes that one)"
    store.create_collection("c2", {}, sparse=False)
    assert store.list_collections() == ["c1", "c2"]
    assert store.describe("c2").sparse_enabled is False
    store.delete_collection("c1")
    assert store.list_collections() == ["c2"]
    for call in (lambda: store.describe("c1"), lambda: store.delete_collection("c1"),
                 lambda: store.upsert("c1", DOCS[:1]), lambda: store.retrieve("c1", "x", 3)):
        with pytest.raises(NotFound) as missing:
            call()
        assert str(missing.value) == ("collection 'c1' does not exist (ListCollections names those that do; "
                                      "CreateCollection makes one)")  # the same words whatever the call and the backend


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_each_mode_finds_the_relevant_document(loaded, mode):
    for query, expected in {"why does the sea level rise and fall": "tides",
                            "bread starter with wild yeast": "sourdough"}.items():
        candidates, used = loaded.retrieve("docs", query, 3, mode=mode)
        assert used == mode and candidates[0].id == expected, [x.id for x in candidates]
        top = candidates[0]
        assert top.title and top.text and top.payload["topic"]
        assert (top.dense_score is not None) == (mode in ("dense", "hybrid"))


@pytest.mark.parametrize("options", FUSIONS, ids=lambda f: f.method)
def test_every_fusion_ranks_best_first(loaded, options):
    candidates, _ = loaded.retrieve("docs", "immune system antibodies vaccine", 5, mode="hybrid", fusion_options=options)
    assert candidates[0].id == "vaccines"
    scores = [x.score for x in candidates]
    assert scores == sorted(scores, reverse=True) and len({x.id for x in candidates}) == len(candidates)


def test_reupsert_is_idempotent_and_replaces(loaded):
    loaded.upsert("docs", DOCS)
    changed = DocumentIn("tides", "Ocean tides", "Tidal ranges are largest at spring tide.", {"topic": "ocean", "year": 2024})
    loaded.upsert("docs", [changed])
    desc = loaded.describe("docs")
    assert (desc.document_count, desc.point_count) == (len(DOCS), len(DOCS))
    hit = [x for x in loaded.retrieve("docs", "spring tide tidal range", 5, mode="sparse")[0] if x.id == "tides"][0]
    assert hit.payload == {"topic": "ocean", "year": 2024} and hit.text == changed.text


@pytest.mark.parametrize(
    "flt,expected",
    [
        (c.Filter(must=[field(key="topic", keyword="geology")]), {"volcano", "tides"}),
        (c.Filter(must=[field(key="year", range=c.Range(gte=2020, lt=2022))]), {"sourdough", "volcano"}),
        (c.Filter(must=[field(key="topic", any_keyword=c.KeywordList(values=["cooking", "biology"]))]),
         {"sourdough", "photosynthesis", "vaccines"}),
        (c.Filter(must_not=[field(key="topic", keyword="geology")], must=[field(key="year", integer=2019)]),
         {"photosynthesis"}),
        (c.Filter(should=[c.Condition(filter=c.Filter(must=[field(key="topic", keyword="biology"),
                                                             field(key="year", range=c.Range(gt=2020))])),
                          field(key="topic", keyword="cooking")]), {"vaccines", "sourdough"}),
        # A key no payload holds (a typo) makes its condition false: nothing under must, everything under must_not.
        (c.Filter(must=[field(key="topci", keyword="geology")]), set()),
        (c.Filter(must_not=[field(key="topci", keyword="geology")]), {doc.id for doc in DOCS}),
    ],
)
@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_filters_select_the_same_documents(loaded, flt, expected, mode):
    candidates, _ = loaded.retrieve("docs", "science", 10, query_filter=to_filter(flt), mode=mode)
    assert {x.id for x in candidates} == expected


def test_a_value_of_another_type_than_declared_is_refused_and_nothing_is_written(loaded):
    fine = DocumentIn("comets", "Comets", "Icy bodies that grow a tail near the Sun.", {"topic": "astronomy", "year": 2023})
    typed_wrong = DocumentIn("meteors", "Meteors", "Streaks of light from space rock.", {"topic": "astronomy", "year": "2023"})
    with pytest.raises(InvalidArgument) as err:
        loaded.upsert("docs", [fine, typed_wrong])
    assert err.value.field == "documents[1].payload.year" and "the string '2023' is not an integer" in err.value.description
    assert loaded.describe("docs").document_count == len(DOCS)  # neither document: the batch is all or nothing


def test_a_filter_condition_that_cannot_match_the_declared_type_is_refused(loaded):
    flt = to_filter(c.Filter(must=[field(key="year", keyword="2021")]))
    with pytest.raises(InvalidArgument) as err:
        loaded.retrieve("docs", "science", 10, query_filter=flt, mode="dense")
    assert "declares 'year' an integer field (filter_fields): a `keyword` condition on it never matches" in str(err.value)


def test_delete_counts_what_was_there(loaded):
    assert loaded.delete("docs", ["tides", "volcano", "never-stored"]) == 2
    assert loaded.delete("docs", ["tides"]) == 0
    assert loaded.describe("docs").document_count == len(DOCS) - 2
    assert "tides" not in {x.id for x in loaded.retrieve("docs", "sea level moon", 5)[0]}


def test_split_documents_lose_stale_passages(backend, encoder):
    store = make_store(backend, encoder, long_documents="split", window=32)
    store.create_collection("long", {})
    words = " ".join(f"word{i} alpha" for i in range(120))
    store.upsert("long", [DocumentIn("doc", "", words)])
    long_points = store.describe("long").point_count
    assert long_points > 3
    store.upsert("long", [DocumentIn("doc", "", "now a short text")])
    desc = store.describe("long")
    assert (desc.document_count, desc.point_count) == (1, 1)
    assert store.delete("long", ["doc"]) == 1 and store.describe("long").point_count == 0


def test_sparse_mode_on_a_dense_only_collection(store):
    store.create_collection("dense_only", {}, sparse=False)
    store.upsert("dense_only", DOCS)
    with pytest.raises(InvalidArgument, match="no sparse"):
        store.retrieve("dense_only", "lava", 3, mode="sparse")
    candidates, used = store.retrieve("dense_only", "lava and ash from a mountain", 3, mode="hybrid")
    assert used == "dense" and candidates[0].id == "volcano"


def test_model_mismatch_is_refused(loaded, encoder, backend):
    class OtherModel:
        name, dimension, model_dir = "other-model", encoder.dimension, None
        embed_queries = embed_documents = encoder.embed_queries

    other = make_store(backend, OtherModel())
    with pytest.raises(FailedPrecondition, match="other-model"):
        other.retrieve("docs", "lava", 3)
    with pytest.raises(FailedPrecondition):
        other.upsert("docs", DOCS[:1])


def test_scroll_pages_every_point_once_with_vectors(loaded):
    seen, offset = [], None
    while True:
        page, offset = loaded.backend.scroll("docs", offset, 2, True)
        seen.extend(page)
        if offset is None:
            break
    assert sorted(pid for pid, _, _ in seen) == sorted(point_id(d.id) for d in DOCS)
    _, payload, vectors = seen[0]
    assert set(payload) == {"doc_id", "passage", "title", "text", "payload"}
    assert len(vectors["dense"]) == 384 and vectors["sparse"].indices


def test_both_backends_answer_alike(tmp_path, encoder):
    """Same documents, same queries: the same ids in the same order on both engines."""
    stores = {kind: make_store(make_backend(kind, tmp_path / kind), encoder) for kind in ("edge", "qdrant")}
    try:
        for store in stores.values():
            store.create_collection("docs", FIELDS)
            store.upsert("docs", DOCS)
        for mode in ("dense", "sparse", "hybrid"):
            for options in FUSIONS:
                answers = {kind: store.retrieve("docs", "gases and ash, or sea level and the moon", 5, mode=mode,
                                                fusion_options=options)[0] for kind, store in stores.items()}
                edge, server = ([(x.id, round(x.score, 4)) for x in answers[k]] for k in ("edge", "qdrant"))
                assert [i for i, _ in edge] == [i for i, _ in server], (mode, options.method)
                assert [s for _, s in edge] == pytest.approx([s for _, s in server], abs=2e-3), (mode, options.method)
    finally:
        for store in stores.values():
            store.backend.close()
