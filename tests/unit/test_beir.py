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


# ----------------------------------------------------------------------------- evaluation
# `searchctl eval`'s pure parts (services/cli/evaluate.py) live with the BEIR tests.

import argparse  # noqa: E402
import math  # noqa: E402

from services.cli.evaluate import compute_metrics, parse_modes, percentile, register, select_queries  # noqa: E402

QRELS = {
    "q1": {"d1": 1, "d2": 1},
    "q2": {"d3": 2, "d4": 0},
    "q3": {"d5": 0},  # nothing relevant: not evaluated
    "q4": {"d9": 1},  # absent from the run: counts 0
    "q5": {"r": 1},  # relevant document at rank 11
}
RUN = {
    "q1": {"d1": 3.0, "x": 2.0, "d2": 1.0},
    "q2": {"d4": 2.0, "d3": 1.0},
    "q3": {"d5": 1.0},
    "q5": {**{f"n{i:02d}": 100.0 - i for i in range(10)}, "r": 1.0},
}


def test_compute_metrics_known_answers():
    ndcg_q1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))  # hits at ranks 1 and 3 of 2 relevant
    ndcg_q2 = (2 / math.log2(3)) / 2  # grade-2 hit at rank 2; ideal puts it at rank 1
    m = compute_metrics(RUN, QRELS)
    assert m["queries"] == 4
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2 + 0 + 0) / 4)
    assert m["recall@100"] == pytest.approx((1 + 1 + 0 + 1) / 4)
    # MRR@10: q5's hit at rank 11 is cut off (plain reciprocal rank would give 1/11).
    assert m["mrr@10"] == pytest.approx((1 + 0.5 + 0 + 0) / 4)


def test_compute_metrics_recall_is_cut_at_100():
    run = {"q": {f"n{i:03d}": 1000.0 - i for i in range(100)} | {"r": 0.0}}
    assert compute_metrics(run, {"q": {"r": 1}})["recall@100"] == 0.0
    run["q"]["r"] = 5000.0
    assert compute_metrics(run, {"q": {"r": 1}}) == {"ndcg@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0, "queries": 1}


def test_compute_metrics_without_judged_queries():
    assert compute_metrics(RUN, {"q3": {"d5": 0}})["queries"] == 0


def test_percentile():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert math.isnan(percentile([], 50))


def test_parse_modes():
    modes = parse_modes("dense, hybrid+rerank,dense,SPARSE,hybrid+auto")
    assert [(m.name, m.retrieval, m.rerank) for m in modes] == [
        ("dense", "dense", "never"), ("hybrid+rerank", "hybrid", "always"), ("sparse", "sparse", "never"),
        ("hybrid+auto", "hybrid", "auto")]
    for bad in ("bm25", "dense+cross", "", ","):
        with pytest.raises(ValueError):
            parse_modes(bad)


def test_select_queries_keeps_judged_in_file_order():
    queries = {"q5": "e", "q1": "a", "q3": "c", "q9": "unjudged"}
    assert list(select_queries(queries, QRELS, None)) == ["q5", "q1"]
    assert list(select_queries(queries, QRELS, 1)) == ["q5"]


def test_eval_command_line():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "/data/scifact", "--collection", "c", "--modes", "dense,hybrid+rerank",
                              "--candidates", "30", "--json", "out.json", "--max-queries", "10"])
    assert (args.dataset, args.collection, args.candidates, args.top_k, args.split) == ("/data/scifact", "c", 30, 100, "test")
    assert (args.target, args.json, args.max_queries) == ("localhost:50051", "out.json", 10)
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "/data", "--collection", "c", "--combination", "borda"])


def test_eval_rejects_unknown_mode_before_connecting(dataset, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", str(dataset), "--collection", "c", "--modes", "bm25", "--target", "127.0.0.1:1"])
    assert args.func(args) == 2
    assert "unknown mode 'bm25'" in capsys.readouterr().err


def test_search_requests_per_mode():
    from search.v1 import common_pb2, search_service_pb2 as pb

    from services.cli.evaluate import search_request

    args = argparse.Namespace(candidates=30, combination="weighted_rrf", rerank_weight=0.7,
                              fusion="weighted_zscore", dense_weight=0.6, rrf_k=0)
    dense, hybrid_rr, hybrid_auto = parse_modes("dense,hybrid+rerank,hybrid+auto")
    r = search_request(dense, "c", "q", 100, args)
    assert (r.mode, r.rerank.policy, r.rerank.HasField("candidates"), r.top_k) == (
        common_pb2.RETRIEVAL_MODE_DENSE, pb.RERANK_POLICY_NEVER, False, 100)
    assert not r.HasField("fusion")
    assert search_request(hybrid_auto, "c", "q", 100, args).rerank.policy == pb.RERANK_POLICY_AUTO
    r = search_request(hybrid_rr, "c", "q", 100, args)
    assert (r.mode, r.rerank.policy, r.rerank.candidates) == (common_pb2.RETRIEVAL_MODE_HYBRID, pb.RERANK_POLICY_ALWAYS, 30)
    assert r.rerank.combination == pb.SCORE_COMBINATION_WEIGHTED_RRF
    assert r.rerank.rerank_weight == pytest.approx(0.7)
    assert r.fusion.method == common_pb2.FUSION_METHOD_WEIGHTED_ZSCORE and r.fusion.dense_weight == pytest.approx(0.6)
    assert not r.fusion.HasField("rrf_k")
