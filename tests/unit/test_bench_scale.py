"""`searchctl bench scale`: end to end on a tiny collection, and its pure helpers (no timing asserted)."""

from __future__ import annotations

import copy
import json
import math

import pytest

from services.cli.bench import scale as bench_scale
from services.cli.bench import scale_measure
from services.cli.bench.harness import DEFAULT_DATASET
from services.cli.main import build_parser
from services.common.model_dir import default_models_dir


def test_recall_counts_the_overlap_of_the_top_k():
    exact = [["a", "b", "c", "d"], ["x", "y"], []]
    approx = [["a", "c", "e", "f"], ["y", "x"], ["z"]]
    # (2/4 + 2/2) / 2: the query without exact hits is left out
    assert scale_measure.recall_at(exact, approx, k=4) == 0.75
    assert scale_measure.recall_at(exact, approx, k=1) == 0.5
    assert math.isnan(scale_measure.recall_at([[]], [["a"]]))


def test_summary_is_ordered_and_counts():
    s = scale_measure.summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s["n"] == 5 and s["p50_ms"] == 3.0 and s["p50_ms"] <= s["p95_ms"] <= 5.0
    assert scale_measure.summary([])["n"] == 0


def test_disk_usage_counts_allocated_and_apparent_bytes(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10_000)
    with open(tmp_path / "sparse", "wb") as f:  # a preallocated-looking file: apparent size, no blocks
        f.truncate(5_000_000)
    du = scale_measure.disk_usage(tmp_path)
    assert du["apparent_mb"] == pytest.approx(5.01, abs=0.01)
    assert du["allocated_mb"] < 1.0


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    if not (default_models_dir() / "bge-small-en" / "model.onnx").is_file():
        pytest.skip("model bge-small-en absent; run `searchctl models fetch`")
    if not (DEFAULT_DATASET / "corpus.jsonl").is_file():
        pytest.skip(f"no SciFact at {DEFAULT_DATASET}")
    tmp = tmp_path_factory.mktemp("scale")
    out = tmp / "scale.json"
    args = build_parser().parse_args([
        "bench", "scale", "--sizes", "300", "--queries", "5", "--scifact-docs", "64", "--efs", "0,128",
        "--concurrent-queries", "16", "--local-queries", "3", "--ingest-seconds", "1", "--ingest-points", "640", "--cache-dir", str(tmp / "cache"),
        "--data-dir", str(tmp / "data"), "--out", str(out),
    ])
    assert args.func is bench_scale.bench_scale
    assert args.func(args) == 0
    return json.loads(out.read_text())


def test_tiny_scale_run_end_to_end(tiny_report):
    report = tiny_report
    bench_scale.validate_report(report)
    runs = {(r["engine"], r["label"]): r for r in report["runs"]}
    assert set(runs) == {("edge", "scifact-64"), ("local", "300"), ("edge", "300")}
    edge, local, real = runs["edge", "300"], runs["local", "300"], runs["edge", "scifact-64"]
    assert edge["points"] == local["points"] == 300 and edge["synthetic"] and not real["synthetic"]
    assert edge["stats_before"]["points"] == 300 and local["stats_before"]["points"] == 300
    # the concurrent ingest's points were removed again before the index build
    assert edge["build"]["points"] == 300 and edge["ingest"]["with_ingest"]["background"]["points"] > 0
    # built as the service builds: in a child process, on a copy, swapped in
    assert edge["build"]["child"]["points"] == 300 and edge["build"]["child"]["cpu_seconds"] > 0
    assert set(edge["states"]) == {"exact", "hnsw"} and set(local["states"]) == {"exact"}
    assert [r["ef"] for r in edge["recall"]["rows"]] == [0, 128]
    assert edge["recall"]["shipped_ef"] == report["config"]["shipped_ef"] == 256
    assert edge["recall"]["shipped_effective_ef"] == 256  # 300 points: the size rule does not widen it
    # 300 points stay below the engine's indexing threshold: still exact after the build
    assert edge["recall"]["rows"][0]["dense_recall"] == 1.0 and edge["recall"]["ef_needed"]["dense_0.99"] == 128
    # forced indexing builds the graph on the real corpus
    assert real["build"]["indexed_vectors"] >= 64
    assert report["vectors"]["sparse_terms_per_doc_mean"] > 5
    assert 100 < report["vectors"]["payload_bytes_mean"] < 400
    assert report["vectors"]["dense_model"] == "interpolated"
    hood = report["vectors"]["neighbourhoods"]
    assert hood["points"] == 64 and hood["synthetic"]["top1"] >= hood["synthetic"]["top10"]
    assert "Store query latency" in bench_scale.format_tables(report)


def test_variants_change_the_service_settings():
    base = bench_scale.ShardTuning()
    v = bench_scale.parse_variant("int8:dense_storage=disk-int8,segments=4,build_while_ingesting=1", base)
    assert (v.name, v.tuning.dense_storage, v.tuning.segments, v.build_while_ingesting) == ("int8", "disk-int8", 4, True)
    assert bench_scale.parse_variant("service", base) == bench_scale.Variant("service", base)
    with pytest.raises(ValueError, match="unknown key"):
        bench_scale.parse_variant("x:colour=red", base)


def test_ef_needed_is_the_smallest_swept_ef_that_reaches_the_target():
    rows = [{"ef": 0, "dense_recall": 0.5}, {"ef": 256, "dense_recall": 0.96}, {"ef": 64, "dense_recall": 0.8},
            {"ef": 1024, "dense_recall": 0.995}]
    assert bench_scale.ef_needed(rows, "dense_recall", 0.95) == 256
    assert bench_scale.ef_needed(rows, "dense_recall", 0.99) == 1024
    assert bench_scale.ef_needed(rows, "dense_recall", 0.999) is None


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("runs"), "lacks 'runs'"),
    (lambda r: r["runs"][-1]["states"].pop("hnsw"), "lacks state 'hnsw'"),
    (lambda r: r["runs"][-1]["states"]["exact"]["concurrent"]["hybrid"].update(errors=2), "bad concurrent hybrid"),
    (lambda r: r["runs"][-1]["recall"]["rows"][0].update(dense_recall=1.5), "recall out of range"),
    (lambda r: r["runs"][-1]["build"].update(points=301), "points after the build"),
])
def test_validate_report_rejects_broken_reports(tiny_report, mutate, message):
    report = copy.deepcopy(tiny_report)
    mutate(report)
    with pytest.raises(ValueError, match=message):
        bench_scale.validate_report(report)
