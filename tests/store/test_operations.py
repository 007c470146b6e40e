"""The operations contract, on both backends: aliases, documents by id, snapshots (export and
restore, results identical), reindex with writes during the copy, and the model guard."""

from __future__ import annotations

import threading

import pytest

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.retrieval import model_guard, reindex as reindexing, snapshots
from services.retrieval.aliases import Aliases, WriteGate
from services.retrieval.store import DocumentIn
from tests.store.conftest import make_store
from tests.store.test_contract import DOCS, FIELDS


@pytest.fixture
def loaded(store):
    store.create_collection("docs", FIELDS)
    store.upsert("docs", DOCS)
    return store


def ranking(store, name, query="why does the sea level rise and fall", mode="hybrid"):
    return [(c.id, round(c.score, 4)) for c in store.retrieve(name, query, 5, mode=mode)[0]]


def test_aliases_create_switch_delete_list(loaded):
    aliases = Aliases(loaded.backend)
    loaded.create_collection("docs2", {})
    aliases.create("live", "docs")
    assert aliases.all() == {"live": "docs"} and aliases.resolve("live") == "docs" and aliases.resolve("docs") == "docs"
    assert aliases.of("docs") == ["live"]
    with pytest.raises(AlreadyExists):
        aliases.create("live", "docs2")
    with pytest.raises(AlreadyExists):  # an alias cannot take a collection's name
        aliases.create("docs2", "docs")
    with pytest.raises(NotFound):
        aliases.create("other", "nope")
    with pytest.raises(InvalidArgument):  # aliases point to collections only
        aliases.create("other", "live")
    with pytest.raises(FailedPrecondition):  # compare-and-swap
        aliases.switch("live", "docs2", expected="docs2")
    assert aliases.switch("live", "docs2", expected="docs") == "docs"
    assert aliases.resolve("live") == "docs2"
    with pytest.raises(NotFound, match=r"^alias 'nope' does not exist \(ListAliases names those that do; CreateAlias makes one\)$"):
        aliases.switch("nope", "docs")
    with pytest.raises(FailedPrecondition):
        aliases.check_deletable("docs2")
    with pytest.raises(AlreadyExists):
        aliases.check_collection_name_free("live")
    aliases.delete("live")
    assert aliases.all() == {}
    with pytest.raises(NotFound, match=r"^alias 'live' does not exist \(ListAliases"):  # the same words on both backends
        aliases.delete("live")


def test_aliases_survive_reopening(tmp_path, encoder):
    from tests.store.conftest import make_backend

    for kind in ("edge", "qdrant"):
        backend = make_backend(kind, tmp_path / kind)
        make_store(backend, encoder).create_collection("docs", {})
        Aliases(backend).create("live", "docs")
        backend.close()
        backend = make_backend(kind, tmp_path / kind)
        assert Aliases(backend).all() == {"live": "docs"}, kind
        backend.close()


def test_get_documents_by_id_in_order_with_payload(loaded):
    docs = loaded.get_documents("docs", ["tides", "missing", "photosynthesis"])
    assert [d.id for d in docs] == ["tides", "photosynthesis"]
    assert docs[0].payload == {"topic": "geology", "year": 2018} and docs[0].text == DOCS[3].text
    assert docs[0].title == "Ocean tides"


def test_get_documents_joins_the_passages_of_a_split_document(backend, encoder):
    store = make_store(backend, encoder, long_documents="split", window=32)
    store.create_collection("long", {})
    text = " ".join(f"sentence number {i} talks about topic {i % 7}." for i in range(60))
    store.upsert("long", [DocumentIn("d", "Long", text, {"k": 1})])
    assert store.describe("long").point_count > 1
    [doc] = store.get_documents("long", ["d"])
    assert doc.text == text and doc.payload == {"k": 1}


def test_snapshot_restores_identical_results(loaded):
    parts = list(snapshots.export_parts(loaded.backend, "docs"))
    head = parts[0][0]
    assert head.point_count == len(DOCS) and head.collection == "docs" and head.method in ("copy", "scroll")
    written = snapshots.restore(loaded.backend, "restored", head, [p for _, p in parts[1:]])
    assert written == len(DOCS)
    for mode in ("dense", "sparse", "hybrid"):
        assert ranking(loaded, "restored", mode=mode) == ranking(loaded, "docs", mode=mode)
    assert loaded.describe("restored").filter_fields == FIELDS
    assert loaded.get_documents("restored", ["volcano"]) == loaded.get_documents("docs", ["volcano"])


def test_snapshot_is_consistent_while_writes_go_on(loaded):
    with loaded.backend.snapshot_points("docs") as snap:
        loaded.upsert("docs", [DocumentIn("late", "Late", "written after the snapshot was taken", {})])
        ids = {p.payload["doc_id"] for p in snap.points}
    if snap.method == "copy":  # the Edge copy is point-in-time; a server scroll reads what is there
        assert "late" not in ids and len(ids) == len(DOCS)


def test_a_truncated_snapshot_restores_nothing(loaded):
    parts = list(snapshots.export_parts(loaded.backend, "docs"))
    with pytest.raises(FailedPrecondition, match="truncated"):
        snapshots.restore(loaded.backend, "half", parts[0][0], [parts[1][1][:2]])
    assert "half" not in loaded.list_collections()


