"""A document is its title and its text, on both backends: a document with a title
and no text is indexed by its title in every path that builds the indexed text (upsert in
truncate and split mode, the late-interaction stage, reindex copying or re-embedding), and is
returned as stored: its text empty, never the title copied in."""

from __future__ import annotations

import numpy as np
import pytest

from services.common import validation
from services.retrieval import reindex as reindexing
from services.retrieval.aliases import Aliases, WriteGate
from services.retrieval.store import DocumentIn, LateInteraction
from tests.store.conftest import make_store
from tests.store.test_contract import DOCS, FIELDS
from tests.store.test_late_interaction_store import colbert  # noqa: F401 - the session fixture

TITLE = "Why the sea level rises and falls twice a day: tides and the pull of the Moon"
TITLE_ONLY = DocumentIn("tide-record", TITLE, "", {"topic": "ocean"})
QUERY = "what makes the sea level go up and down"
MODES = ("dense", "sparse", "hybrid")


def others() -> list[DocumentIn]:
    return [d for d in DOCS if d.id != "tides"]  # the contract corpus without its own tides document


def top(store, name: str, mode: str) -> tuple[str, float]:
    candidates, _ = store.retrieve(name, QUERY, 3, mode=mode)
    return candidates[0].id, candidates[0].score


def test_a_title_only_document_is_found_by_its_title_and_returned_as_stored(store, encoder):
    store.create_collection("docs", FIELDS)
    store.upsert("docs", [*others(), TITLE_ONLY])
    assert store.describe("docs").document_count == len(others()) + 1
    for mode in MODES:
        assert top(store, "docs", mode)[0] == "tide-record", mode
    [doc] = store.get_documents("docs", ["tide-record"])
    assert (doc.title, doc.text, doc.payload) == (TITLE, "", {"topic": "ocean"})
    [candidate] = [c for c in store.retrieve("docs", QUERY, 3, mode="dense")[0] if c.id == "tide-record"]
    assert (candidate.title, candidate.text) == (TITLE, "")
    # What the bi-encoder read is the title: the stored vector scores the query as the title's own does.
    query = encoder.embed_queries([QUERY])[0]
    title = encoder.embed_documents([validation.document_text(TITLE, "")])[0]
    assert candidate.score == pytest.approx(float(np.dot(query, title)), abs=2e-3)


def test_split_mode_indexes_a_title_only_document_as_one_passage(backend, encoder):
    store = make_store(backend, encoder, long_documents="split", window=32)
    store.create_collection("split", FIELDS)
    store.upsert("split", [*others(), TITLE_ONLY])
    assert store.describe("split").point_count == store.describe("split").document_count
    for mode in MODES:
        assert top(store, "split", mode)[0] == "tide-record", mode
    assert store.get_documents("split", ["tide-record"])[0].text == ""


def test_the_late_interaction_stage_reads_the_title(backend, encoder, colbert):  # noqa: F811
    store = make_store(backend, encoder)
    store.late = LateInteraction(colbert, candidates=10, weight=0.4)
    store.create_collection("li", FIELDS, late_interaction=True)
    store.upsert("li", [*others(), TITLE_ONLY])
    assert top(store, "li", "hybrid")[0] == "tide-record"


@pytest.mark.parametrize("reembed", [False, True], ids=["copy", "reembed"])
def test_reindex_rebuilds_a_title_only_document_from_its_title(store, reembed):
    store.create_collection("docs", FIELDS)
    store.upsert("docs", [*others(), TITLE_ONLY])
    before = {mode: top(store, "docs", mode) for mode in MODES}
    done = reindexing.reindex(store, Aliases(store.backend), WriteGate(), "docs", "docs-v2", reembed=reembed)
    assert done.reembedded == reembed and done.copied == len(others()) + 1
    after = {mode: top(store, "docs-v2", mode) for mode in MODES}
    assert {m: i for m, (i, _) in after.items()} == {m: "tide-record" for m in MODES}
    # BM25 of the same text gives the same score: re-embedding read the title, as the upsert did.
    assert after["sparse"][1] == pytest.approx(before["sparse"][1], rel=1e-6)
    assert after["dense"][1] == pytest.approx(before["dense"][1], abs=2e-3)
    assert store.get_documents("docs-v2", ["tide-record"])[0].text == ""
