"""What `searchctl bench e2e` measures besides the service itself.

* :func:`raw_rerank_limit`: the raw cross-encoder limit in the same run (pairs/s). The raw
  query-embedding limit, measured around every step, is in :mod:`services.cli.bench.limits`.
* :func:`lancedb_peer`: the same SciFact documents and the same query model in LanceDB
  in-process (embedded, Rust; ``pip install -e '.[bench]'``): dense (exact vector search),
  full-text (LanceDB's own FTS index) and hybrid (both, fused by LanceDB's default RRF),
  QPS on 1 and 8 threads including the query embedding, and NDCG@10 on the SciFact test
  queries, next to :func:`service_ndcg` of our own Search (search only) on the same queries.
* :func:`zipf_queries`: queries drawn with a Zipf distribution over the query set (a realistic
  repeat rate), and :func:`cache_lookups` to sum every service's cache hit counts from its /metrics.
* :func:`distinct_queries` (from services/cli/bench/profile.py): no query text ever repeats (no cache hits).

Document vectors for the peer are embedded once with the service's bi-encoder (same model,
same max length) and kept in ``--data-dir`` (``peer-doc-vectors.npy``).
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client.samples import Sample

from search.v1 import search_service_pb2 as pb, search_service_pb2_grpc as pb_grpc
from services.cli.beir import load_qrels, load_queries
from services.cli.bench.harness import (
    _bi_encoder,
    _cross_encoder,
    _rerank_config,
    _retrieval_config,
    _scrape,
    measure_limit_cpu,
)
from services.cli.bench.profile import distinct_queries, sample_sum, samples_of
from services.cli.evaluate import compute_metrics

__all__ = ["cache_lookups", "distinct_queries", "lancedb_peer", "raw_rerank_limit", "service_ndcg",
           "zipf_queries"]


def raw_rerank_limit(queries: Sequence[str], passages: Sequence[str], pairs: int = 64, workers: int = 2,
                     seed: int = 7) -> dict[str, float]:
    """Pairs/s of the raw cross-encoder on (query, passage) pairs, one pair per batch, one
    single-threaded batch per core: the reranker's limit (its CPU default layout)."""

    rng = random.Random(seed)
    encoder = _cross_encoder(_rerank_config(), 1)
    encodings = encoder.tokenize_pairs([(rng.choice(list(queries)), rng.choice(list(passages))) for _ in range(pairs)])
    rate, cpu = measure_limit_cpu(encoder.infer, encodings, [1], workers)[1]
    return {"pairs_per_s": rate, "cpu_ms_per_pair": cpu, "pairs": len(encodings)}


def zipf_queries(queries: Sequence[str], n: int, s: float = 1.0, seed: int = 7) -> list[str]:
    """``n`` draws from ``queries`` where the k-th (in a shuffled order) has weight 1/k**s."""
    rng = random.Random(seed)
    order = list(queries)
    rng.shuffle(order)
    weights = [1.0 / (k ** s) for k in range(1, len(order) + 1)]
    return rng.choices(order, weights=weights, k=n)


def cache_lookups(expositions: Iterable[str]) -> dict[str, dict[str, float]]:
    """``{cache: {"hit": n, "miss": n}}`` summed over the services' /metrics texts."""
    return _cache_lookups(samples_of(text) for text in expositions)