def test_snapshot_file_round_trip(loaded, tmp_path):
    from search.v1 import search_service_pb2 as pb

    messages = [pb.ExportSnapshotResponse(header=h) if h else pb.ExportSnapshotResponse(points=p)
                for h, p in snapshots.export_parts(loaded.backend, "docs")]
    path = tmp_path / "docs.snapshot"
    with open(path, "wb") as out:
        assert snapshots.write_file(out, messages) == len(DOCS)
    with open(path, "rb") as f:
        assert list(snapshots.read_file(f, pb.ExportSnapshotResponse)) == messages
    path.write_bytes(path.read_bytes()[:-10])
    with open(path, "rb") as f, pytest.raises(ValueError, match="truncated"):
        list(snapshots.read_file(f, pb.ExportSnapshotResponse))


@pytest.mark.parametrize("reembed", [False, True])
def test_reindex_switches_the_alias_and_keeps_writes_made_during_the_copy(loaded, reembed, monkeypatch):
    aliases, gate = Aliases(loaded.backend), WriteGate()
    aliases.create("live", "docs")
    monkeypatch.setattr(reindexing, "PAGE", 2)  # several pages, so writes land mid-copy
    seen = []

    def progress(p):
        seen.append(p.phase)
        if p.phase == reindexing.COPYING and p.copied == 2:  # a write through the alias during the copy
            with gate.writing():
                name = aliases.resolve("live")
                gate.note(name, ["tides", "photosynthesis"])
                loaded.upsert(name, [DocumentIn("tides", "Ocean tides", "Spring tides are the highest.", {"topic": "ocean"})])
                loaded.delete(name, ["photosynthesis"])

    done = reindexing.reindex(loaded, aliases, gate, "live", "docs-v2", reembed=reembed, progress=progress)
    assert done.phase == reindexing.DONE and done.target == "docs-v2" and done.reembedded == reembed
    assert seen[0] == reindexing.COPYING and reindexing.CATCHING_UP in seen
    assert aliases.resolve("live") == "docs-v2" and "docs" in loaded.list_collections()
    [tides] = loaded.get_documents("docs-v2", ["tides"])
    assert tides.text == "Spring tides are the highest." and tides.payload == {"topic": "ocean"}
    assert loaded.get_documents("docs-v2", ["photosynthesis"]) == []
    assert loaded.describe("docs-v2").document_count == len(DOCS) - 1
    if not reembed:
        assert ranking(loaded, "docs-v2") == ranking(loaded, "docs")


def test_reindex_of_a_plain_collection_replaces_it_by_an_alias(loaded):
    aliases = Aliases(loaded.backend)
    done = reindexing.reindex(loaded, aliases, WriteGate(), "docs")
    assert done.target.startswith("docs-") and aliases.all() == {"docs": done.target}
    assert loaded.list_collections() == [done.target]
    assert [c.id for c in loaded.retrieve(aliases.resolve("docs"), "sourdough starter", 1)[0]] == ["sourdough"]


def test_reindex_adds_fields_but_neither_retypes_one_nor_passes_the_limit(loaded):
    from services.common.validation import MAX_FILTER_FIELDS

    aliases = Aliases(loaded.backend)
    with pytest.raises(InvalidArgument, match="declares 'year' an integer field; a reindex adds fields, it does not change"):
        reindexing.reindex(loaded, aliases, WriteGate(), "docs", "docs-v2", add_filter_fields={"year": "keyword"})
    many = {f"f{i}": "keyword" for i in range(MAX_FILTER_FIELDS - len(FIELDS) + 1)}
    with pytest.raises(InvalidArgument, match=f"'docs' declares {len(FIELDS)} fields; with these it would have "
                                              f"{MAX_FILTER_FIELDS + 1}, more than {MAX_FILTER_FIELDS}"):
        reindexing.reindex(loaded, aliases, WriteGate(), "docs", "docs-v2", add_filter_fields=many)
    assert loaded.list_collections() == ["docs"] and aliases.all() == {}
    done = reindexing.reindex(loaded, aliases, WriteGate(), "docs", "docs-v2", add_filter_fields={"year": "integer"})
    assert loaded.describe(done.target).filter_fields == FIELDS  # declared already, with the same type: no change


def test_a_cancelled_reindex_leaves_nothing_behind(loaded):
    aliases = Aliases(loaded.backend)
    aliases.create("live", "docs")
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(reindexing.Cancelled):
        reindexing.reindex(loaded, aliases, WriteGate(), "live", "docs-v2", cancelled=cancelled)
    assert loaded.list_collections() == ["docs"] and aliases.all() == {"live": "docs"}


def test_model_guard_names_both_models_and_the_reindex_command(loaded, encoder):
    schema = loaded.backend.schema("docs")
    recorded = schema.metadata["models"]
    assert recorded["dense"]["name"] == encoder.name and len(recorded["dense"]["sha256"]) == 64
    assert recorded["sparse"] == {"analyzer": "bm25", "version": model_guard.SPARSE_ANALYZER_VERSION}
    other = make_store(loaded.backend, encoder)
    other._identity = model_guard.ModelIdentity(encoder.name, "f" * 64)
    for call in (lambda: other.retrieve("docs", "tides", 3), lambda: other.upsert("docs", DOCS[:1])):
        with pytest.raises(FailedPrecondition) as err:
            call()
        message = err.value.message
        assert recorded["dense"]["sha256"][:12] in message and "ffffffffffff" in message
        assert "searchctl reindex docs" in message
    # The reindex re-embeds with the loaded models; the new collection passes the guard.
    done = reindexing.reindex(other, Aliases(loaded.backend), WriteGate(), "docs", "docs-new")
    assert done.reembedded
    assert other.retrieve("docs-new", "sourdough starter", 1)[0][0].id == "sourdough"
