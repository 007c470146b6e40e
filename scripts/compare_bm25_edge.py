#!/usr/bin/env python
"""BM25 in Qdrant Edge: the project's sparse vectors vs Edge's own BM25.

In-process, on Qdrant Edge (``qdrant_edge``) shards in a temporary directory, for SciFact
and Cranfield. Every method ranks the same index text (``title + "\\n" + text``, as
``services/common/validation.py::document_text``) and stores the service's payload layout:

* ``project_sparse``: ``services.retrieval.sparse.Bm25SparseEncoder`` (the shipped k1/b/avg
  from ``services/retrieval/config.py``) into a sparse vector with ``Modifier.Idf``,
  queried with ``Query.Nearest(encode_query(q))``: what the service does today.
* ``edge_text[<analyzer>] k=.. b=..``: a payload text index on ``bm25_text`` (the index
  text) created with ``TextIndexParams(scoring=True)``, queried with ``TextQuery`` and
  ``Bm25Params(k, b)`` (k and b are per query, so one shard per analyzer). Analyzers:
  ``default`` (word tokenizer, lowercase: what qdrant-client's local mode can score),
  ``english`` (+ Edge's English stop words and Snowball English stemmer),
  ``english_ours`` (+ our Snowball stop list as a custom set and tokens <= 40 chars).
* ``edge_bm25_embedder k=.. b=..``: Edge's ``Bm25`` embedder (``Bm25Config(language=
  "english")``, the same tokens/ids as the server's ``Qdrant/bm25`` inference) into an IDF
  sparse vector (k, b, avg_len are baked in at ingest, so one shard per setting).

Selection happens on SciFact **train** qrels only. Cranfield has only a test split: it is
reported for every method, never used to choose. ``--report-test`` adds SciFact test for the
chosen method only (labelled as such).

Per method: NDCG@10 / Recall@100 / MRR@10 (``services.cli.evaluate.compute_metrics``,
pytrec_eval), encode time (Python-side embedding of the corpus, 0 when the engine tokenizes),
store time (upsert of all points in batches of 256 incl. the text index, then ``optimize``),
and per-query latency p50/p95 (top 100 with payload, one query at a time, one search
thread): ``total`` includes query encoding, ``store`` is ``shard.query`` alone.

    python scripts/compare_bm25_edge.py [--report-test] [--threads 1]
        [--out scripts/compare_bm25_edge_results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "gen"))

import qdrant_edge as qe  # noqa: E402

from services.cli.beir import iter_corpus, load_qrels, load_queries  # noqa: E402
from services.common.validation import document_text  # noqa: E402
from services.cli.evaluate import compute_metrics, percentile  # noqa: E402
from services.retrieval.config import RetrievalConfig  # noqa: E402
from services.retrieval.sparse import ENGLISH_STOP_WORDS, MAX_TOKEN_LENGTH, Bm25SparseEncoder  # noqa: E402

DEPTH = 100
BATCH = 256
TEXT_FIELD = "bm25_text"
SPARSE = "sparse"
# k/b grid for the text index (per query, so it costs no rebuild): Edge's default (1.2, 0.75),
# ours (2.0, 0.75) and a small grid around them, chosen on SciFact train like our k1/b were.
TEXT_GRID = [(k, b) for k in (0.9, 1.2, 1.5, 2.0, 3.0) for b in (0.4, 0.75, 0.9)]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def index_text(doc: dict) -> str:
    """The text the retrieval service indexes (services/common/validation.py::document_text)."""
    return document_text(doc["title"], doc["text"])


# --------------------------------------------------------------------------- data


class Dataset:
    def __init__(self, name: str, path: Path, select_split: str | None) -> None:
        self.name = name
        self.docs = list(iter_corpus(path / "corpus.jsonl"))
        self.texts = [index_text(d) for d in self.docs]
        self.queries = load_queries(path)
        self.splits = {s: load_qrels(path, s) for s in ("train", "test") if (path / "qrels" / f"{s}.tsv").exists()}
        self.select_split = select_split

    def qids(self, split: str) -> list[str]:
        qrels = self.splits[split]
        return [q for q in self.queries if q in qrels]


# --------------------------------------------------------------------------- methods


def text_index_params(analyzer: str) -> qe.TextIndexParams:
    common = dict(tokenizer=qe.TokenizerType.Word, lowercase=True, scoring=True)
    if analyzer == "default":
        return qe.TextIndexParams(**common)
    if analyzer == "english":
        return qe.TextIndexParams(**common, stopwords=qe.Language.English,
                                  stemmer=qe.SnowballParams(qe.SnowballLanguage.English))
    if analyzer == "english_ours":
        return qe.TextIndexParams(**common, stopwords=qe.StopwordsSet(custom=set(ENGLISH_STOP_WORDS)),
                                  stemmer=qe.SnowballParams(qe.SnowballLanguage.English),
                                  max_token_len=MAX_TOKEN_LENGTH)
    raise ValueError(analyzer)


@dataclass
class Build:
    """One shard: how its points are made and how it is queried (per k/b variant)."""

    name: str
    kind: str  # project_sparse | edge_text | edge_bm25_embedder
    encode_doc: Callable[[str], object] | None = None  # text -> qe.SparseVector (None: engine tokenizes)
    text_index: qe.TextIndexParams | None = None
    # variant label -> query text -> (query encoding seconds, request)
    variants: dict[str, Callable[[str], tuple[float, qe.QueryRequest]]] = field(default_factory=dict)


def payload_of(doc: dict, with_text_field: bool) -> dict:
    payload = {"doc_id": doc["id"], "passage": 0, "title": doc["title"], "text": doc["text"], "payload": {}}
    if with_text_field:
        payload[TEXT_FIELD] = index_text(doc)
    return payload


def sparse_request(vector: qe.SparseVector) -> qe.QueryRequest:
    return qe.QueryRequest(limit=DEPTH, query=qe.Query.Nearest(vector, using=SPARSE), with_payload=True)


def builds(cfg: RetrievalConfig) -> list[Build]:
    out = []
    enc = Bm25SparseEncoder(k1=cfg.bm25_k1, b=cfg.bm25_b, avg_doc_length=cfg.bm25_avg_doc_length)

    def to_qe(e) -> qe.SparseVector:
        return qe.SparseVector(indices=list(e.indices), values=list(e.values))

    def timed_sparse(encode: Callable[[str], qe.SparseVector]):
        def build(q: str):
            t = time.perf_counter()
            v = encode(q)
            return time.perf_counter() - t, sparse_request(v)
        return build

    b = Build(f"project_sparse k1={cfg.bm25_k1:g} b={cfg.bm25_b:g} avg={cfg.bm25_avg_doc_length:g}", "project_sparse",
              encode_doc=lambda t: to_qe(enc.encode_document(t)))
    b.variants[b.name] = timed_sparse(lambda q: to_qe(enc.encode_query(q)))
    out.append(b)

    # Results hide the duplicated index text (PayloadSelector.Exclude); k/b are per query.
    for analyzer in ("default", "english", "english_ours"):
        b = Build(f"edge_text[{analyzer}]", "edge_text", text_index=text_index_params(analyzer))
        for k, bb in TEXT_GRID:
            def build(q: str, k=k, bb=bb):
                return 0.0, qe.QueryRequest(limit=DEPTH, query=qe.TextQuery(TEXT_FIELD, q, qe.Bm25Params(k=k, b=bb)),
                                            with_payload=qe.PayloadSelector.Exclude([TEXT_FIELD]))
            b.variants[f"edge_text[{analyzer}] k={k:g} b={bb:g}"] = build
        out.append(b)

    for k, bb in ((1.2, 0.75), (cfg.bm25_k1, cfg.bm25_b)):
        model = qe.Bm25(qe.Bm25Config(k=k, b=bb, avg_len=cfg.bm25_avg_doc_length, language="english"))
        name = f"edge_bm25_embedder k={k:g} b={bb:g} avg={cfg.bm25_avg_doc_length:g}"
        b = Build(name, "edge_bm25_embedder", encode_doc=model.embed_document)
        b.variants[name] = timed_sparse(model.embed_query)
        out.append(b)
    return out


# --------------------------------------------------------------------------- measuring


def build_shard(build: Build, data: Dataset, root: Path, threads: int) -> tuple[qe.EdgeShard, dict]:
    sparse = {SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)} if build.encode_doc else None
    # EdgeConfig needs some vector; a text-only shard gets a 1-d dense placeholder.
    vectors = None if sparse else {"placeholder": qe.EdgeVectorParams(size=1, distance=qe.Distance.Dot)}
    path = root / build.name.replace(" ", "_").replace("[", "_").replace("]", "_").replace("=", "")
    shard = qe.EdgeShard.create(str(path), qe.EdgeConfig(vectors=vectors, sparse_vectors=sparse, max_search_threads=threads))
    shard.update(qe.UpdateOperation.create_field_index("doc_id", qe.PayloadSchemaType.Keyword))
    if build.text_index is not None:
        shard.update(qe.UpdateOperation.create_field_index(TEXT_FIELD, build.text_index))

    t = time.perf_counter()
    vectors_per_doc = [build.encode_doc(x) for x in data.texts] if build.encode_doc else None
    encode_s = time.perf_counter() - t

    t = time.perf_counter()
    for start in range(0, len(data.docs), BATCH):
        points = []
        for i in range(start, min(start + BATCH, len(data.docs))):
            if vectors_per_doc is not None:
                v = vectors_per_doc[i]
                vec = {SPARSE: v} if v.indices else {}
            else:
                vec = {}
            points.append(qe.Point(i, vec, payload_of(data.docs[i], build.text_index is not None)))
        shard.update(qe.UpdateOperation.upsert_points(points))
    upsert_s = time.perf_counter() - t
    t = time.perf_counter()
    shard.optimize()
    optimize_s = time.perf_counter() - t
    shard.flush()
    # Allocated bytes: the WAL and mmap pages are preallocated sparse files (apparent size ~130 MB).
    disk = sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())
    info = shard.info()
    return shard, {"encode_s": round(encode_s, 3), "upsert_s": round(upsert_s, 3), "optimize_s": round(optimize_s, 3),
                   "ingest_total_s": round(encode_s + upsert_s + optimize_s, 3), "points": info.points_count,
                   "segments": info.segments_count, "disk_mb": round(disk / 2**20, 1)}


def run_queries(shard: qe.EdgeShard, data: Dataset, qids: list[str], make) -> tuple[dict, list[float], list[float]]:
    run, total, store = {}, [], []
    for q in qids:
        t0 = time.perf_counter()
        _, request = make(data.queries[q])
        t1 = time.perf_counter()
        points = shard.query(request)
        t2 = time.perf_counter()
        total.append(t2 - t0)
        store.append(t2 - t1)
        run[q] = {p.payload["doc_id"]: float(p.score) for p in points}
    return run, total, store


def concurrency_probe(shard: qe.EdgeShard, data: Dataset, qids: list[str], make, threads: int) -> dict:
    """Queries/s with ``threads`` Python threads sharing one shard, and whether results match."""
    from concurrent.futures import ThreadPoolExecutor

    requests = [make(data.queries[q])[1] for q in qids]
    reference = [[p.id for p in shard.query(r)] for r in requests]
    with ThreadPoolExecutor(threads) as pool:
        t = time.perf_counter()
        got = list(pool.map(lambda r: [p.id for p in shard.query(r)], requests))
        elapsed = time.perf_counter() - t
    return {"threads": threads, "qps": round(len(requests) / elapsed, 1), "same_results": got == reference}


def gil_probe(shard: qe.EdgeShard, data: Dataset, qids: list[str], make) -> dict:
    """How far a pure-Python thread gets while the main thread runs one query_batch.

    A binding that releases the GIL while searching lets the spinning thread run at its
    full rate on a second core; one that holds it leaves the spinner (almost) stopped.
    """
    import threading

    requests = [make(data.queries[q])[1] for q in qids]
    batch = qe.QueryBatchRequest(requests)
    stop, count = threading.Event(), [0]

    def spin() -> None:
        while not stop.is_set():
            count[0] += 1

    thread = threading.Thread(target=spin)
    thread.start()
    time.sleep(0.3)
    c0, t0 = count[0], time.perf_counter()
    time.sleep(0.3)
    alone_rate = (count[0] - c0) / (time.perf_counter() - t0)
    c0, t0 = count[0], time.perf_counter()
    shard.query_batch(batch)
    elapsed = time.perf_counter() - t0
    during_rate = (count[0] - c0) / elapsed
    stop.set()
    thread.join()
    return {"query_batch_ms": round(elapsed * 1000, 1), "queries": len(requests),
            "spinner_rate_during_query_vs_alone": round(during_rate / alone_rate, 3)}


def ms(values: list[float], pct: float) -> float:
    return round(percentile(sorted(values), pct) * 1000, 3)


def evaluate_dataset(data: Dataset, cfg: RetrievalConfig, threads: int, eval_split: str, extra_split: str | None = None):
    rows = []
    root = Path(tempfile.mkdtemp(prefix=f"bm25edge_{data.name}_"))
    try:
        qids = data.qids(eval_split)
        for build in builds(cfg):
            log(f"{data.name}: building {build.name}")
            shard, ingest = build_shard(build, data, root, threads)
            try:
                for label, make in build.variants.items():
                    run_queries(shard, data, qids[:50], make)  # warm-up
                    run, total, store = run_queries(shard, data, qids, make)
                    m = compute_metrics(run, data.splits[eval_split])
                    row = {"method": label, "kind": build.kind, "split": eval_split, **{k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()},
                           "latency_ms": {"total_p50": ms(total, 50), "total_p95": ms(total, 95),
                                          "store_p50": ms(store, 50), "store_p95": ms(store, 95)},
                           "ingest": ingest, "empty_results": sum(1 for q in qids if not run.get(q))}
                    if label == next(iter(build.variants)):  # one probe per shard (store only, no encoding)
                        row["store_qps"] = [concurrency_probe(shard, data, qids, make, n) for n in (1, 2)]
                        row["gil_probe"] = gil_probe(shard, data, qids, make)
                    rows.append(row)
                    log(f"  {label}: ndcg@10 {row['ndcg@10']:.4f} r@100 {row['recall@100']:.4f} "
                        f"p50 {row['latency_ms']['total_p50']} ms (store {row['latency_ms']['store_p50']})")
            finally:
                shard.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def evaluate_one(data: Dataset, cfg: RetrievalConfig, threads: int, split: str, label: str) -> dict:
    """Evaluate a single method (by label) on ``split``: no selection happens here."""
    root = Path(tempfile.mkdtemp(prefix=f"bm25edge_{data.name}_{split}_"))
    try:
        for build in builds(cfg):
            if label not in build.variants:
                continue
            shard, ingest = build_shard(build, data, root, threads)
            try:
                qids = data.qids(split)
                run, total, store = run_queries(shard, data, qids, build.variants[label])
                m = compute_metrics(run, data.splits[split])
                return {"method": label, "split": split, **{k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()},
                        "latency_ms": {"total_p50": ms(total, 50), "total_p95": ms(total, 95)}}
            finally:
                shard.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    raise KeyError(label)


def table(rows: list[dict]) -> str:
    head = "| method | NDCG@10 | Recall@100 | MRR@10 | encode s | store s (upsert+optimize) | p50 ms | p95 ms | store p50 ms |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        i, lat = r["ingest"], r["latency_ms"]
        lines.append(f"| {r['method']} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | {r['mrr@10']:.4f} | "
                     f"{i['encode_s']:.2f} | {i['upsert_s'] + i['optimize_s']:.2f} | {lat['total_p50']:.2f} | "
                     f"{lat['total_p95']:.2f} | {lat['store_p50']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scifact", type=Path, default=Path("/work/shared/datasets/scifact"))
    parser.add_argument("--cranfield", type=Path, default=Path("/work/shared/datasets/cranfield"))
    parser.add_argument("--threads", type=int, default=1, help="Edge search threads per shard (shared CPU: keep low)")
    parser.add_argument("--report-test", action="store_true", help="SciFact test for the train-chosen method only")
    parser.add_argument("--keep", default=None,
                        help="label of the method kept in docs/QUALITY.md (default: project_sparse at the shipped k1/b); "
                             "only it is evaluated on SciFact test with --report-test")
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "compare_bm25_edge_results.json")
    args = parser.parse_args(argv)
    cfg = RetrievalConfig()

    results: dict = {
        "notes": "Selection on SciFact train qrels only; Cranfield (test split only) is reported, never used to choose. "
                 "Latency: one query at a time, top 100 with payload, Edge max_search_threads="
                 f"{args.threads}; total = query encoding + shard.query, store = shard.query.",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "qdrant_edge": "0.9.0"},
        "defaults": {"k1": cfg.bm25_k1, "b": cfg.bm25_b, "avg_doc_length": cfg.bm25_avg_doc_length},
    }
    scifact = Dataset("scifact", args.scifact, "train")
    results["scifact_train"] = evaluate_dataset(scifact, cfg, args.threads, "train")
    chosen_per_kind = {}
    for r in results["scifact_train"]:
        best = chosen_per_kind.get(r["kind"])
        if best is None or (r["ndcg@10"], r["recall@100"]) > (best["ndcg@10"], best["recall@100"]):
            chosen_per_kind[r["kind"]] = r
    results["best_per_kind_on_scifact_train"] = {k: v["method"] for k, v in chosen_per_kind.items()}
    chosen = max(results["scifact_train"], key=lambda r: (r["ndcg@10"], r["recall@100"]))
    results["best_on_scifact_train"] = chosen["method"]

    cranfield = Dataset("cranfield", args.cranfield, None)
    results["cranfield_test"] = evaluate_dataset(cranfield, cfg, args.threads, "test")

    if args.report_test:
        # The method kept (see docs/QUALITY.md); nothing is selected on these numbers.
        kept = args.keep or results["scifact_train"][0]["method"]
        results["scifact_test_kept_method_only"] = evaluate_one(scifact, cfg, args.threads, "test", kept)

    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print("\nSciFact train (809 queries)\n" + table(results["scifact_train"]))
    print("\nCranfield test (225 queries; reported, not tuned on)\n" + table(results["cranfield_test"]))
    print("\nbest per kind on SciFact train:", json.dumps(results["best_per_kind_on_scifact_train"], indent=1))
    if "scifact_test_kept_method_only" in results:
        print("SciFact TEST, kept method only:", json.dumps(results["scifact_test_kept_method_only"]))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
