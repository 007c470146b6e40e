"""BEIR loaders on small files written by the tests (and SciFact when it is present)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli.beir import DatasetError, count_corpus, iter_corpus, load_qrels, load_queries

SCIFACT = Path("/work/shared/datasets/scifact")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    (tmp_path / "qrels").mkdir()
    corpus = [
        {"_id": "d1", "title": "Aspirin", "text": "Aspirin reduces fever.", "metadata": {"year": 2001}},
        {"_id": "d2", "title": "", "text": "Statins lower cholesterol.", "metadata": {}},
        {"_id": 3, "text": "No title field at all."},
    ]
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in corpus) + "\n\n", encoding="utf-8")
    queries = [{"_id": "q1", "text": "does aspirin reduce fever"}, {"_id": "q2", "text": "statins", "metadata": {}}]
    (tmp_path / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n", encoding="utf-8")
    (tmp_path / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\nq2\td2\t2\n", encoding="utf-8"
    )
    (tmp_path / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq2\t3\t1\n", encoding="utf-8")
    return tmp_path


def test_iter_corpus_normalises_records(dataset):
    docs = list(iter_corpus(dataset))
    assert docs == [
        {"id": "d1", "title": "Aspirin", "text": "Aspirin reduces fever.", "payload": {"year": 2001}},
        {"id": "d2", "title": "", "text": "Statins lower cholesterol."},
        {"id": "3", "title": "", "text": "No title field at all."},
    ]
    assert list(iter_corpus(dataset / "corpus.jsonl")) == docs


def test_iter_corpus_is_lazy(dataset):
    # A generator: the first document is available before the bad last line is read.
    with (dataset / "corpus.jsonl").open("a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    docs = iter_corpus(dataset)
    assert next(docs)["id"] == "d1"
    with pytest.raises(DatasetError, match=r"corpus.jsonl:5: invalid JSON"):
        list(docs)


def test_plain_jsonl_with_id_and_payload(tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_text(
        json.dumps({"id": "a", "text": "alpha", "payload": {"lang": "en"}}) + "\n"
        + json.dumps({"id": "b", "title": "B", "text": "beta"}) + "\n",
        encoding="utf-8",
    )
    assert list(iter_corpus(f)) == [
        {"id": "a", "title": "", "text": "alpha", "payload": {"lang": "en"}},
        {"id": "b", "title": "B", "text": "beta"},
    ]
    assert count_corpus(f) == 2


def test_corpus_errors(tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_text('{"text": "no id"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="missing 'id'"):
        list(iter_corpus(f))
    f.write_text('{"id": "x", "text": "t", "payload": [1]}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match="payload"):
        list(iter_corpus(f))
    f.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="JSON object"):
        list(iter_corpus(f))
    with pytest.raises(DatasetError, match="no such file"):
        list(iter_corpus(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="no such file"):
        count_corpus(tmp_path / "missing.jsonl")


def test_count_corpus_skips_blank_lines(dataset):
    assert count_corpus(dataset) == 3


def test_load_queries(dataset):
    assert load_queries(dataset) == {"q1": "does aspirin reduce fever", "q2": "statins"}
    assert load_queries(dataset / "queries.jsonl") == load_queries(dataset)


def test_load_qrels_skips_header_and_keeps_zero_grades(dataset):
    assert load_qrels(dataset) == {"q1": {"d1": 1, "d2": 0}, "q2": {"d2": 2}}
    assert load_qrels(dataset, split="train") == {"q2": {"3": 1}}


def test_load_qrels_errors(dataset):
    with pytest.raises(DatasetError, match=r"splits: \['test', 'train'\]"):
        load_qrels(dataset, split="dev")
    (dataset / "qrels" / "bad.tsv").write_text("h\th\th\nq1\td1\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="bad.tsv:2"):
        load_qrels(dataset, split="bad")
    (dataset / "qrels" / "bad.tsv").write_text("h\th\th\nq1\td1\thigh\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="not a number"):
        load_qrels(dataset, split="bad")


@pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason="SciFact not present under /work/shared/datasets")
def test_scifact_shapes():
    assert count_corpus(SCIFACT) == 5183
    first = next(iter_corpus(SCIFACT))
    assert set(first) >= {"id", "title", "text"} and first["text"]
    queries = load_queries(SCIFACT)
    assert len(queries) == 1109
    test = load_qrels(SCIFACT, "test")
    assert len(test) == 300 and sum(len(v) for v in test.values()) == 339
    assert set(test) <= set(queries)
