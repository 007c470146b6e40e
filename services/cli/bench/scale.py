"""`searchctl bench scale`: the document store alone, through the Backend seam, at 10k-1M points.

Measures what the retrieval service's store costs as collections grow, with no gRPC, no
embedding and no gateway in the timings: only ``Backend.upsert`` and ``Backend.query`` of
``services.retrieval.backends``, issued exactly as ``DocumentStore`` issues them (top 100
with payload; hybrid = two prefetches of 100, dense and sparse, fused by RRF in the
engine; and the default weighted z-score fusion, i.e. both lists in one batch fused here).

Engines: ``EdgeBackend`` (Qdrant Edge in-process, the embedded default) and
``QdrantServerBackend`` over qdrant-client's local mode (the old embedded store, the
baseline), the latter only up to the first size where a query's p50 passes
``--local-stop-ms`` (1 s).

Per collection size N and index variant (``--variant``: the service's EDGE_* settings, changed):
* store-only upsert rate (batches of ``--batch-size`` points, vectors precomputed);
* Retrieve-equivalent query latency p50/p95 for dense, sparse and hybrid, unloaded
  (sequential) and with ``--clients`` closed-loop client threads (QPS too; not with
  ``--quick``), both exact (plain segments: how a collection is served until its build
  ends) and after the build (HNSW at the shipped ``QDRANT_HNSW_EF``), each after a few
  untimed queries per mode (the first ones after a build touch cold pages);
* the index build as the service runs it (``EdgeBackend.optimize_in_background``: a copy of
  the shard optimized by a child process, then swapped in): time, the child's CPU seconds
  and peak RSS, segments, the data directory's peak disk during the build;
* resident memory (VmRSS delta of this process, which serves the collection as the
  retrieval service does) and disk (allocated blocks, like ``du``);
* HNSW recall@100 (dense, hybrid) against the exact top 100 of the same collection (taken
  before the build) at each of ``--efs``, and the smallest swept ef reaching 0.95 / 0.99;
* hybrid QPS of the client threads with and without a concurrent store-only ingest.

Vectors (services/cli/bench/scale_data.py): the real SciFact corpus embedded once with the
service's bi-encoder (cached under ``--cache-dir``) and encoded with the project's BM25
encoder; synthetic points drawn around the real embeddings' neighbourhoods
(``--dense-model``), sparse vectors from SciFact's term statistics; payload like
``DocumentStore`` writes, about 200 bytes. Queries: real SciFact query texts through the
real models at every size. With ``--scifact`` the real corpus itself is measured too, with
HNSW forced (indexing and full-scan thresholds 1 KB) so that recall on real embeddings can
be reported.

No figure is asserted anywhere; read them with the machine line and the notes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from services.cli.bench.harness import _retrieval_config, machine_info
from services.cli.bench.scale_data import DENSE_MODELS, SyntheticCorpus, load_real, real_points
from services.cli.bench.scale_measure import (
    CONCURRENT_MODES,
    LIMIT,
    MODES,
    closed_loop,
    disk_usage,
    ingest_loop,
    make_queries,
    recall_at,
    run_query,
    rss_bytes,
    trim_memory,
    unloaded,
)
from services.retrieval.backends.base import CollectionSchema
from services.retrieval.backends.edge_tuning import ShardTuning

COLLECTION = "bench_scale"
#: Queries per mode run untimed before a state is measured.
WARMUP_QUERIES = 5
REPORT_KEYS = ("machine", "config", "vectors", "runs", "notes")
RUN_KEYS = ("engine", "label", "points", "synthetic", "upsert", "memory", "disk", "states", "build", "recall",
            "ingest", "stopped")


# --------------------------------------------------------------------------- engines


@dataclass(frozen=True)
class Variant:
    """One way of building the index: the service's ``ShardTuning`` with changes, optionally
    built while the points are written (the service's background builds during an ingest)."""

    name: str
    tuning: ShardTuning
    build_while_ingesting: bool = False


def parse_variant(spec: str, base: ShardTuning) -> Variant:
    """``NAME`` or ``NAME:key=value,...`` (keys: ShardTuning's fields and ``build_while_ingesting``)."""
    name, _, rest = spec.partition(":")
    changes: dict[str, Any] = {}
    while_ingesting = False
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, _, value = item.partition("=")
        if key == "build_while_ingesting":
            while_ingesting = value.lower() in ("1", "true", "yes", "")
        elif key in {f.name for f in fields(ShardTuning)}:
            changes[key] = {"dense_storage": str, "oversampling": float}.get(key, int)(value)
        else:
            raise ValueError(f"unknown key {key!r} in --variant {spec!r}")
    return Variant(name or "service", replace(base, **changes), while_ingesting)


def edge_backend(path: Path, tuning: ShardTuning, hnsw_ef: int | None, hnsw_ef_points: int,
                 optimize_after_points: int = 0):
    """``EdgeBackend`` as the service opens it (its background builds only when asked; its search
    threads from ``EDGE_SEARCH_THREADS``, as the service reads them)."""
    from services.retrieval.backends.edge import EdgeBackend

    return EdgeBackend(path, search_threads=_retrieval_config().edge_search_threads, hnsw_ef=hnsw_ef,
                       hnsw_ef_points=hnsw_ef_points, tuning=tuning, optimize_after_points=optimize_after_points,
                       optimize_quiet_s=5.0)


def local_backend(path: Path, in_memory: bool = False):
    from qdrant_client import QdrantClient

    from services.retrieval.backends.qdrant_server import QdrantServerBackend

    warnings.filterwarnings("ignore", module="qdrant_client")
    return QdrantServerBackend(QdrantClient(location=":memory:") if in_memory else QdrantClient(path=str(path)))


def _schema(dim: int):
    return CollectionSchema(name=COLLECTION, dense_dimension=dim, sparse=True,
                            metadata={"dense_model": "bge-small-en", "long_documents": "truncate"})


def upsert_all(backend, points_for: Callable[[int, int], list], n: int, batch: int) -> dict[str, float]:
    """Write ``n`` points in batches; only ``backend.upsert`` is timed."""
    busy = 0.0
    started = time.perf_counter()
    for start in range(0, n, batch):
        points = points_for(start, min(batch, n - start))
        t = time.perf_counter()
        backend.upsert(COLLECTION, points)
        busy += time.perf_counter() - t
    return {"seconds": round(busy, 2), "points_per_s": round(n / busy, 1) if busy else math.nan, "batch": batch,
            "wall_seconds": round(time.perf_counter() - started, 1)}


def measure_state(backend, queries, args, n_queries: int, concurrent_total: int) -> tuple[dict, dict]:
    for mode in MODES:  # warm-up, untimed: the first queries after a build or swap touch cold pages
        for calls in queries[mode][:WARMUP_QUERIES]:
            run_query(backend, COLLECTION, mode, calls)
    stats, results = unloaded(backend, COLLECTION, queries, MODES, n_queries)
    concurrent = {} if args.quick else {
        mode: closed_loop(backend, COLLECTION, mode, queries[mode][:n_queries], args.clients, concurrent_total)
        for mode in CONCURRENT_MODES}
    return {"unloaded": stats, "concurrent": concurrent}, results


def build_in_background(backend, path: Path, rss0: int) -> dict[str, Any]:
    """The service's background optimization (copy, child process, replay, swap), with the
    peak disk of the data directory sampled meanwhile."""
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            peak[0] = max(peak[0], int(disk_usage(path)["allocated_mb"]))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    try:
        figures = backend.optimize_in_background(COLLECTION)
    finally:
        done.set()
        sampler.join()
    seconds = time.perf_counter() - t
    s = backend.stats(COLLECTION)
    trim_memory()
    return {"seconds": round(seconds, 1), "child": figures, "segments": s.segments, "indexed_vectors": s.indexed_vectors,
            "points": s.points, "rss_delta_mb": round((rss_bytes() - rss0) / 1e6, 1),
            "rss_anon_mb": round(rss_bytes("RssAnon") / 1e6, 1), "rss_file_mb": round(rss_bytes("RssFile") / 1e6, 1),
            "disk": disk_usage(path),
            "disk_peak_mb": peak[0]}


def ef_needed(rows: Sequence[Mapping[str, Any]], key: str, target: float) -> int | None:
    """The smallest swept ef whose recall reaches ``target`` (None: none did)."""
    for row in sorted((r for r in rows if r["ef"]), key=lambda r: r["ef"]):
        if row[key] >= target:
            return row["ef"]
    return None


def recall_sweep(backend, queries, exact: Mapping[str, list], efs: Sequence[int], n_queries: int,
                 points: int) -> dict[str, Any]:
    """Recall at each fixed ef of ``efs``, then at the service's rule (QDRANT_HNSW_EF, wider for
    large collections), which is what the service serves with."""
    from services.retrieval.backends.edge_shard import hnsw_ef_for

    rows = []
    shipped, ef_points = backend.hnsw_ef, backend.hnsw_ef_points
    effective = hnsw_ef_for(shipped, points, ef_points)
    backend.hnsw_ef_points = 0  # each ef as given
    for ef in efs:
        backend.hnsw_ef = ef or None
        st, res = unloaded(backend, COLLECTION, queries, ("dense", "hybrid"), n_queries)
        rows.append({"ef": ef, "dense_recall": recall_at(exact["dense"], res["dense"]),
                     "hybrid_recall": recall_at(exact["hybrid"], res["hybrid"]),
                     "dense_p50_ms": st["dense"]["p50_ms"], "dense_p95_ms": st["dense"]["p95_ms"],
                     "hybrid_p50_ms": st["hybrid"]["p50_ms"], "hybrid_p95_ms": st["hybrid"]["p95_ms"]})
    backend.hnsw_ef, backend.hnsw_ef_points = shipped, ef_points
    needed = {f"{kind}_{target}": ef_needed(rows, f"{kind}_recall", target)
              for kind in ("dense", "hybrid") for target in (0.95, 0.99)}
    return {"rows": rows, "shipped_ef": shipped, "shipped_ef_points": ef_points, "shipped_effective_ef": effective,
            "ef_needed": needed}


def run_size(engine: str, label: str, n: int, points_for, synth: SyntheticCorpus, queries, args, root: Path,
             synthetic: bool, variant: Variant | None = None, n_queries: int | None = None) -> dict[str, Any]:
    """Every measurement of one engine (and index variant) on one collection of ``n`` points."""
    n_queries = n_queries or args.queries
    concurrent_total = max(args.clients * 2, args.concurrent_queries if engine == "edge" else args.clients)
    path = root / f"{engine}-{label}-{variant.name if variant else ''}"
    shutil.rmtree(path, ignore_errors=True)
    trim_memory()
    rss0 = rss_bytes()
    if engine == "edge":
        backend = edge_backend(path, variant.tuning, args.shipped_ef, args.shipped_ef_points,
                               args.optimize_after if variant.build_while_ingesting else 0)
    else:
        backend = local_backend(path, args.local_in_memory)
    run: dict[str, Any] = {"engine": engine, "label": label, "points": n, "synthetic": synthetic,
                           "variant": asdict(variant) if variant else None,
                           "in_memory": engine == "local" and args.local_in_memory,
                           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_avg_start": load_avg()}
    tag = f"[{engine} {label}{' ' + variant.name if variant else ''}]"
    try:
        backend.create_collection(_schema(synth.dim))
        print(f"{tag} upserting {n} points ...", flush=True)
        run["upsert"] = upsert_all(backend, points_for, n, args.batch_size)
        if variant and variant.build_while_ingesting:
            run["upsert"]["builds_during_ingest"] = list(backend.builds)
        backend.flush()
        trim_memory()
        run["memory"] = {"rss_delta_mb": round((rss_bytes() - rss0) / 1e6, 1),
                         "rss_anon_mb": round(rss_bytes("RssAnon") / 1e6, 1), "rss_file_mb": round(rss_bytes("RssFile") / 1e6, 1)}
        run["disk"] = disk_usage(path)
        s = backend.stats(COLLECTION)
        run["stats_before"] = {"points": s.points, "segments": s.segments, "indexed_vectors": s.indexed_vectors}
        print(f"{tag} upsert {run['upsert']['seconds']} s; exact queries ...", flush=True)
        if engine == "edge" and variant.build_while_ingesting:  # partly indexed: exact by asking for it
            backend.exact = True
        exact_state, exact_results = measure_state(backend, queries, args, n_queries, concurrent_total)
        backend.exact = False
        run["states"] = {"exact": exact_state}
        _print_state(tag, "exact", exact_state)
        slow = max(v["p50_ms"] for v in exact_state["unloaded"].values()) > args.local_stop_ms
        run["stopped"] = f"a query's p50 passed {args.local_stop_ms:g} ms: larger sizes not run" if engine == "local" and slow else None
        run["build"] = run["recall"] = run["ingest"] = None
        if engine != "edge":
            return run
        if not args.quick:
            run["ingest"] = ingest_comparison(backend, synth, queries["hybrid"][:n_queries], args)
            print(f"{tag} hybrid QPS {run['ingest']['without']['qps']} without / {run['ingest']['with_ingest']['qps']} "
                  "with ingest", flush=True)
        print(f"{tag} optimizing in the background (copy, child process, swap) ...", flush=True)
        run["build"] = build_in_background(backend, path, rss0)
        run["build"]["load_avg_end"] = load_avg()
        if variant.build_while_ingesting:
            run["build"]["total_seconds"] = round(run["upsert"]["wall_seconds"] + run["build"]["seconds"], 1)
        print(f"{tag} built in {run['build']['seconds']} s ({run['build']['child'].get('cpu_seconds')} CPU s, peak RSS "
              f"{run['build']['child'].get('peak_rss_mb')} MB) -> {run['build']['segments']} segments", flush=True)
        hnsw_state, _ = measure_state(backend, queries, args, n_queries, concurrent_total)
        run["states"]["hnsw"] = hnsw_state
        _print_state(tag, f"hnsw (ef {args.shipped_ef})", hnsw_state)
        run["recall"] = recall_sweep(backend, queries, exact_results, args.efs, n_queries, n)
        print(f"{tag} recall@100 " + ", ".join(f"ef={r['ef']}: dense {r['dense_recall']} hybrid {r['hybrid_recall']}"
                                               for r in run["recall"]["rows"]) + f"; ef needed {run['recall']['ef_needed']}",
              flush=True)
        return run
    finally:
        run["load_avg_end"] = load_avg()
        backend.close()
        if not args.keep:
            shutil.rmtree(path, ignore_errors=True)


def ingest_comparison(backend, synth: SyntheticCorpus, hybrid_q: list, args) -> dict[str, Any]:
    """Hybrid QPS of the client threads with and without a concurrent store-only ingest (the
    ingested points are deleted again, so the build sees the collection's n points)."""
    written: list[str] = []
    batches = [synth.batch(2 * 10**8 + i, args.ingest_batch)
               for i in range(0, args.ingest_points, args.ingest_batch)]  # made before, not timed
    without = closed_loop(backend, COLLECTION, "hybrid", hybrid_q, args.clients, 0, duration=args.ingest_seconds)
    with_ingest = closed_loop(backend, COLLECTION, "hybrid", hybrid_q, args.clients, 0, duration=args.ingest_seconds,
                              background=ingest_loop(backend, COLLECTION, batches, written))
    for start in range(0, len(written), 1000):
        backend.delete_ids(COLLECTION, written[start:start + 1000])
    return {"without": without, "with_ingest": with_ingest, "ingest_batch": args.ingest_batch, "seconds": args.ingest_seconds}


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _print_state(tag: str, state: str, st: Mapping[str, Any]) -> None:
    parts = [f"{m} {v['p50_ms']:.1f}/{v['p95_ms']:.1f}" for m, v in st["unloaded"].items()]
    conc = [f"{m} {v['qps']} QPS p95 {v['p95_ms']:.1f}" for m, v in st["concurrent"].items()]
    print(f"{tag} {state}: p50/p95 ms {', '.join(parts)}{'; ' if conc else ''}{', '.join(conc)}", flush=True)


# --------------------------------------------------------------------------- report


def validate_report(report: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` when ``report`` lacks what the docs' tables are made from."""
    for key in REPORT_KEYS:
        if key not in report:
            raise ValueError(f"report lacks {key!r}")
    if not isinstance(report["runs"], list) or not report["runs"]:
        raise ValueError("runs must be a non-empty list")
    for run in report["runs"]:
        for key in RUN_KEYS:
            if key not in run:
                raise ValueError(f"run {run.get('engine')}/{run.get('label')} lacks {key!r}")
        if run["engine"] not in ("edge", "local"):
            raise ValueError(f"unknown engine {run['engine']!r}")
        states = ("exact", "hnsw") if run["engine"] == "edge" else ("exact",)
        for state in states:
            st = run["states"].get(state)
            if st is None:
                raise ValueError(f"run {run['engine']}/{run['label']} lacks state {state!r}")
            for mode in MODES:
                row = st["unloaded"].get(mode)
                if row is None or not row["n"] or not row["p50_ms"] <= row["p95_ms"]:
                    raise ValueError(f"{run['engine']}/{run['label']}/{state}: bad unloaded {mode}: {row}")
            for mode, row in st["concurrent"].items():
                if not row["n"] or row["errors"] or not row["qps"] > 0:
                    raise ValueError(f"{run['engine']}/{run['label']}/{state}: bad concurrent {mode}: {row}")
        if run["upsert"]["points_per_s"] <= 0:
            raise ValueError("upsert rate must be positive")
        if run["engine"] == "edge":
            if run["build"]["points"] != run["points"]:
                raise ValueError(f"{run['label']}: {run['build']['points']} points after the build, expected {run['points']}")
            for r in run["recall"]["rows"]:
                if not 0.0 <= r["dense_recall"] <= 1.0 or not 0.0 <= r["hybrid_recall"] <= 1.0:
                    raise ValueError(f"{run['label']}: recall out of range: {r}")
            if run["ingest"] and run["ingest"]["with_ingest"].get("background", {}).get("points", 0) <= 0:
                raise ValueError(f"{run['label']}: the concurrent ingest wrote nothing")


def _name(r: Mapping[str, Any]) -> str:
    variant = (r.get("variant") or {}).get("name")
    return f"{r['label']}{' ' + variant if variant and variant != 'service' else ''}"


def format_tables(report: Mapping[str, Any]) -> str:
    runs = report["runs"]
    out = ["", "Upsert, index build (in the background: copy, child process, swap), memory and disk"]
    out.append("| engine | collection | points | upsert (store only) | points/s | build | build CPU | build peak RSS (child) | "
               "segments | RSS delta after upsert / after build | disk allocated after upsert / after build / peak |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        b, u = r.get("build"), r["upsert"]
        head = f"| {r['engine']}{' (in memory)' if r.get('in_memory') else ''} | {_name(r)} | {r['points']:,} | {u['seconds']} s | {u['points_per_s']:,.0f} | "
        if b:
            c = b["child"]
            out.append(head + f"{b['seconds']} s | {c.get('cpu_seconds')} s | {c.get('peak_rss_mb'):,.0f} MB | {b['segments']} | "
                       f"{r['memory']['rss_delta_mb']:,.0f} / {b['rss_delta_mb']:,.0f} MB | {r['disk']['allocated_mb']:,.0f} / "
                       f"{b['disk']['allocated_mb']:,.0f} / {b['disk_peak_mb']:,.0f} MB |")
        else:
            out.append(head + f"— | — | — | {r['stats_before']['segments']} | {r['memory']['rss_delta_mb']:,.0f} MB | "
                       f"{r['disk']['allocated_mb']:,.0f} MB |")
    clients = report["config"]["clients"]
    out += ["", f"Store query latency, top 100 with payload (p50 / p95 ms; QPS at {clients} client threads; "
            f"HNSW at the shipped QDRANT_HNSW_EF {report['config'].get('shipped_ef')}, wider past "
            f"{report['config'].get('shipped_ef_points')} points)"]
    out.append(f"| engine | collection | search | dense | sparse | hybrid RRF | hybrid batch + z-score | dense x{clients} | "
               f"sparse x{clients} | hybrid x{clients} |")
    out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        for state, st in r["states"].items():
            u, c = st["unloaded"], st["concurrent"]
            cells = [f"{u[m]['p50_ms']:.1f} / {u[m]['p95_ms']:.1f}" for m in MODES]
            cells += [f"{c[m]['qps']:.0f} QPS, {c[m]['p50_ms']:.0f} / {c[m]['p95_ms']:.0f}" if m in c else "—"
                      for m in CONCURRENT_MODES]
            out.append(f"| {r['engine']} | {_name(r)} | {state} | " + " | ".join(cells) + " |")
    rec = [r for r in runs if r.get("recall")]
    if rec:
        out += ["", "HNSW recall@100 against exact search (same collection before the build), unloaded p50 / p95 ms"]
        out.append("| collection | ef | dense recall@100 | hybrid (RRF) recall@100 | dense ms | hybrid ms |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for r in rec:
            shipped = r["recall"].get("shipped_effective_ef", r["recall"]["shipped_ef"])
            for x in r["recall"]["rows"]:
                ef = f"{x['ef'] or 'engine default'}{' (shipped)' if x['ef'] == shipped else ''}"
                out.append(f"| {_name(r)} | {ef} | {x['dense_recall']:.4f} | {x['hybrid_recall']:.4f} | "
                           f"{x['dense_p50_ms']:.1f} / {x['dense_p95_ms']:.1f} | {x['hybrid_p50_ms']:.1f} / {x['hybrid_p95_ms']:.1f} |")
        out += ["", "ef needed (smallest swept) for recall@100 0.95 / 0.99"]
        out.append("| collection | dense 0.95 | dense 0.99 | hybrid 0.95 | hybrid 0.99 |")
        out.append("|---|---:|---:|---:|---:|")
        for r in rec:
            need = r["recall"]["ef_needed"]
            cells = [str(need[k] or f"> {max(x['ef'] for x in r['recall']['rows'])}")
                     for k in ("dense_0.95", "dense_0.99", "hybrid_0.95", "hybrid_0.99")]
            out.append(f"| {_name(r)} | " + " | ".join(cells) + " |")
    ing = [r for r in runs if r.get("ingest")]
    if ing:
        out += ["", "Hybrid (RRF) at the client threads, exact search, with and without a concurrent store-only ingest"]
        out.append("| collection | hybrid QPS alone | p50 / p95 ms | hybrid QPS during ingest | p50 / p95 ms | "
                   "ingest points/s meanwhile |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for r in ing:
            a, b = r["ingest"]["without"], r["ingest"]["with_ingest"]
            out.append(f"| {_name(r)} | {a['qps']} | {a['p50_ms']:.1f} / {a['p95_ms']:.1f} | {b['qps']} | "
                       f"{b['p50_ms']:.1f} / {b['p95_ms']:.1f} | {b.get('background', {}).get('points_per_s')} |")
    for r in runs:
        if r.get("stopped"):
            out.append(f"\n{r['engine']} at {r['label']}: {r['stopped']}")
    return "\n".join(out)


def _write(path: str | None, report: Mapping[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")


def _label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else (
        f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n))


def bench_scale(args: argparse.Namespace) -> int:
    from services.retrieval.config import RetrievalConfig

    sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    args.efs = [int(s) for s in str(args.efs).split(",") if s.strip()]
    service = RetrievalConfig()
    args.shipped_ef = service.hnsw_ef or None
    args.shipped_ef_points = service.hnsw_ef_points
    variants = [parse_variant(spec, service.shard_tuning()) for spec in (args.variant or ["service"])]
    started = time.perf_counter()
    try:
        real = load_real(Path(args.dataset), Path(args.cache_dir), args.scifact_docs, args.queries, args.seed)
    except FileNotFoundError as exc:
        print(f"searchctl bench scale: skipped: {exc}; pass --dataset DIR", file=sys.stderr)
        return 0
    import qdrant_client

    synth = SyntheticCorpus(real, args.seed, dense_model=args.dense_model)
    queries = make_queries(real)
    report: dict[str, Any] = {
        "machine": {**machine_info(), "qdrant_edge": version("qdrant-edge-py"),
                    "qdrant_client": getattr(qdrant_client, "__version__", None) or version("qdrant-client"),
                    "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "config": {"sizes": sizes, "queries": len(real.query_texts), "clients": args.clients,
                   "concurrent_queries": max(args.clients * 2, args.concurrent_queries), "limit": LIMIT,
                   "prefetch": LIMIT, "batch_size": args.batch_size, "efs": args.efs, "shipped_ef": args.shipped_ef,
                   "shipped_ef_points": args.shipped_ef_points,
                   "seed": args.seed, "local_stop_ms": args.local_stop_ms, "quick": args.quick,
                   "variants": [asdict(v) for v in variants]},
        "vectors": {**synth.describe(), "real_docs": len(real.doc_ids),
                    "real_sparse_terms_per_doc_mean": round(float(np.mean([len(s.indices) for s in real.sparse])), 1),
                    "queries": "real SciFact query texts (random order, seed), dense by BiEncoder.embed_queries, "
                               "sparse by Bm25SparseEncoder.encode_query, at every size"},
        "runs": [],
        "notes": list(args.note or []),
    }
    if args.append and args.out and Path(args.out).is_file():
        previous = json.loads(Path(args.out).read_text())
        report["runs"] = previous.get("runs", [])
        report["notes"] = previous.get("notes", []) + report["notes"]
        report["previous_machine"] = previous.get("machine")
    print(f"machine: {report['machine']}")
    print(f"vectors: {json.dumps(report['vectors'])}", flush=True)
    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        if args.scifact:
            pts = real_points(real)
            forced = Variant("forced-index", replace(variants[0].tuning, indexing_threshold_kb=1, full_scan_threshold_kb=1))
            report["runs"].append(run_size("edge", f"scifact-{len(pts)}", len(pts), lambda s, c: pts[s:s + c], synth,
                                           queries, args, root, synthetic=False, variant=forced))
            _write(args.out, report)
        local_on = not args.no_local
        for n in sizes:
            q = args.large_queries if args.large_queries and n >= 1_000_000 else None
            if local_on:
                run = run_size("local", _label(n), n, synth.batch, synth, queries, args, root, synthetic=True,
                               n_queries=min(args.local_queries, args.queries))
                report["runs"].append(run)
                _write(args.out, report)
                if run["stopped"]:
                    local_on = False
            for variant in variants:
                report["runs"].append(run_size("edge", _label(n), n, synth.batch, synth, queries, args, root,
                                               synthetic=True, variant=variant, n_queries=q))
                _write(args.out, report)
    finally:
        if not args.data_dir:
            shutil.rmtree(root, ignore_errors=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["load_avg_end"] = load_avg()
    _write(args.out, report)
    print(format_tables(report))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def register(bsub: argparse._SubParsersAction, default_dataset: str) -> None:
    p = bsub.add_parser("scale", help="the store alone (Qdrant Edge, old local mode) at 10k-1M points: upsert, "
                        "background index build, query latency exact/HNSW, memory, disk, recall",
                        description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=default_dataset, help="BEIR folder for the real vectors (default %(default)s)")
    p.add_argument("--sizes", default="10000,100000,1000000", help="collection sizes (default %(default)s)")
    p.add_argument("--dense-model", choices=DENSE_MODELS, default="interpolated",
                   help="how synthetic dense vectors are drawn (default %(default)s; see services/cli/bench/scale_data.py)")
    p.add_argument("--variant", action="append", metavar="NAME[:KEY=VALUE,...]",
                   help="an index build to measure, the service's settings changed by KEY=VALUE (ShardTuning's fields: "
                        "indexing_threshold_kb, max_indexing_threads, segments, dense_storage, hnsw_m, ef_construct, "
                        "full_scan_threshold_kb; and build_while_ingesting); repeatable (default: the service's)")
    p.add_argument("--optimize-after", type=int, default=20_000,
                   help="EDGE_OPTIMIZE_AFTER_POINTS of build_while_ingesting variants (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="unloaded queries only: no client threads, no concurrent ingest")
    p.add_argument("--queries", type=int, default=50, help="distinct real queries per mode (default %(default)s)")
    p.add_argument("--large-queries", type=int, default=0, help="queries per mode at 1M points and more (0 = --queries)")
    p.add_argument("--clients", type=int, default=8, help="closed-loop client threads (default %(default)s)")
    p.add_argument("--concurrent-queries", type=int, default=64,
                   help="queries per mode shared by the client threads (default %(default)s)")
    p.add_argument("--efs", default="64,128,256,512,1024", help="hnsw_ef values for recall (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=1000, help="points per upsert (default %(default)s)")
    p.add_argument("--ingest-batch", type=int, default=64, help="points per upsert of the concurrent ingest (default %(default)s)")
    p.add_argument("--ingest-seconds", type=float, default=5.0,
                   help="seconds of hybrid load with and without the concurrent ingest (default %(default)s)")
    p.add_argument("--ingest-points", type=int, default=20_000,
                   help="at most this many points written by the concurrent ingest (default %(default)s)")
    p.add_argument("--no-local", action="store_true", help="skip the old local mode")
    p.add_argument("--local-in-memory", action="store_true",
                   help="old local mode without its sqlite persistence (same search code; upsert without disk writes)")
    p.add_argument("--local-queries", type=int, default=10, help="queries per mode for the old local mode (default %(default)s)")
    p.add_argument("--local-stop-ms", type=float, default=1000.0,
                   help="no larger sizes for local mode once a query's p50 passes this (default %(default)s)")
    p.add_argument("--scifact", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the real SciFact corpus with HNSW forced (recall on real embeddings)")
    p.add_argument("--scifact-docs", type=int, default=0, help="first N SciFact documents only (0 = all)")
    p.add_argument("--data-dir", help="where the collections are built (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep each collection's files")
    p.add_argument("--cache-dir", default=".data/bench-scale/cache", help="embedding cache (default %(default)s)")
    p.add_argument("--out", "--json", dest="out", metavar="FILE", help="write the results as JSON (after every size)")
    p.add_argument("--append", action="store_true", help="add to the runs already in --out")
    p.add_argument("--note", action="append", help="a note recorded in the JSON (repeatable)")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=bench_scale)
