"""`searchctl bench serve-build`: Search through the running service while a large collection
is optimized in the background and swapped in.

The collection (``--points`` synthetic points, services/cli/bench/scale_data.py) is created
through the retrieval service, so it records the service's model, then filled through the
store offline and left unoptimized: what a collection looks like after a bulk load. The
three services then start on it with the shipped settings, except that the caches are off
(query embeddings, Search results: every request is real work) and
``EDGE_OPTIMIZE_QUIET_SECONDS`` is ``--before-seconds``: the service finds the collection
unoptimized and starts its background build (a child process on a copy, the writes made
meanwhile replayed, then the swap) once that quiet period has passed.

``--clients`` closed-loop clients send Search requests (hybrid, no rerank, top 10) with
distinct real query texts (SciFact's and Cranfield's, in turn) through the gateway from the
start to ``--after-seconds`` past the swap; the phases (before, during the build, after)
are read from the retrieval service's ``search_retrieval_store_optimizing`` gauge. While the
build runs, a writer upserts ``--writes`` documents through the gateway; after the swap every
acknowledged one is read back (GetDocuments) and the document count checked.

No figure is asserted: the command prints QPS and p50/p95/p99 per phase, failures by status
code, lost writes, the build's own figures and the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from search.v1 import common_pb2, search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.bench.harness import REPO, E2EMode, _grpc_options, _scrape, _search_request, _write_json, load_corpus, machine_info
from services.cli.bench.prepared import prepared
from services.cli.procs import ServiceProcs

COLLECTION = "bench_build"
OPTIMIZING = "search_retrieval_store_optimizing"


def _gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children_rss_mb(pid: int) -> float:
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        total += sum(_rss_mb(int(c)) for c in children)
    return total


def _queries(dataset: Path) -> list[str]:
    texts: list[str] = []
    for folder in (dataset, dataset.parent / "cranfield"):
        corpus = load_corpus(folder, max_docs=1)
        if corpus is not None:
            texts += corpus.queries
    return list(dict.fromkeys(texts))


def _phase_stats(samples: list[tuple[float, float, str]], start: float, end: float) -> dict[str, Any]:
    inside = [(lat, code) for t, lat, code in samples if start <= t < end]
    ok = np.array([lat for lat, code in inside if code == "OK"], dtype=float)
    span = max(end - start, 1e-9)
    errors = Counter(code for _, code in inside if code != "OK")
    row = {"seconds": round(span, 1), "requests": len(inside), "ok": int(ok.size), "failed": sum(errors.values()),
           "errors": dict(errors), "qps": round(ok.size / span, 1)}
    for q in (50, 95, 99):
        row[f"p{q}_ms"] = round(float(np.percentile(ok, q)), 1) if ok.size else math.nan
    row["max_ms"] = round(float(ok.max()), 1) if ok.size else math.nan
    return row


def bench_serve_build(args: argparse.Namespace) -> int:
    dataset = Path(args.dataset)
    queries = _queries(dataset)
    if not queries:
        print(f"searchctl bench serve-build: skipped: no BEIR queries under {dataset}", file=sys.stderr)
        return 0
    corpus = load_corpus(dataset, max_docs=args.writes)
    root = Path(args.data_dir)
    report: dict[str, Any] = {"machine": machine_info(), "uptime_before": os.getloadavg(),
                              "config": {"points": args.points, "clients": args.clients, "writes": args.writes,
                                         "before_seconds": args.before_seconds, "after_seconds": args.after_seconds,
                                         "warmup_seconds": args.warmup_seconds,
                                         "distinct_queries": len(queries), "request": "Search, hybrid, no rerank, top 10"}}
    print(f"machine: {report['machine']}", flush=True)
    print(f"preparing {args.points:,} points under {root} ...", flush=True)
    live = prepared(root, {COLLECTION: args.points}, False, args)
    env = {"RETRIEVAL_QUERY_CACHE_SIZE": "0", "EDGE_OPTIMIZE_QUIET_SECONDS": str(args.before_seconds),
           "RETRIEVAL_STORE_STATS_SECONDS": "2", "LOG_LEVEL": "INFO"}
    from dataclasses import asdict

    from services.common.config import load
    from services.retrieval.config import RetrievalConfig

    settings = asdict(load(RetrievalConfig, environ={**os.environ, **env}))
    report["service_settings"] = {k: v for k, v in settings.items() if k.startswith("edge_") or k == "hnsw_ef"}
    mode = E2EMode("search", 0, "hybrid")
    samples: list[tuple[float, float, str]] = []
    events: dict[str, float] = {}
    series: list[dict[str, float]] = []
    acknowledged: list[str] = []
    failures: list[dict[str, Any]] = []
    stop = threading.Event()
    with ServiceProcs(live, env={**os.environ, "GATEWAY_API_KEYS": "", "GATEWAY_API_KEYS_FILE": ""}) as procs:
        procs.start("retrieval", env, wait=False)
        procs.start("reranker", wait=False)
        procs.start("gateway", {"GATEWAY_RESULT_CACHE_SIZE": "0"}, wait=False)
        for name in ("retrieval", "reranker", "gateway"):
            procs.wait(name, timeout=600)
        retrieval_pid = procs.pid("retrieval")
        t0 = time.perf_counter()
        events["serving"] = 0.0
        channel = grpc.insecure_channel(procs.address("gateway"), options=_grpc_options())
        stub = pb_grpc.SearchServiceStub(channel)

        def client(k: int) -> None:
            i = k
            while not stop.is_set():
                request = _search_request(COLLECTION, queries[i % len(queries)], mode)
                started = time.perf_counter()
                try:
                    stub.Search(request, timeout=args.timeout)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                    if len(failures) < 20:
                        failures.append({"t": round(started - t0, 2), "code": code, "details": (exc.details() or "")[:300]})
                samples.append((started - t0, (time.perf_counter() - started) * 1000, code))
                i += args.clients

        def monitor() -> None:
            while not stop.is_set():
                try:
                    value = _gauge(_scrape(procs.metrics_url("retrieval")), OPTIMIZING)
                except OSError:
                    value = None
                now = time.perf_counter() - t0
                if value == 1.0 and "build_start" not in events:
                    events["build_start"] = now
                if value == 0.0 and "build_start" in events and "build_end" not in events:
                    events["build_end"] = now
                series.append({"t": round(now, 1), "optimizing": value, "retrieval_rss_mb": round(_rss_mb(retrieval_pid)),
                               "optimizer_rss_mb": round(_children_rss_mb(retrieval_pid))})
                time.sleep(0.5)

        def writer() -> None:
            docs = corpus.docs if corpus else []
            while "build_start" not in events and not stop.is_set():
                time.sleep(0.2)
            for start in range(0, min(args.writes, len(docs)), 20):
                if "build_end" in events or stop.is_set():
                    break
                batch = [common_pb2.Document(id=f"written-during-build-{d['id']}", title=d["title"], text=d["text"])
                         for d in docs[start:start + 20]]
                try:
                    stub.Upsert(pb.UpsertRequest(collection=COLLECTION, documents=batch), timeout=120)
                    acknowledged.extend(d.id for d in batch)
                except grpc.RpcError as exc:
                    events.setdefault("first_write_error", f"{exc.code().name}: {exc.details()}")
                time.sleep(0.5)

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(args.clients)]
        threads += [threading.Thread(target=monitor, daemon=True), threading.Thread(target=writer, daemon=True)]
        for t in threads:
            t.start()
        deadline = time.perf_counter() + args.max_seconds
        while time.perf_counter() < deadline:
            end = events.get("build_end")
            if end is not None and time.perf_counter() - t0 >= end + args.after_seconds:
                break
            time.sleep(0.5)
        events["stop"] = time.perf_counter() - t0
        stop.set()
        for t in threads:
            t.join(timeout=args.timeout + 5)
        got = stub.GetDocuments(pb.GetDocumentsRequest(collection=COLLECTION, ids=acknowledged), timeout=120) if acknowledged else None
        described = stub.DescribeCollection(pb.DescribeCollectionRequest(name=COLLECTION), timeout=60).collection
        channel.close()
        log = procs.logs["retrieval"].read_text(errors="replace")
    build = next((json.loads(line) for line in log.splitlines() if "optimized in the background" in line), None)
    start, end = events.get("build_start", math.inf), events.get("build_end", math.inf)
    report["phases"] = {"before": _phase_stats(samples, min(args.warmup_seconds, start), min(start, events["stop"])),
                        "during": _phase_stats(samples, start, min(end, events["stop"])) if start < math.inf else None,
                        "after": _phase_stats(samples, end, events["stop"]) if end < math.inf else None}
    report["writes"] = {"acknowledged": len(acknowledged), "missing_after_swap": len(got.missing_ids) if got else 0,
                        "document_count": described.document_count, "expected_count": args.points + len(acknowledged),
                        "first_error": events.get("first_write_error")}
    report["events_s"] = {k: round(v, 1) for k, v in events.items() if isinstance(v, float)}
    report["build"] = build
    report["failures"] = failures
    report["peak_rss_mb"] = {"retrieval": max((s["retrieval_rss_mb"] for s in series), default=0),
                             "optimizer_child": max((s["optimizer_rss_mb"] for s in series), default=0)}
    report["series"] = series
    report["uptime_after"] = os.getloadavg()
    print(format_report(report))
    _write_json(args.json, report)
    return 0


def format_report(report: dict[str, Any]) -> str:
    c = report["config"]
    out = [f"Search ({c['request']}) by {c['clients']} clients through a background build of {c['points']:,} points",
           f"load average before {[round(x, 2) for x in report['uptime_before']]}, after {[round(x, 2) for x in report['uptime_after']]}",
           "| phase | seconds | requests | failed | QPS | p50 ms | p95 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in report["phases"].items():
        if row:
            out.append(f"| {name} | {row['seconds']} | {row['requests']} | {row['failed']} {row['errors'] or ''} | {row['qps']} | "
                       f"{row['p50_ms']} | {row['p95_ms']} | {row['p99_ms']} | {row['max_ms']} |")
        else:
            out.append(f"| {name} | — (the build did not {'start' if name == 'during' else 'finish'}) |")
    for f in report.get("failures", []):
        out.append(f"failed at {f['t']} s: {f['code']}: {f['details']}")
    w = report["writes"]
    out.append(f"writes during the build: {w['acknowledged']} acknowledged, {w['missing_after_swap']} missing after the swap; "
               f"documents {w['document_count']:,} (expected {w['expected_count']:,})")
    b = report.get("build") or {}
    if b:
        out.append(f"build: {b.get('seconds')} s in all (copy {b.get('copy_seconds')} s, child {b.get('cpu_seconds')} CPU s, "
                   f"peak RSS {b.get('peak_rss_mb')} MB, opening it in the service {b.get('open_seconds')} s, {b.get('replayed_writes')} writes replayed), "
                   f"{b.get('segments')} segments")
    out.append(f"peak RSS: retrieval {report['peak_rss_mb']['retrieval']} MB, optimizer child {report['peak_rss_mb']['optimizer_child']} MB")
    return "\n".join(out)


def register(bsub: argparse._SubParsersAction, default_dataset: str) -> None:
    p = bsub.add_parser("serve-build", help="Search through the service while a large collection is optimized in "
                        "the background and swapped in: QPS and p95 before/during/after, failures, lost writes",
                        description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=default_dataset, help="BEIR folder: queries, documents to write, real vectors "
                   "(default %(default)s; Cranfield's queries too when beside it)")
    p.add_argument("--points", type=int, default=200_000, help="collection size (default %(default)s)")
    p.add_argument("--clients", type=int, default=8, help="closed-loop Search clients (default %(default)s)")
    p.add_argument("--writes", type=int, default=400, help="documents upserted during the build (default %(default)s)")
    p.add_argument("--before-seconds", type=float, default=60.0,
                   help="EDGE_OPTIMIZE_QUIET_SECONDS: load before the build starts (default %(default)s)")
    p.add_argument("--after-seconds", type=float, default=60.0, help="load after the swap (default %(default)s)")
    p.add_argument("--warmup-seconds", type=float, default=10.0,
                   help="the first seconds of load, left out of the figures (default %(default)s)")
    p.add_argument("--max-seconds", type=float, default=7200.0, help="give up after this long (default %(default)s)")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline of one Search (default %(default)s)")
    p.add_argument("--data-dir", default=str(REPO / ".data" / "bench-serve-build"),
                   help="where the collection is prepared once and copied for each run (default %(default)s)")
    p.add_argument("--cache-dir", default=".data/bench-scale/cache", help="embedding cache (default %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=bench_serve_build)
