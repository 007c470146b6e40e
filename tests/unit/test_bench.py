"""`searchctl bench`: the report schema, percentiles, rate search and profile summary (no timing asserted)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

import pytest

from search.v1 import search_service_pb2 as bench_pb
from services.cli.bench import e2e, harness
from services.cli.bench.harness import (
    StepResult,
    latency_summary,
    next_rate,
    parse_e2e_modes,
    summarize_collapsed,
    sustained,
)
from services.cli.bench.rerank import RERANK_ROW_KEYS, rerank_row, validate_rerank_report
from tests.conftest import REPO


def test_latency_summary_interpolates_like_eval():
    lat = list(range(1, 101))  # 1..100 ms
    s = latency_summary(lat)
    assert s == {"p50_ms": 50.5, "p95_ms": pytest.approx(95.05), "p99_ms": pytest.approx(99.01)}
    assert latency_summary([7.0]) == {"p50_ms": 7.0, "p95_ms": 7.0, "p99_ms": 7.0}
    assert all(math.isnan(v) for v in latency_summary([]).values())
    # Order of the samples does not matter.
    assert latency_summary([3, 1, 2]) == latency_summary([1, 2, 3])


def _report():
    limit = 30.0
    return {
        "limit_pairs_per_s": limit,
        "service": [rerank_row(32, 50, 28.5, limit, [900, 1000, 1200, 5000]), rerank_row(1, 4, 25.0, limit, [160.0])],
        "naive": [rerank_row(32, 4, 12.0, limit, [100, 200, 300])],
    }


def test_rerank_report_schema_round_trips_through_json():
    report = json.loads(json.dumps(_report()))
    validate_rerank_report(report)
    row = report["service"][0]
    assert tuple(row) == RERANK_ROW_KEYS
    assert row["ratio"] == pytest.approx(0.95)
    assert row["clients"] == 32 and row["pairs_per_request"] == 50
    assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("naive"), "naive must be a list"),
        (lambda r: r.update(limit_pairs_per_s=0), "positive number"),
        (lambda r: r["service"][0].pop("p99_ms"), "exactly the keys"),
        (lambda r: r["service"][0].update(extra=1), "exactly the keys"),
        (lambda r: r["service"][0].update(clients=2.5), "positive integer"),
        (lambda r: r["service"][0].update(ratio=0.5), "pairs_per_s / limit"),
        (lambda r: r["naive"][0].update(p50_ms=1e6), "ordered"),
        (lambda r: r["service"][1].update(pairs_per_s="fast"), "must be a number"),
    ],
)
def test_rerank_report_schema_rejects(mutate, message):
    report = _report()
    mutate(report)
    with pytest.raises(ValueError, match=message):
        validate_rerank_report(report)


def _step(rate, latencies, errors=None, degraded=0, ok=None, achieved=None):
    n = len(latencies) + sum((errors or {}).values())
    return StepResult(rate, n / rate, n, len(latencies) if ok is None else ok, errors or {}, degraded,
                      rate if achieved is None else achieved, list(latencies))


def test_sustained_needs_p95_no_errors_no_degradation_and_the_offered_rate():
    good = _step(10, [100] * 95 + [300] * 5)
    assert sustained(good, 350)
    assert not sustained(_step(10, [100] * 90 + [400] * 10), 350)  # p95 over the objective
    assert not sustained(_step(10, [100] * 99, errors={"UNAVAILABLE": 1}), 350)
    assert not sustained(_step(10, [100] * 100, degraded=1), 350)  # served, but not reranked
    assert not sustained(_step(10, [100] * 100, achieved=8.0), 350)  # fell behind the arrivals
    assert not sustained(_step(10, []), 350)


def test_rate_search_grows_then_bisects_to_the_resolution():
    capacity = 23.0
    history = []
    rate = next_rate(history, 5.0, 2.0, 1.1, 0.1)
    while rate is not None:
        history.append((rate, rate <= capacity))
        rate = next_rate(history, 5.0, 2.0, 1.1, 0.1)
        assert len(history) < 20
    best = max(r for r, ok in history if ok)
    worst = min(r for r, ok in history if not ok and r > best)
    assert best <= capacity < worst and worst / best <= 1.1
    assert [r for r, _ in history[:3]] == [5.0, 10.0, 20.0]


def test_rate_search_shrinks_when_the_first_rate_fails_and_stops_at_the_floor():
    history = [(1.0, False)]
    assert next_rate(history, 1.0, 2.0, 1.1, 0.1) == 0.5
    history += [(0.5, False), (0.25, False), (0.125, False)]
    assert next_rate(history, 1.0, 2.0, 1.1, 0.1) == 0.1
    history.append((0.1, False))
    assert next_rate(history, 1.0, 2.0, 1.1, 0.1) is None


def test_e2e_modes():
    modes = parse_e2e_modes("search, rerank20,rerank50")
    assert [(m.name, m.candidates, m.slo_ms) for m in modes] == [
        ("search", 0, 350.0), ("rerank20", 20, 900.0), ("rerank50", 50, 900.0)]
    with pytest.raises(ValueError, match="unknown e2e mode"):
        parse_e2e_modes("rerank")
    assert {m.retrieval for m in modes} == {"default"}
    from services.cli.client import MODES

    assert set(harness.RETRIEVAL_MODES) == set(MODES)  # the --retrieval-mode choices map onto the request enum
    assert [m.retrieval for m in parse_e2e_modes("search,rerank20", "dense")] == ["dense", "dense"]
    with pytest.raises(ValueError, match="unknown retrieval mode"):
        parse_e2e_modes("search", "bm25")


def test_paired_overhead_cancels_the_spread_between_queries():
    # Downstream times vary by 100s of ms between queries; the gateway adds 2 ms to each.
    retrieve = [50.0, 400.0, 120.0, 300.0, 90.0]
    rerank = [0.0, 0.0, 100.0, 0.0, 0.0]
    search = [r + k + 2.0 for r, k in zip(retrieve, rerank)]
    assert e2e.paired_overhead_ms(search, retrieve, rerank) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        e2e.paired_overhead_ms(search, retrieve[:-1], rerank)


def test_collapsed_profile_summary_ignores_idle_threads():
    lines = [
        "process 1;MainThread;_run_once (asyncio/base_events.py:1);select (selectors.py:468) 500",
        "process 1;inference;_worker (concurrent/futures/thread.py:81);infer (cross_encoder.py:120);run (onnxruntime/session.py:220) 300",
        "process 1;tokenize;tokenize_pairs (cross_encoder.py:100) 100",
        "process 1;inference;infer (cross_encoder.py:120);encodings_to_inputs (onnx_session.py:400) 100",
        "garbage line",
    ]
    summary = dict(summarize_collapsed(lines))
    assert summary == pytest.approx({
        "run (onnxruntime/session.py:220)": 0.6,
        "tokenize_pairs (cross_encoder.py:100)": 0.2,
        "encodings_to_inputs (onnx_session.py:400)": 0.2,
    })
    assert summarize_collapsed([]) == []


def test_ort_profile_summary_sums_kernel_time_by_operator():
    events = [
        {"cat": "Session", "name": "model_run", "dur": 1000},
        {"cat": "Node", "name": "q_MatMul_kernel_time", "dur": 60, "args": {"op_name": "MatMul"}},
        {"cat": "Node", "name": "k_MatMul_kernel_time", "dur": 20, "args": {"op_name": "MatMul"}},
        {"cat": "Node", "name": "gelu_kernel_time", "dur": 20, "args": {"op_name": "Gelu"}},
        {"cat": "Node", "name": "gelu_fence_before", "dur": 999, "args": {"op_name": "Gelu"}},
    ]
    assert harness.summarize_ort_profile(events) == [("MatMul", 0.8), ("Gelu", 0.2)]
    assert harness.summarize_ort_profile([]) == []


def test_plot_frontier_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from services.cli.bench.frontier import plot_frontier

    points = [{"config": c, "policy": c.split("@")[0], "ndcg@10": 0.70 + i / 1000, "load": {"qps": 100.0 / (i + 1), "p95_ms": 10.0 * (i + 1)}}
              for i, c in enumerate(["never", "auto", "always@5", "always@10"])]
    out = tmp_path / "f.png"
    plot_frontier({"a": points, "b": points}, out, "test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frontier_configurations_summary_and_pareto():
    from services.cli.bench.frontier import Config, pareto, parse_configs, summarize

    configs = parse_configs("never,auto,always", "5,10")
    assert [c.label for c in configs] == ["never", "auto", "always@5", "always@10"]
    with pytest.raises(ValueError):
        parse_configs("sometimes", "5")
    request = Config("always", 5).request("c", "q")
    assert (request.rerank.policy, request.rerank.candidates) == (bench_pb.RERANK_POLICY_ALWAYS, 5)
    assert Config("auto").request("c", "q").rerank.policy == bench_pb.RERANK_POLICY_AUTO
    assert not Config("never").request("c", "q").rerank.HasField("candidates")
    per = {"never": {"q1": 0.5, "q2": 0.7}, "auto": {"q1": 0.6, "q2": 0.7}, "always@10": {"q1": 0.6, "q2": 0.8}}
    qps = {"never": 100.0, "auto": 50.0, "always@10": 2.0}
    points = [{"config": c, "policy": c.split("@")[0], "ndcg@10": sum(v.values()) / 2, "per_query": v, "load": {"qps": qps[c]}}
              for c, v in per.items()]
    lines = summarize(points)
    assert "vs always@10: NDCG@10 -0.1000" in lines[0] and "QPS x50.0" in lines[0]
    assert "vs always@10: NDCG@10 -0.0500 (SE 0.0500), QPS x25.0" in lines[1] and "vs never: NDCG@10 +0.0500" in lines[1]
    assert len(lines) == 3 and lines[2].startswith("always@10") and "vs never" in lines[2]
    # Without never, the reference has nothing to be compared to: no empty line for it.
    assert [line.split()[0] for line in summarize(points[1:])] == ["auto"]
    assert [p["config"] for p in pareto(points)] == ["never", "auto", "always@10"]
    points[1]["ndcg@10"] = 0.5  # auto no better than the faster never: off the frontier
    assert [p["config"] for p in pareto(points)] == ["never", "always@10"]


def test_bench_skips_clearly_without_the_dataset(tmp_path):
    for command in ("rerank", "embed", "e2e", "frontier"):
        result = subprocess.run(
            [sys.executable, "-m", "services.cli", "bench", command, "--dataset", str(tmp_path / "none")],
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "skipped" in result.stderr and "--dataset" in result.stderr


def test_bench_help_lists_the_four_benches():
    out = subprocess.run([sys.executable, "-m", "services.cli", "bench", "--help"], capture_output=True, text=True,
                         cwd=REPO, timeout=60).stdout
    for command in ("rerank", "embed", "e2e", "frontier"):
        assert command in out


def test_server_side_overhead_from_the_gateways_own_metrics():
    def exposition(served: float, count: int, retrieve: float, rerank: float) -> str:
        search = 'service="gateway",method="search.v1.SearchService/Search"'
        upsert = 'service="gateway",method="search.v1.SearchService/Upsert"'
        return (
            "# TYPE search_grpc_server_request_duration_seconds histogram\n"
            f"search_grpc_server_request_duration_seconds_sum{{{search}}} {served}\n"
            f"search_grpc_server_request_duration_seconds_count{{{search}}} {count}\n"
            f"search_grpc_server_request_duration_seconds_sum{{{upsert}}} 99.0\n"
            f"search_grpc_server_request_duration_seconds_count{{{upsert}}} 7\n"
            "# TYPE search_gateway_downstream_duration_seconds histogram\n"
            f'search_gateway_downstream_duration_seconds_sum{{target="retrieval",method="Retrieve"}} {retrieve}\n'
            f'search_gateway_downstream_duration_seconds_sum{{target="reranker",method="Rerank"}} {rerank}\n'
        )

    before = e2e.gateway_time_sums(exposition(10.0, 100, 6.0, 3.0))
    assert before == (10.0, 100.0, 9.0)
    # 40 more Searches took 20 s, of which 19.9 s waiting on retrieval and the reranker: 2.5 ms each.
    after = e2e.gateway_time_sums(exposition(30.0, 140, 18.0, 10.9))
    assert e2e.server_side_overhead_ms(before, after) == pytest.approx(2.5)
    assert math.isnan(e2e.server_side_overhead_ms(after, after))


def test_sweep_layouts_measures_every_layout_and_batch_size():
    calls = []

    class Encoder:
        def __init__(self, threads):
            self.threads = threads

        def infer(self, batch):
            calls.append((self.threads, len(batch)))

    encodings = [type("E", (), {"ids": [0] * n})() for n in (3, 1, 2, 5)]
    rates = harness.sweep_layouts({1: Encoder(1), 2: Encoder(2)}, encodings, [(2, 1), (1, 2)], [1, 2])
    assert list(rates) == [(2, 1, 1), (2, 1, 2), (1, 2, 1), (1, 2, 2)]
    assert [str(k) for k in rates] == ["2x1 batch 1", "2x1 batch 2", "1x2 batch 1", "1x2 batch 2"]
    assert all(r > 0 and c >= 0 for r, c in rates.values())
    assert {t for t, _ in calls} == {1, 2} and {n for _, n in calls} == {1, 2}
    one = harness.measure_layout({1: Encoder(1)}, encodings, harness.RawLayout(2, 1, 2))
    assert len(one) == 2 and one[0] > 0


def test_frontier_refuses_a_plot_it_cannot_draw_before_the_run(monkeypatch, tmp_path):
    """Without matplotlib, --png stops before the benchmark (a 15-minute run once lost its JSON at the plot)."""
    import importlib.util

    from services.cli.bench import frontier

    dataset = tmp_path / "d"
    dataset.mkdir()
    (dataset / "corpus.jsonl").write_text('{"_id": "1", "title": "t", "text": "x"}\n')
    (dataset / "queries.jsonl").write_text('{"_id": "q1", "text": "y"}\n')
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    monkeypatch.setattr(frontier, "Stack", lambda *a, **k: pytest.fail("the run started"))
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    frontier.register(sub)
    args = parser.parse_args(["frontier", "--dataset", str(dataset), "--png", str(tmp_path / "f.png")])
    assert frontier._bench_frontier(args) == 2


def test_cpu_by_thread_is_read_from_metrics_and_printed_per_step():
    from services.cli.bench import peers

    exposition = (
        "# TYPE search_thread_cpu_seconds_total counter\n"
        'search_thread_cpu_seconds_total{thread="main"} 1.5\n'
        'search_thread_cpu_seconds_total{thread="embed-inference"} 6.25\n'
        "# TYPE process_cpu_seconds_total counter\n"
        "process_cpu_seconds_total 9.0\n"
    )
    assert peers.thread_cpu_from(exposition) == {"main": 1.5, "embed-inference": 6.25}
    assert peers.thread_cpu_from("process_cpu_seconds_total 9.0\n") == {}
    line = peers.describe_step({
        "cpu_ms_per_query": {"gateway": 2.0, "retrieval": 9.0},
        "cache_hit_rates": {},
        "embed_batch_mean_texts": 2.5,
        "cpu_ms_per_query_by_thread": {"gateway": {"main": 1.8, "event_engine": 0.2},
                                       "retrieval": {"embed-inference": 6.3, "main": 1.5},
                                       "reranker": {"exited": 0.01}},
    })
    assert line.splitlines()[1] == ("    CPU ms/query by thread: gateway: main 1.80, event_engine 0.20; "
                                    "retrieval: embed-inference 6.30, main 1.50")


def _service_metrics(cpu: float, main: float, hits: float, misses: float, texts: float = 0.0, batches: float = 0.0) -> str:
    return (
        "# TYPE process_cpu_seconds_total counter\n"
        f"process_cpu_seconds_total {cpu}\n"
        "# TYPE search_thread_cpu_seconds_total counter\n"
        f'search_thread_cpu_seconds_total{{thread="main"}} {main}\n'
        "# TYPE search_cache_lookups_total counter\n"
        f'search_cache_lookups_total{{cache="search_result",outcome="hit"}} {hits}\n'
        f'search_cache_lookups_total{{cache="search_result",outcome="miss"}} {misses}\n'
        "# TYPE search_retrieval_embed_batch_texts histogram\n"
        f"search_retrieval_embed_batch_texts_sum {texts}\n"
        f"search_retrieval_embed_batch_texts_count {batches}\n"
    )


def test_step_figures_are_the_differences_between_the_two_reads_per_query():
    from services.cli.bench import peers

    before = {"gateway": _service_metrics(10.0, 8.0, 1, 99), "retrieval": _service_metrics(50.0, 9.0, 0, 0, 300, 100),
              "reranker": _service_metrics(2.0, 1.0, 0, 0)}
    after = {"gateway": _service_metrics(12.5, 10.0, 3, 397), "retrieval": _service_metrics(70.0, 12.0, 0, 0, 1300, 400),
             "reranker": _service_metrics(2.0, 1.0, 0, 0)}
    figures = peers.step_figures(before, after, served=1000)
    assert figures["cpu_ms_per_query"] == pytest.approx({"gateway": 2.5, "retrieval": 20.0, "reranker": 0.0})
    assert figures["cpu_ms_per_query_by_thread"] == {"gateway": {"main": pytest.approx(2.0)},
                                                     "retrieval": {"main": pytest.approx(3.0)}, "reranker": {}}
    assert figures["cache_hit_rates"] == {"search_result": pytest.approx(2 / 300)}  # the step's lookups only
    assert figures["embed_batch_mean_texts"] == pytest.approx(1000 / 300)


def test_a_step_reads_each_services_metrics_once_at_each_end():
    """Any other read of /metrics during the step would be counted in the service's CPU."""
    import http.server
    import threading

    from services.cli.bench import peers

    reads: dict[str, int] = {}

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            name = self.path.strip("/")
            reads[name] = reads.get(name, 0) + 1
            body = _service_metrics(1.0 * reads[name], 0.5, 0, 0, 3.0 * reads[name], 1.0 * reads[name]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    class Procs:
        def metrics_url(self, name):
            return f"http://127.0.0.1:{server.server_address[1]}/{name}"

    try:
        with peers.StepCounters(Procs()) as counters:
            assert reads == {"gateway": 1, "retrieval": 1, "reranker": 1}
        figures = counters.finish(served=10)
    finally:
        server.shutdown()
        server.server_close()
    assert reads == {"gateway": 2, "retrieval": 2, "reranker": 2}
    assert figures["cpu_ms_per_query"] == pytest.approx({"gateway": 100.0, "retrieval": 100.0, "reranker": 100.0})
    assert figures["embed_batch_mean_texts"] == pytest.approx(3.0)
