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

Per collection size N:
* store-only upsert rate (batches of ``--batch-size`` points, vectors precomputed);
* Retrieve-equivalent query latency p50/p95 for dense, sparse and hybrid, unloaded
  (sequential) and with ``--clients`` closed-loop client threads (QPS too), both exact
  (plain segments: how the service serves) and after ``EdgeBackend.optimize`` (HNSW);
* the index build time (``optimize``), segments and indexed vectors;
* resident memory (VmRSS delta of this process) and disk (allocated blocks, like ``du``;
  Qdrant Edge preallocates its files, so the apparent size is larger and also reported);
* HNSW recall@100 against the exact top 100 of the same collection (taken before
  ``optimize``) at the engine's default ``ef`` and at ``--efs``;
* hybrid QPS of the client threads with and without a concurrent store-only ingest.

Vectors. The real SciFact corpus is embedded once with the service's bi-encoder (cached
under ``--cache-dir``) and encoded with the project's BM25 encoder. Synthetic points
(every size N): dense = a Gaussian with the empirical mean and covariance of those real
document embeddings, L2-normalised; sparse = ``dl`` analyzed tokens drawn from a unigram
vocabulary (SciFact's own term ids with their collection frequencies, extended by a
Zipf tail fitted to them), ``dl`` resampled from SciFact's document lengths, values the
BM25 document weights of ``Bm25SparseEncoder`` (k1, b, avg_doc_length); payload like
``DocumentStore`` writes (doc_id, passage, title, text, payload), about 200 bytes, with
title and text cut from real SciFact documents. Queries: real SciFact query texts through
the real models (``BiEncoder.embed_queries``, ``Bm25SparseEncoder.encode_query``) at every
size; their term ids are real, so they meet the synthetic postings at realistic rates.
With ``--scifact`` the real corpus itself is measured too, with HNSW forced (indexing
threshold 1 KB) so that recall on real embeddings can be reported.

No figure is asserted anywhere; read them with the machine line and the notes.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from services.cli.bench.harness import _bi_encoder, _retrieval_config, load_corpus, machine_info
from services.retrieval import fusion
from services.retrieval.backends.base import DENSE, SPARSE, CollectionSchema, Fused, Nearest, PointIn, SparseVector
from services.retrieval.sparse import Bm25SparseEncoder, term_id
from services.retrieval.store import point_id

MODES = ("dense", "sparse", "hybrid", "hybrid_batch")
CONCURRENT_MODES = ("dense", "sparse", "hybrid")
LIMIT = 100
COLLECTION = "bench_scale"
REPORT_KEYS = ("machine", "config", "vectors", "runs", "notes")
RUN_KEYS = ("engine", "label", "points", "synthetic", "upsert", "memory", "disk", "states", "build", "recall",
            "ingest", "stopped")


# --------------------------------------------------------------------------- small helpers


def summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95 (linear interpolation) and count of ``latencies_ms``."""
    if not latencies_ms:
        return {"p50_ms": math.nan, "p95_ms": math.nan, "n": 0}
    xs = np.asarray(latencies_ms, dtype=float)
    return {"p50_ms": round(float(np.percentile(xs, 50)), 3), "p95_ms": round(float(np.percentile(xs, 95)), 3),
            "n": int(xs.size)}


def rss_bytes() -> int:
    """Resident set size of this process (VmRSS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
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


# --------------------------------------------------------------------------- vectors


@dataclass
class RealData:
    """The real SciFact corpus and queries, embedded and encoded by the service's models."""

    doc_ids: list[str]
    titles: list[str]
    texts: list[str]
    dense: np.ndarray  # (docs, dim), L2-normalised
    sparse: list[Any]  # SparseEmbedding per document
    doc_lengths: np.ndarray  # analyzed tokens per document
    term_counts: Counter  # collection frequency per term id
    query_texts: list[str]
    query_dense: np.ndarray
    query_sparse: list[Any]  # SparseEmbedding per query (only queries with terms kept)
    encoder: Any  # Bm25SparseEncoder


def load_real(dataset: Path, cache_dir: Path, max_docs: int, n_queries: int, seed: int) -> RealData:
    corpus = load_corpus(dataset, max_docs=max_docs)
    if corpus is None:
        raise FileNotFoundError(f"no BEIR dataset at {dataset} (corpus.jsonl + queries.jsonl)")
    embedder = _bi_encoder(_retrieval_config(), 0)
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = cache_dir / f"scifact_{embedder.name}_{embedder.max_length}_{len(corpus.passages)}.npy"
    if cache.is_file():
        dense = np.load(cache)
    else:
        print(f"embedding {len(corpus.passages)} documents once (cached in {cache}) ...", flush=True)
        dense = np.concatenate([embedder.embed_documents(corpus.passages[i:i + 256])
                                for i in range(0, len(corpus.passages), 256)]).astype(np.float32)
        np.save(cache, dense)
    encoder = Bm25SparseEncoder()
    sparse = encoder.encode_documents(corpus.passages)
    lengths, counts = [], Counter()
    for text in corpus.passages:
        terms = encoder.analyze(text)
        lengths.append(len(terms))
        counts.update(term_id(t) for t in terms)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(corpus.queries))
    texts, qsparse = [], []
    for i in order:
        encoded = encoder.encode_query(corpus.queries[i])
        if encoded.indices:
            texts.append(corpus.queries[i])
            qsparse.append(encoded)
        if len(texts) >= n_queries:
            break
    qdense = embedder.embed_queries(texts).astype(np.float32)
    return RealData([d["id"] for d in corpus.docs], [d["title"] for d in corpus.docs],
                    [d["text"] for d in corpus.docs], dense, sparse, np.asarray(lengths), counts, texts, qdense,
                    qsparse, encoder)


