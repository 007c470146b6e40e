"""A collection measures its own lists and fuses with the weight that gives, on both backends
(services/retrieval/calibration.py). The corpus is this project's documentation (the demo
corpus); the sample is cut to 40 documents to keep the real bi-encoder's work small."""

from __future__ import annotations

import time

import pytest

from services.cli.demo import demo_corpus
from services.retrieval import calibration as cal
from services.retrieval.calibration import FusionCalibrator
from services.retrieval.sparse import Bm25SparseEncoder
from services.retrieval.store import DEFAULT_DENSE_WEIGHT, DocumentIn, Fusion
from tests.store.conftest import make_store

SAMPLE = 40


def docs(n: int = SAMPLE + 8) -> list[DocumentIn]:
    return [DocumentIn(d["id"], d["title"], d["text"], {}) for d in demo_corpus()[:n]]


class FirstWords(Bm25SparseEncoder):
    """BM25 that only ever sees the first 8 words of a document: a weak lexical list."""

    def encode_documents(self, texts):
        return super().encode_documents([" ".join(t.split()[:8]) for t in texts])


def wait_idle(calibrator: FusionCalibrator, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not calibrator.idle():
        assert time.monotonic() < deadline, "calibration did not finish"
        time.sleep(0.05)


def test_writes_trigger_a_measurement_that_describe_shows_and_retrieve_uses(store):
    calibrator = FusionCalibrator(store, store.embedder.embed_queries, DEFAULT_DENSE_WEIGHT, SAMPLE, debounce_s=0.05)
    try:
        store.create_collection("c", {})
        batch = docs()
        store.upsert("c", batch[: SAMPLE // 2])
        calibrator.note_writes("c", SAMPLE // 2)
        wait_idle(calibrator)
        assert store.describe("c").calibration is None  # fewer documents than the sample: not measured
        store.upsert("c", batch[SAMPLE // 2 :])
        calibrator.note_writes("c", len(batch) - SAMPLE // 2)
        wait_idle(calibrator)
        measured = store.describe("c").calibration
        assert measured is not None and measured.sample == SAMPLE and measured.documents == len(batch)
        assert 0 < measured.dense_recall <= 1 and 0 < measured.sparse_recall <= 1
        assert measured.dense_weight == cal.dense_weight_for(measured.dense_recall, measured.sparse_recall,
                                                             DEFAULT_DENSE_WEIGHT)
        # Not doubled since: another note measures nothing new.
        calibrator.note_writes("c", 10)
        wait_idle(calibrator)
        assert store.describe("c").calibration == measured
        # The recorded weight is what hybrid retrieval fuses with; a request's weight wins.
        query = "how are deadlines handled"
        implicit, _ = store.retrieve("c", query, 10, mode="hybrid")
        explicit, _ = store.retrieve("c", query, 10, mode="hybrid", fusion_options=Fusion(dense_weight=measured.dense_weight))
        assert [c.id for c in implicit] == [c.id for c in explicit]
        assert [c.score for c in implicit] == pytest.approx([c.score for c in explicit])
    finally:
        calibrator.close()


def test_a_weak_lexical_list_is_found_and_weighted_down(backend, encoder, tmp_path):
    from tests.store.conftest import make_backend

    normal = make_store(backend, encoder)
    weak_backend = make_backend(backend.kind if backend.kind == "edge" else "qdrant", tmp_path / "weak")
    weak = make_store(weak_backend, encoder)
    weak.sparse_encoder = FirstWords()
    try:
        results = {}
        for label, store in (("normal", normal), ("weak", weak)):
            store.create_collection("c", {})
            store.upsert("c", docs())
            calibrator = FusionCalibrator(store, store.embedder.embed_queries, DEFAULT_DENSE_WEIGHT, SAMPLE)
            try:
                results[label] = calibrator.calibrate_if_due("c")
            finally:
                calibrator.close()
        assert results["weak"].sparse_recall < results["normal"].sparse_recall
        assert results["weak"].dense_recall == pytest.approx(results["normal"].dense_recall)
        assert results["weak"].dense_weight > results["normal"].dense_weight
        assert results["weak"].dense_weight > DEFAULT_DENSE_WEIGHT
    finally:
        weak_backend.close()


def test_a_collection_without_sparse_vectors_is_not_measured(store):
    store.create_collection("dense_only", {}, sparse=False)
    store.upsert("dense_only", docs())
    calibrator = FusionCalibrator(store, store.embedder.embed_queries, DEFAULT_DENSE_WEIGHT, SAMPLE)
    try:
        assert calibrator.calibrate_if_due("dense_only", force=True) is None
        assert store.describe("dense_only").calibration is None
    finally:
        calibrator.close()