def _cache_lookups(parsed: Iterable[list[Sample]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for samples in parsed:
        for cache in ("query_embedding", "rerank_score", "search_result"):
            for outcome in ("hit", "miss"):
                value = sample_sum(samples, "search_cache_lookups_total", {"cache": cache, "outcome": outcome})
                if value:
                    out.setdefault(cache, {"hit": 0.0, "miss": 0.0})[outcome] += value
    return out


def hit_rates(before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    rates = {}
    for cache, counts in after.items():
        hits = counts["hit"] - before.get(cache, {}).get("hit", 0.0)
        misses = counts["miss"] - before.get(cache, {}).get("miss", 0.0)
        if hits + misses:
            rates[cache] = hits / (hits + misses)
    return rates


# --------------------------------------------------------------------------- quality on SciFact test


def _test_queries(dataset: Path) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    qrels = load_qrels(dataset, "test")
    queries = load_queries(dataset)
    return {q: queries[q] for q in qrels if q in queries}, qrels


def service_ndcg(address: str, collection: str, dataset: Path, mode: int) -> float:
    """NDCG@10 of our Search, search only, in retrieval ``mode``, on the SciFact test queries."""


    queries, qrels = _test_queries(dataset)
    run: dict[str, dict[str, float]] = {}
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SearchServiceStub(channel)
        for qid, text in queries.items():
            request = pb.SearchRequest(collection=collection, query=text, top_k=10, mode=mode)
            request.rerank.enabled = False
            reply = stub.Search(request, timeout=60)
            run[qid] = {r.id: float(10 - i) for i, r in enumerate(reply.results)}
    return compute_metrics(run, qrels)["ndcg@10"]


# --------------------------------------------------------------------------- LanceDB in-process


def _doc_vectors(encoder, docs: Sequence[Mapping[str, Any]], cache_dir: Path | None) -> np.ndarray:
    path = cache_dir / "peer-doc-vectors.npy" if cache_dir is not None else None
    if path is not None and path.exists():
        vectors = np.load(path)
        if len(vectors) == len(docs):
            return vectors
    texts = [f"{d['title']}\n{d['text']}" if d["title"] else d["text"] for d in docs]
    start = time.perf_counter()
    vectors = encoder.embed_documents(texts).astype(np.float32)
    print(f"peer: embedded {len(texts)} documents in {time.perf_counter() - start:.0f} s (kept in {path})")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors


def lancedb_peer(docs: Sequence[Mapping[str, Any]], queries: Sequence[str], dataset: Path, cache_dir: Path | None,
                 threads: Sequence[int] = (1, 8), per_mode: int = 300) -> dict[str, Any] | None:
    """LanceDB in this process on the same vectors and query model: QPS and NDCG@10 per mode.

    None (with a message) when lancedb is not installed.
    """

    os.environ.setdefault("LANCE_LOG", "error")  # its deprecation warnings, one per query
    os.environ.setdefault("RUST_LOG", "error")
    try:
        import lancedb
        import pyarrow as pa
    except ImportError:
        print("peer skipped: lancedb is not installed (pip install -e '.[bench]')")
        return None

    conf = _retrieval_config()
    vectors = _doc_vectors(_bi_encoder(conf, 2), docs, cache_dir)
    encoder = _bi_encoder(conf, 1)  # queries: one single-threaded session, shared by the client threads
    with tempfile.TemporaryDirectory(prefix="bench-lancedb-") as tmp:
        db = lancedb.connect(tmp)
        dim = vectors.shape[1]
        table = db.create_table("docs", data=pa.table({
            "id": pa.array([d["id"] for d in docs]),
            "text": pa.array([f"{d['title']}\n{d['text']}" if d["title"] else d["text"] for d in docs]),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        }))
        table.create_fts_index("text", use_tantivy=False)

        def run(mode: str, text: str) -> list[str]:
            if mode == "fts":
                query = table.search(text, query_type="fts")
            else:
                vector = encoder.embed_queries([text])[0]
                query = table.search(vector) if mode == "dense" else table.search(query_type="hybrid").vector(vector).text(text)
            return [row["id"] for row in query.limit(10).select(["id"]).to_list()]

        out: dict[str, Any] = {"documents": len(docs)}
        test_queries, qrels = _test_queries(dataset)
        for mode in ("dense", "fts", "hybrid"):
            row: dict[str, Any] = {}
            sample = list(queries[:per_mode])
            for n in threads:
                latencies: list[float] = []

                def timed(text: str) -> None:
                    start = time.perf_counter()
                    run(mode, text)
                    latencies.append((time.perf_counter() - start) * 1000.0)

                run(mode, sample[0])  # warm
                start = time.perf_counter()
                with ThreadPoolExecutor(n) as pool:
                    list(pool.map(timed, sample))
                row[f"qps_{n}_threads"] = len(sample) / (time.perf_counter() - start)
                row[f"p50_ms_{n}_threads"] = float(np.percentile(latencies, 50))
            ranked = {qid: {doc: float(10 - i) for i, doc in enumerate(run(mode, text))} for qid, text in test_queries.items()}
            row["ndcg@10"] = compute_metrics(ranked, qrels)["ndcg@10"]
            out[mode] = row
            print(f"peer LanceDB {lancedb.__version__} {mode}: " + ", ".join(
                f"{n} thread{'s' if n > 1 else ''} {row[f'qps_{n}_threads']:.1f} QPS (p50 {row[f'p50_ms_{n}_threads']:.1f} ms)"
                for n in threads) + f", NDCG@10 {row['ndcg@10']:.4f}", flush=True)
        out["version"] = lancedb.__version__
    return out


# --------------------------------------------------------------------------- hooks of `bench e2e`


def step_queries(queries: Sequence[str], offset: int, n: int, zipf: float, seed: int) -> list[str]:
    """The queries of one load step: distinct (``zipf`` 0) or Zipf-distributed over ``queries``."""
    return zipf_queries(queries, n, zipf, seed + offset) if zipf > 0 else distinct_queries(queries, offset, n)


def _embed_batches(samples: list[Sample]) -> tuple[float, float]:
    """(texts embedded, batches run) so far, from the retrieval service's /metrics samples."""
    return (sample_sum(samples, "search_retrieval_embed_batch_texts_sum"),
            sample_sum(samples, "search_retrieval_embed_batch_texts_count"))


class StepCounters:
    """CPU seconds of every service (its own process_cpu_seconds_total), cache lookups and the
    query embedder's mean batch, around one step: each service's /metrics is read once when the
    step starts and once when it ends, so the step's CPU holds no other scrape of the bench's."""

    NAMES = ("gateway", "retrieval", "reranker")

    def __init__(self, procs) -> None:
        self.urls = {name: procs.metrics_url(name) for name in self.NAMES}

    def _scrape_all(self) -> dict[str, str]:
        return {name: _scrape(url) for name, url in self.urls.items()}

    def __enter__(self) -> StepCounters:
        self.before = self._scrape_all()
        return self

    def __exit__(self, *exc) -> None:
        return None

    def finish(self, served: int) -> dict[str, Any]:
        return step_figures(self.before, self._scrape_all(), served)


def step_figures(before: Mapping[str, str], after: Mapping[str, str], served: int) -> dict[str, Any]:
    """What one step cost, from each service's /metrics text at its start and end: CPU ms per
    query by service and by thread group, cache hit rates, the query embedder's mean batch."""
    served = max(served, 1)
    start = {name: samples_of(text) for name, text in before.items()}  # each text parsed once
    end = {name: samples_of(text) for name, text in after.items()}
    cpu, by_thread = {}, {}
    for name, samples in end.items():
        (process, threads), (process_before, threads_before) = _cpu(samples), _cpu(start[name])
        cpu[name] = (process - process_before) / served * 1000.0
        used = {g: (threads[g] - threads_before.get(g, 0.0)) / served * 1000.0 for g in threads}
        by_thread[name] = dict(sorted(((g, v) for g, v in used.items() if v > 0), key=lambda gv: -gv[1]))
    texts, batches = (a - b for a, b in zip(_embed_batches(end["retrieval"]), _embed_batches(start["retrieval"]),
                                             strict=True))
    return {"cpu_ms_per_query": cpu, "cpu_ms_per_query_by_thread": by_thread,
            "cache_hit_rates": hit_rates(_cache_lookups(start.values()), _cache_lookups(end.values())),
            "embed_batch_mean_texts": texts / batches if batches else 0.0}


def _cpu(samples: list[Sample]) -> tuple[float, dict[str, float]]:
    """One service's CPU seconds: the process's, and by thread group (search_thread_cpu_seconds_total;
    {} when not exported)."""
    return sample_sum(samples, "process_cpu_seconds_total"), _thread_cpu(samples)


def thread_cpu_from(exposition: str) -> dict[str, float]:
    """``search_thread_cpu_seconds_total`` by ``thread`` in a /metrics text."""
    return _thread_cpu(samples_of(exposition))


def _thread_cpu(samples: list[Sample]) -> dict[str, float]:
    return {s.labels["thread"]: s.value for s in samples if s.name == "search_thread_cpu_seconds_total"}


def describe_step(extra: Mapping[str, Any]) -> str:
    cpu = ", ".join(f"{n} {v:.2f}" for n, v in extra["cpu_ms_per_query"].items())
    rates = ", ".join(f"{c} {r:.0%}" for c, r in extra["cache_hit_rates"].items())
    threads = "; ".join(f"{n}: " + ", ".join(f"{g} {v:.2f}" for g, v in groups.items() if v >= 0.01)
                        for n, groups in extra.get("cpu_ms_per_query_by_thread", {}).items() if sum(groups.values()) >= 0.05)
    return (f"    CPU ms/query: {cpu}" + (f"; cache hit rates: {rates}" if rates else "")
            + f"; query embedding batches of {extra.get('embed_batch_mean_texts', 0.0):.2f} texts on average"
            + (f"\n    CPU ms/query by thread: {threads}" if threads else ""))