class SyntheticCorpus:
    """Deterministic synthetic points that resemble the real ones (see the module docstring)."""

    def __init__(self, real: RealData, seed: int, vocabulary: int = 200_000, payload_text_chars: int = 60) -> None:
        self.seed = seed
        dense = real.dense.astype(np.float64)
        self.mean = dense.mean(axis=0)
        cov = np.cov(dense, rowvar=False) + 1e-6 * np.eye(dense.shape[1])
        self.chol = np.linalg.cholesky(cov).astype(np.float32)
        self.mean32 = self.mean.astype(np.float32)
        self.dim = dense.shape[1]
        # Vocabulary: SciFact's term ids ranked by collection frequency, then a Zipf tail.
        ranked = real.term_counts.most_common()
        ids = np.array([t for t, _ in ranked], dtype=np.int64)
        freq = np.array([c for _, c in ranked], dtype=np.float64)
        ranks = np.arange(1, len(freq) + 1, dtype=np.float64)
        lo, hi = 10, max(11, len(freq) // 2)
        slope, intercept = np.polyfit(np.log(ranks[lo:hi]), np.log(freq[lo:hi]), 1)
        self.zipf_exponent = float(-slope)
        extra = max(0, vocabulary - len(ids))
        tail_ranks = np.arange(len(ids) + 1, len(ids) + extra + 1, dtype=np.float64)
        tail_freq = np.exp(intercept) * tail_ranks ** slope
        rng = np.random.default_rng([seed, 99])
        taken = set(ids.tolist())
        tail_ids = []
        while len(tail_ids) < extra:
            for t in rng.integers(1, 2**31 - 1, size=extra - len(tail_ids)).tolist():
                if t not in taken:
                    taken.add(t)
                    tail_ids.append(t)
        self.term_ids = np.concatenate([ids, np.array(tail_ids, dtype=np.int64)])
        p = np.concatenate([freq, tail_freq])
        self.cum = np.cumsum(p / p.sum())
        self.cum[-1] = 1.0
        self.real_vocabulary = len(ids)
        self.doc_lengths = np.maximum(real.doc_lengths, 1)
        enc = real.encoder
        self.k1, self.b, self.avgdl = enc.k1, enc.b, enc.avg_doc_length
        self.titles = [t[:30] for t in real.titles]
        self.texts = [t[:payload_text_chars] for t in real.texts]
        # Independent draws repeat terms less than real text does (no burstiness), so draw
        # fewer tokens than the document's length, calibrated to SciFact's unique terms per
        # document; the BM25 length normalisation still uses the full length.
        self.target_terms = float(np.mean([len(s.indices) for s in real.sparse]))
        self.draw_scale = 1.0
        lo, hi = 0.05, 1.0
        for _ in range(12):
            self.draw_scale = (lo + hi) / 2
            if self._terms_per_doc() > self.target_terms:
                hi = self.draw_scale
            else:
                lo = self.draw_scale

    def _terms_per_doc(self, count: int = 400) -> float:
        rng = np.random.default_rng([self.seed, 7])
        draws = np.maximum(1, np.rint(rng.choice(self.doc_lengths, size=count) * self.draw_scale)).astype(np.int64)
        ranks = np.searchsorted(self.cum, rng.random(int(draws.sum())))
        keys = (np.repeat(np.arange(count, dtype=np.int64), draws) << 32) | self.term_ids[ranks]
        return np.unique(keys).size / count

    def batch(self, start: int, count: int) -> list:
        """Points ``start .. start+count-1`` (the same points for the same seed, whatever the batching)."""

        rng = np.random.default_rng([self.seed, start, count])
        z = rng.standard_normal((count, self.dim), dtype=np.float32)
        x = self.mean32 + z @ self.chol.T
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        dl = rng.choice(self.doc_lengths, size=count)
        draws = np.maximum(1, np.rint(dl * self.draw_scale)).astype(np.int64)
        ranks = np.searchsorted(self.cum, rng.random(int(draws.sum())))
        rows = np.repeat(np.arange(count, dtype=np.int64), draws)
        keys = (rows << 32) | self.term_ids[ranks]
        uniq, tf = np.unique(keys, return_counts=True)
        doc = uniq >> 32
        term = (uniq & 0xFFFFFFFF).astype(np.int64)
        norm = self.k1 * (1 - self.b + self.b * dl[doc] / self.avgdl)
        values = (tf * (self.k1 + 1) / (tf + norm)).astype(np.float32)
        bounds = np.searchsorted(doc, np.arange(count + 1))
        points = []
        for j in range(count):
            i = start + j
            doc_id = f"syn-{i:07d}"
            a, b = bounds[j], bounds[j + 1]
            k = i % len(self.texts)
            points.append(PointIn(
                id=point_id(doc_id), dense=x[j].tolist(),
                sparse=SparseVector(tuple(term[a:b].tolist()), tuple(values[a:b].tolist())),
                payload={"doc_id": doc_id, "passage": 0, "title": self.titles[k], "text": self.texts[k],
                         "payload": {"source": "synthetic", "n": i}},
            ))
        return points

    def describe(self) -> dict[str, Any]:
        sample = self.batch(10**9, 500)
        nnz = [len(p.sparse.indices) for p in sample]
        payload = [len(json.dumps(p.payload)) for p in sample]
        return {"dense": "Gaussian with the empirical mean and covariance of the real SciFact document embeddings "
                         "(bge-small-en), L2-normalised",
                "sparse": f"unigram draws from SciFact's {self.real_vocabulary} term ids (collection frequencies) plus a "
                          f"Zipf tail (exponent {self.zipf_exponent:.2f}, fitted) to {len(self.term_ids)} terms; "
                          f"document lengths resampled from SciFact, {self.draw_scale:.2f} x length tokens drawn "
                          f"(calibrated to SciFact's {self.target_terms:.0f} unique terms per document); "
                          "BM25 document weights with the full length",
                "sparse_terms_per_doc_mean": round(float(np.mean(nnz)), 1),
                "payload_bytes_mean": round(float(np.mean(payload)), 1)}


def real_points(real: RealData) -> list:
    return [PointIn(id=point_id(doc_id), dense=vec.tolist(),
                    sparse=SparseVector(tuple(sv.indices), tuple(sv.values)) if sv.indices else None,
                    payload={"doc_id": doc_id, "passage": 0, "title": title, "text": text, "payload": {}})
            for doc_id, title, text, vec, sv in zip(real.doc_ids, real.titles, real.texts, real.dense, real.sparse)]


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


# --------------------------------------------------------------------------- engines


def edge_backend(path: Path, force_index: bool = False):
    """``EdgeBackend`` as the service opens it; ``force_index`` indexes every segment (small corpora)."""
    from services.retrieval.backends.edge import EdgeBackend
    from services.retrieval.backends.edge_tuning import ShardTuning

    if not force_index:
        return EdgeBackend(path)
    # The service's config with a 1 KB indexing and full-scan threshold.
    return EdgeBackend(path, tuning=ShardTuning(indexing_threshold_kb=1, full_scan_threshold_kb=1))


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
    for start in range(0, n, batch):
        points = points_for(start, min(batch, n - start))
        t = time.perf_counter()
        backend.upsert(COLLECTION, points)
        busy += time.perf_counter() - t
    return {"seconds": round(busy, 2), "points_per_s": round(n / busy, 1) if busy else math.nan, "batch": batch}


def measure_state(backend, queries, args, n_queries: int, concurrent_total: int) -> tuple[dict, dict]:
    stats, results = unloaded(backend, COLLECTION, queries, MODES, n_queries)
    concurrent = {mode: closed_loop(backend, COLLECTION, mode, queries[mode][:n_queries], args.clients,
                                    concurrent_total) for mode in CONCURRENT_MODES}
    return {"unloaded": stats, "concurrent": concurrent}, results


def run_size(engine: str, label: str, n: int, points_for, synth: SyntheticCorpus, queries, args, root: Path,
             synthetic: bool, force_index: bool = False, n_queries: int | None = None) -> dict[str, Any]:
    """Every measurement of one engine on one collection of ``n`` points."""
    n_queries = n_queries or args.queries
    concurrent_total = max(args.clients * 2, args.concurrent_queries if engine == "edge" else args.clients)
    path = root / f"{engine}-{label}"
    shutil.rmtree(path, ignore_errors=True)
    trim_memory()
    rss0 = rss_bytes()
    backend = edge_backend(path, force_index) if engine == "edge" else local_backend(path, args.local_in_memory)
    run: dict[str, Any] = {"engine": engine, "label": label, "points": n, "synthetic": synthetic,
                           "in_memory": engine == "local" and args.local_in_memory,
                           "started": time.strftime("%H:%M:%S"), "load_avg_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        backend.create_collection(_schema(synth.dim))
        print(f"[{engine} {label}] upserting {n} points ...", flush=True)
        run["upsert"] = upsert_all(backend, points_for, n, args.batch_size)
        backend.flush()
        trim_memory()
        run["memory"] = {"rss_delta_mb": round((rss_bytes() - rss0) / 1e6, 1)}
        run["disk"] = disk_usage(path)
        s = backend.stats(COLLECTION)
        run["stats_before"] = {"points": s.points, "segments": s.segments, "indexed_vectors": s.indexed_vectors}
        print(f"[{engine} {label}] upsert {run['upsert']['seconds']} s; exact queries ...", flush=True)
        exact_state, exact_results = measure_state(backend, queries, args, n_queries, concurrent_total)
        run["states"] = {"exact": exact_state}
        _print_state(engine, label, "exact", exact_state)
        if engine == "local" and max(v["p50_ms"] for v in exact_state["unloaded"].values()) > args.local_stop_ms:
            run["stopped"] = f"a query's p50 passed {args.local_stop_ms:g} ms: larger sizes not run"
        else:
            run["stopped"] = None
        if engine != "edge":
            run["build"] = run["recall"] = run["ingest"] = None
            return run
        # Hybrid QPS with and without a concurrent store-only ingest (the service's exact state).
        written: list[str] = []
        hybrid_q = queries["hybrid"][:n_queries]
        batches = [synth.batch(2 * 10**8 + i, args.ingest_batch)
                   for i in range(0, args.ingest_points, args.ingest_batch)]  # made before, not timed
        without = closed_loop(backend, COLLECTION, "hybrid", hybrid_q, args.clients, 0, duration=args.ingest_seconds)
        with_ingest = closed_loop(backend, COLLECTION, "hybrid", hybrid_q, args.clients, 0, duration=args.ingest_seconds,
                                  background=ingest_loop(backend, COLLECTION, batches, written))
        del batches
        run["ingest"] = {"without": without, "with_ingest": with_ingest, "ingest_batch": args.ingest_batch,
                         "seconds": args.ingest_seconds}
        for start in range(0, len(written), 1000):  # the collection is back to its n points before optimizing
            backend.delete_ids(COLLECTION, written[start:start + 1000])
        print(f"[{engine} {label}] hybrid QPS {without['qps']} without / {with_ingest['qps']} with ingest "
              f"({with_ingest.get('background', {}).get('points_per_s')} points/s); optimizing ...", flush=True)
        t = time.perf_counter()
        backend.optimize(COLLECTION)
        build_s = time.perf_counter() - t
        backend.flush()
        s = backend.stats(COLLECTION)
        trim_memory()
        run["build"] = {"seconds": round(build_s, 1), "segments": s.segments, "indexed_vectors": s.indexed_vectors,
                        "points": s.points, "rss_delta_mb": round((rss_bytes() - rss0) / 1e6, 1),
                        "disk": disk_usage(path)}
        print(f"[{engine} {label}] optimize {build_s:.1f} s -> {s.segments} segments, {s.indexed_vectors} indexed",
              flush=True)
        hnsw_state, hnsw_results = measure_state(backend, queries, args, n_queries, concurrent_total)
        run["states"]["hnsw"] = hnsw_state
        _print_state(engine, label, "hnsw", hnsw_state)
        recall = [{"ef": None, "dense_recall": recall_at(exact_results["dense"], hnsw_results["dense"]),
                   "hybrid_recall": recall_at(exact_results["hybrid"], hnsw_results["hybrid"]),
                   # sparse never uses HNSW: below 1.0 only through ties at rank 100
                   "sparse_agreement": recall_at(exact_results["sparse"], hnsw_results["sparse"]),
                   "dense_p50_ms": hnsw_state["unloaded"]["dense"]["p50_ms"],
                   "hybrid_p50_ms": hnsw_state["unloaded"]["hybrid"]["p50_ms"]}]
        for ef in args.efs:
            backend.hnsw_ef = ef
            st, res = unloaded(backend, COLLECTION, queries, ("dense", "hybrid"), n_queries)
            recall.append({"ef": ef, "dense_recall": recall_at(exact_results["dense"], res["dense"]),
                           "hybrid_recall": recall_at(exact_results["hybrid"], res["hybrid"]),
                           "dense_p50_ms": st["dense"]["p50_ms"], "hybrid_p50_ms": st["hybrid"]["p50_ms"]})
        backend.hnsw_ef = None
        run["recall"] = recall
        print(f"[{engine} {label}] recall@100 " + ", ".join(
            f"ef={r['ef'] or 'default'}: dense {r['dense_recall']} hybrid {r['hybrid_recall']}" for r in recall), flush=True)
        return run
    finally:
        run["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        backend.close()
        if not args.keep:
            shutil.rmtree(path, ignore_errors=True)


def _print_state(engine: str, label: str, state: str, st: Mapping[str, Any]) -> None:
    parts = [f"{m} {v['p50_ms']:.1f}/{v['p95_ms']:.1f}" for m, v in st["unloaded"].items()]
    conc = [f"{m} {v['qps']} QPS p95 {v['p95_ms']:.1f}" for m, v in st["concurrent"].items()]
    print(f"[{engine} {label}] {state}: p50/p95 ms {', '.join(parts)}; {', '.join(conc)}", flush=True)


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
            for mode in CONCURRENT_MODES:
                row = st["concurrent"].get(mode)
                if row is None or not row["n"] or row["errors"] or not row["qps"] > 0:
                    raise ValueError(f"{run['engine']}/{run['label']}/{state}: bad concurrent {mode}: {row}")
        if run["upsert"]["points_per_s"] <= 0:
            raise ValueError("upsert rate must be positive")
        if run["engine"] == "edge":
            if run["build"]["points"] != run["points"]:
                raise ValueError(f"{run['label']}: {run['build']['points']} points after optimize, expected {run['points']}")
            for r in run["recall"]:
                if not 0.0 <= r["dense_recall"] <= 1.0 or not 0.0 <= r["hybrid_recall"] <= 1.0:
                    raise ValueError(f"{run['label']}: recall out of range: {r}")
            if run["ingest"]["with_ingest"].get("background", {}).get("points", 0) <= 0:
                raise ValueError(f"{run['label']}: the concurrent ingest wrote nothing")


def format_tables(report: Mapping[str, Any]) -> str:
    runs = report["runs"]
    out = ["", "Upsert, index build, memory and disk"]
    out.append("| engine | collection | points | upsert (store only) | points/s | build (optimize) | segments | "
               "indexed vectors | RSS delta after upsert / after build | disk allocated (apparent) after upsert / after build |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        b = r.get("build")
        out.append(
            f"| {r['engine']}{' (in memory)' if r.get('in_memory') else ''} | {r['label']} | {r['points']:,} | {r['upsert']['seconds']} s | {r['upsert']['points_per_s']:,.0f} | "
            + (f"{b['seconds']} s | {b['segments']} | {b['indexed_vectors']:,} | {r['memory']['rss_delta_mb']:,.0f} / "
               f"{b['rss_delta_mb']:,.0f} MB | {r['disk']['allocated_mb']:,.0f} ({r['disk']['apparent_mb']:,.0f}) / "
               f"{b['disk']['allocated_mb']:,.0f} ({b['disk']['apparent_mb']:,.0f}) MB |" if b else
               f"— | {r['stats_before']['segments']} | — | {r['memory']['rss_delta_mb']:,.0f} MB | "
               f"{r['disk']['allocated_mb']:,.0f} ({r['disk']['apparent_mb']:,.0f}) MB |"))
    out += ["", "Store query latency, top 100 with payload (p50 / p95 ms; QPS at "
            f"{report['config']['clients']} client threads)"]
    out.append("| engine | collection | search | dense | sparse | hybrid RRF | hybrid batch + z-score | "
               "dense xN | sparse xN | hybrid xN |".replace("xN", f"x{report['config']['clients']}"))
    out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        for state, st in r["states"].items():
            u, c = st["unloaded"], st["concurrent"]
            cells = [f"{u[m]['p50_ms']:.1f} / {u[m]['p95_ms']:.1f}" for m in MODES]
            cells += [f"{c[m]['qps']:.0f} QPS, {c[m]['p50_ms']:.0f} / {c[m]['p95_ms']:.0f}" for m in CONCURRENT_MODES]
            out.append(f"| {r['engine']} | {r['label']} | {state} | " + " | ".join(cells) + " |")
    rec = [r for r in runs if r.get("recall")]
    if rec:
        out += ["", "HNSW recall@100 against exact search (same collection before optimize), unloaded p50 ms"]
        out.append("| collection | ef | dense recall@100 | hybrid (RRF) recall@100 | dense p50 | hybrid p50 |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for r in rec:
            for x in r["recall"]:
                out.append(f"| {r['label']} | {x['ef'] or 'default (ef_construct 100)'} | {x['dense_recall']:.4f} | "
                           f"{x['hybrid_recall']:.4f} | {x['dense_p50_ms']:.1f} | {x['hybrid_p50_ms']:.1f} |")
    ing = [r for r in runs if r.get("ingest")]
    if ing:
        out += ["", "Hybrid (RRF) at the client threads, exact search, with and without a concurrent store-only ingest"]
        out.append("| collection | hybrid QPS alone | p50 / p95 ms | hybrid QPS during ingest | p50 / p95 ms | "
                   "ingest points/s meanwhile |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for r in ing:
            a, b = r["ingest"]["without"], r["ingest"]["with_ingest"]
            out.append(f"| {r['label']} | {a['qps']} | {a['p50_ms']:.1f} / {a['p95_ms']:.1f} | {b['qps']} | "
                       f"{b['p50_ms']:.1f} / {b['p95_ms']:.1f} | {b.get('background', {}).get('points_per_s')} |")
    stopped = [r for r in runs if r.get("stopped")]
    for r in stopped:
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
    sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    args.efs = [int(s) for s in str(args.efs).split(",") if s.strip()]
    started = time.perf_counter()
    try:
        real = load_real(Path(args.dataset), Path(args.cache_dir), args.scifact_docs, args.queries, args.seed)
    except FileNotFoundError as exc:
        print(f"searchctl bench scale: skipped: {exc}; pass --dataset DIR", file=sys.stderr)
        return 0
    import qdrant_client
    import qdrant_edge  # noqa: F401  (version below)

    synth = SyntheticCorpus(real, args.seed)
    queries = make_queries(real)
    report: dict[str, Any] = {
        "machine": {**machine_info(), "qdrant_edge": version("qdrant-edge-py"),
                    "qdrant_client": qdrant_client.__version__ if hasattr(qdrant_client, "__version__")
                    else version("qdrant-client")},
        "config": {"sizes": sizes, "queries": len(real.query_texts), "clients": args.clients,
                   "concurrent_queries": max(args.clients * 2, args.concurrent_queries), "limit": LIMIT,
                   "prefetch": LIMIT, "batch_size": args.batch_size, "efs": args.efs, "seed": args.seed,
                   "local_stop_ms": args.local_stop_ms},
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
            report["runs"].append(run_size("edge", f"scifact-{len(pts)}", len(pts), lambda s, c: pts[s:s + c], synth,
                                           queries, args, root, synthetic=False, force_index=True))
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
            report["runs"].append(run_size("edge", _label(n), n, synth.batch, synth, queries, args, root,
                                           synthetic=True, n_queries=q))
            _write(args.out, report)
    finally:
        if not args.data_dir:
            shutil.rmtree(root, ignore_errors=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    _write(args.out, report)
    print(format_tables(report))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def register(bsub: argparse._SubParsersAction, default_dataset: str) -> None:
    p = bsub.add_parser("scale", help="the store alone (Qdrant Edge, old local mode) at 10k-1M points: upsert, "
                        "index build, query latency exact/HNSW, memory, disk, recall",
                        description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=default_dataset, help="BEIR folder for the real vectors (default %(default)s)")
    p.add_argument("--sizes", default="10000,100000,1000000", help="collection sizes (default %(default)s)")
    p.add_argument("--queries", type=int, default=50, help="distinct real queries per mode (default %(default)s)")
    p.add_argument("--large-queries", type=int, default=0, help="queries per mode at 1M points and more (0 = --queries)")
    p.add_argument("--clients", type=int, default=8, help="closed-loop client threads (default %(default)s)")
    p.add_argument("--concurrent-queries", type=int, default=64,
                   help="queries per mode shared by the client threads (default %(default)s)")
    p.add_argument("--efs", default="128,256,512", help="hnsw_ef values for recall (default %(default)s)")
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
