"""What `searchctl bench scale` and `bench gil` measure the store with: Retrieve-equivalent
store queries as ``DocumentStore`` issues them (top 100 with payload; hybrid = two prefetches
of 100 fused by RRF in the engine, or both lists in one batch fused here by weighted z-score),
run sequentially or by closed-loop client threads, a background store-only ingest, and the
figures (percentiles, resident memory, disk, recall against exact search)."""

from __future__ import annotations

import ctypes
import gc
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.cli.bench.scale_data import RealData
from services.retrieval import fusion
from services.retrieval.backends.base import DENSE, SPARSE, Fused, Nearest, SparseVector

MODES = ("dense", "sparse", "hybrid", "hybrid_batch")
CONCURRENT_MODES = ("dense", "sparse", "hybrid")
LIMIT = 100


# --------------------------------------------------------------------------- small helpers


def summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95 (linear interpolation) and count of ``latencies_ms``."""
    if not latencies_ms:
        return {"p50_ms": math.nan, "p95_ms": math.nan, "n": 0}
    xs = np.asarray(latencies_ms, dtype=float)
    return {"p50_ms": round(float(np.percentile(xs, 50)), 3), "p95_ms": round(float(np.percentile(xs, 95)), 3),
            "n": int(xs.size)}


def rss_bytes(kind: str = "VmRSS") -> int:
    """Resident memory of this process: ``VmRSS`` (all), ``RssAnon`` (heap: what it must have)
    or ``RssFile`` (mapped files in RAM: the engine's segments, reclaimable page cache)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(kind + ":"):
                return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return 0


def trim_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so RSS deltas show the engine."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def disk_usage(path: Path) -> dict[str, float]:
    """Allocated (``du``) and apparent bytes under ``path``, in MB."""
    allocated = apparent = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return {"allocated_mb": round(allocated / 1e6, 1), "apparent_mb": round(apparent / 1e6, 1)}


def recall_at(exact: Sequence[Sequence[str]], approx: Sequence[Sequence[str]], k: int = LIMIT) -> float:
    """Mean |approx top k ∩ exact top k| / |exact top k| over queries (queries with no exact hits skipped)."""
    values = [len(set(a[:k]) & set(e[:k])) / len(e[:k]) for e, a in zip(exact, approx) if e]
    return round(float(statistics.fmean(values)), 4) if values else math.nan


# --------------------------------------------------------------------------- queries


def make_queries(real: RealData) -> dict[str, list]:
    """Per mode, the backend calls ``DocumentStore`` makes for each query (top 100, prefetch 100)."""

    out: dict[str, list] = {m: [] for m in MODES}
    for vec, sv in zip(real.query_dense, real.query_sparse):
        d = Nearest(DENSE, vec.tolist(), LIMIT)
        s = Nearest(SPARSE, SparseVector(tuple(sv.indices), tuple(sv.values)), LIMIT)
        out["dense"].append([d])
        out["sparse"].append([s])
        out["hybrid"].append([Fused((d, s), "rrf", LIMIT, 60)])
        out["hybrid_batch"].append([d, s])
    return out


def run_query(backend, name: str, mode: str, calls: list) -> list[str]:
    """One Retrieve-equivalent store query; the ids of its result, best first."""
    hits = backend.query(name, calls)
    if mode == "hybrid_batch":  # the default fusion (weighted z-score, dense 0.6) runs in the service

        rankings = [[(h.id, h.score) for h in hits[0]], [(h.id, h.score) for h in hits[1]]]
        return [pid for pid, _ in fusion.weighted_zscore(rankings, [0.6, 0.4])[:LIMIT]]
    return [h.id for h in hits[0]]


def unloaded(backend, name: str, queries: Mapping[str, list], modes: Sequence[str], n: int) -> tuple[dict, dict]:
    """Sequential queries per mode: latency summary and each query's result ids."""
    stats, results = {}, {}
    for mode in modes:
        lat, ids = [], []
        for calls in queries[mode][:n]:
            t = time.perf_counter()
            ids.append(run_query(backend, name, mode, calls))
            lat.append((time.perf_counter() - t) * 1000)
        stats[mode] = summary(lat)
        results[mode] = ids
    return stats, results


def closed_loop(backend, name: str, mode: str, calls_list: list, clients: int, total: int,
                background: Callable[[threading.Event], Any] | None = None,
                duration: float | None = None) -> dict[str, Any]:
    """``clients`` threads issuing ``total`` queries between them (or as many as they can for
    ``duration`` seconds); optional background work meanwhile."""
    counter = iter(range(total if duration is None else 10**12))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    deadline = math.inf

    def client() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None or time.perf_counter() > deadline:
                return
            t = time.perf_counter()
            try:
                run_query(backend, name, mode, calls_list[i % len(calls_list)])
            except Exception as exc:  # report, never hide
                errors.append(repr(exc))
                continue
            dt = (time.perf_counter() - t) * 1000
            with lock:
                latencies.append(dt)

    stop = threading.Event()
    bg_result: dict[str, Any] = {}
    bg = None
    if background is not None:
        def run_background() -> None:
            try:
                bg_result.update(background(stop) or {})
            except Exception as exc:  # recorded: the report then says the ingest wrote nothing
                bg_result.update(error=repr(exc), points=0)

        bg = threading.Thread(target=run_background, daemon=True)
        bg.start()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    if duration is not None:
        deadline = started + duration
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    stop.set()
    if bg is not None:
        bg.join()
    row = {**summary(latencies), "qps": round(len(latencies) / wall, 2) if wall > 0 else math.nan,
           "clients": clients, "errors": len(errors)}
    if errors:
        row["first_error"] = errors[0]
    if bg_result:
        row["background"] = bg_result
    return row


def ingest_loop(backend, name: str, batches: list[list], written: list[str]):
    """Background store-only ingest: the prepared batches of new points, in turn, until stopped."""
    def work(stop: threading.Event) -> dict[str, Any]:
        n, busy = 0, 0.0
        started = time.perf_counter()
        for points in batches:
            if stop.is_set():
                break
            t = time.perf_counter()
            backend.upsert(name, points)
            busy += time.perf_counter() - t
            written.extend(str(p.id) for p in points)
            n += len(points)
        wall = time.perf_counter() - started
        return {"points": n, "points_per_s": round(n / wall, 1) if wall else math.nan,
                "upsert_seconds": round(busy, 2)}
    return work
