"""What only the embedded engine has: its files. Reopening, a second process, a damaged
collection, and data left by the old local-mode store."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.common.errors import FailedPrecondition
from services.retrieval.backends.edge import EdgeBackend
from services.retrieval.backends.legacy_local import import_legacy, legacy_collections
from services.retrieval.store import DocumentIn
from tests.store.conftest import make_store
from tests.store.test_contract import DOCS, FIELDS

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_collections_survive_reopening(tmp_path, encoder):
    store = make_store(EdgeBackend(tmp_path), encoder)
    store.create_collection("docs", FIELDS)
    store.upsert("docs", DOCS)
    before = store.retrieve("docs", "lava and ash", 5)[0]
    store.backend.close()
    reopened = make_store(EdgeBackend(tmp_path), encoder)
    try:
        assert reopened.describe("docs").document_count == len(DOCS)
        assert reopened.describe("docs").filter_fields == FIELDS
        assert reopened.retrieve("docs", "lava and ash", 5)[0] == before
    finally:
        reopened.backend.close()


def test_a_second_process_is_refused_with_the_path(tmp_path, encoder):
    store = make_store(EdgeBackend(tmp_path), encoder)
    store.create_collection("docs", FIELDS)
    try:
        code = (f"from services.retrieval.backends.edge import EdgeBackend\n"
                f"EdgeBackend({str(tmp_path)!r})")
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
        assert run.returncode != 0
        assert "could not open the shard of collection 'docs'" in run.stderr and "Kind(WouldBlock)" in run.stderr
        assert str(tmp_path / "collections" / "docs") in run.stderr
        assert store.describe("docs").name == "docs"  # the first process still serves
    finally:
        store.backend.close()


def test_a_damaged_collection_stops_the_start_and_is_left_alone(tmp_path, encoder):
    store = make_store(EdgeBackend(tmp_path), encoder)
    store.create_collection("docs", FIELDS)
    store.upsert("docs", DOCS)
    store.backend.close()
    schema = tmp_path / "collections" / "docs" / "collection.json"
    schema.write_text("{not json")
    with pytest.raises(FailedPrecondition, match=str(schema)):
        EdgeBackend(tmp_path)
    assert schema.read_text() == "{not json"
    segments = tmp_path / "collections" / "docs" / "shard"
    assert any(segments.rglob("*")), "the shard's files are untouched"


def test_old_local_mode_data_is_detected_and_imported_without_reembedding(tmp_path, encoder):
    from qdrant_client import QdrantClient, models

    from services.retrieval.backends.qdrant_server import QdrantServerBackend

    # Written as the old store wrote it: local mode, the schema flat in the metadata.
    legacy_path = tmp_path / "qdrant"
    client = QdrantClient(path=str(legacy_path))
    client.create_collection(
        "docs", vectors_config={"dense": models.VectorParams(size=384, distance=models.Distance.COSINE)},
        sparse_vectors_config={"sparse": models.SparseVectorParams(modifier=models.Modifier.IDF)},
        metadata={"dense_model": encoder.name, "filter_fields": FIELDS, "sparse": True, "long_documents": "truncate"},
    )
    old = make_store(QdrantServerBackend(client), encoder)
    old.upsert("docs", DOCS)
    expected = old.retrieve("docs", "bread starter", 5)[0]
    old.backend.close()
    assert legacy_collections(legacy_path) == ["docs"]

    class NoEmbedding:  # importing must not embed anything
        name, dimension, model_dir = encoder.name, encoder.dimension, encoder.model_dir

        def embed_documents(self, texts):
            raise AssertionError("import re-embedded documents")

        embed_queries = encoder.embed_queries

    target = EdgeBackend(tmp_path / "edge")
    try:
        assert import_legacy(legacy_path, target) == {"docs": len(DOCS)}
        assert import_legacy(legacy_path, target) == {}  # already there: nothing overwritten
        new = make_store(target, NoEmbedding())
        desc = new.describe("docs")
        assert (desc.document_count, desc.filter_fields, desc.dense_model) == (len(DOCS), FIELDS, encoder.name)
        got = new.retrieve("docs", "bread starter", 5)[0]
        assert [x.id for x in got] == [x.id for x in expected]
        assert [x.score for x in got] == pytest.approx([x.score for x in expected], abs=1e-3)
        with pytest.raises(AssertionError, match="re-embedded"):
            new.upsert("docs", [DocumentIn("x", "", "y")])
    finally:
        target.close()


def test_searchctl_store_commands(tmp_path, encoder):
    """`searchctl store import-local` then `store optimize`, as a user runs them."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(tmp_path))
    client.create_collection("docs", vectors_config={"dense": models.VectorParams(size=4, distance=models.Distance.COSINE)},
                             metadata={"dense_model": "m", "filter_fields": {}, "sparse": False})
    client.upsert("docs", points=[models.PointStruct(id=i, vector={"dense": [1.0, i, 0.5, 0.1]}, payload={"doc_id": str(i), "passage": 0})
                                  for i in range(300)])
    client.close()

    def searchctl(*args):
        return subprocess.run([sys.executable, "-m", "services.cli", "store", *args], capture_output=True, text=True,
                              cwd=REPO_ROOT, timeout=300)

    run = searchctl("import-local", "--path", str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert "imported 'docs': 300 points" in run.stdout
    again = searchctl("import-local", "--path", str(tmp_path))
    assert "skipped 'docs'" in again.stdout
    optimized = searchctl("optimize", "--path", str(tmp_path))
    assert optimized.returncode == 0, optimized.stderr
    assert "docs:" in optimized.stdout and "300 points" in optimized.stdout
    backend = EdgeBackend(tmp_path)
    try:
        assert backend.count("docs") == 300
        held = searchctl("optimize", "--path", str(tmp_path))  # this process holds the shard
        assert held.returncode == 1 and "shard locked" in held.stderr and "another retrieval service" in held.stderr
    finally:
        backend.close()
