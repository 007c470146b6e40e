#!/usr/bin/env python
"""Offline, in-process measurement of the search-quality defaults on SciFact *train*.

Never tunes on test: every choice is made on ``qrels/train.tsv``. ``--report-test``
afterwards evaluates only the chosen configuration on ``qrels/test.tsv`` (no selection),
for comparison with published numbers.

What it measures (NDCG@10 unless stated; Recall@100 alongside):

1. BM25 (this repo's analyzer + Qdrant's IDF formula, scored exactly in numpy):
   k1, b, avg_doc_length, stop list.
2. Dense (bge-small-en, 256 tokens, exact cosine like Qdrant's local mode).
3. Hybrid fusion of the two top-``prefetch`` lists (as the retrieval service does):
   RRF k, weighted RRF weights, weighted z-score weights and the missing-score rule.
4. Cross-encoder reranking (ms-marco-MiniLM-L-12-v2, 256 tokens) of the chosen hybrid's
   top candidates on a fixed sample of train queries: rerank_only vs weighted_zscore vs
   weighted_rrf, rerank weight, and depth (10/20/30).
5. Optionally (``--e5``) a second dense model (e5-small-v2 int8) as a third ranking.

Embeddings, cross-encoder scores and analyzed tokens are cached under ``--cache``
(default /tmp/tune_cache), so reruns are cheap.

    python scripts/tune_scifact.py [--dataset /work/shared/datasets/scifact]
        [--out scripts/tune_results_scifact_train.json] [--rerank-queries 200]
        [--threads 1] [--report-test] [--e5 DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "gen"))

from services.cli.beir import iter_corpus, load_qrels, load_queries  # noqa: E402
from services.common.validation import document_text  # noqa: E402
from services.cli.evaluate import compute_metrics  # noqa: E402
from services.gateway.score_combination import combine_scores  # noqa: E402
from services.retrieval import sparse as sparse_mod  # noqa: E402
from services.retrieval.fusion import weighted_rrf, weighted_zscore  # noqa: E402
from services.retrieval.sparse import Bm25SparseEncoder, term_id  # noqa: E402

MODELS_DIR = Path(os.environ.get("SEARCH_MODELS_DIR", "~/.cache/search-platform/models")).expanduser()
DEPTH = 100  # every first-stage run is cut to 100, like SearchRequest.top_k's maximum


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def index_text(doc: dict) -> str:
    """The text the retrieval service indexes (services/common/validation.py::document_text)."""
    return document_text(doc["title"], doc["text"])


def _key(*parts: object) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- data


class Data:
    def __init__(self, dataset: Path) -> None:
        self.docs = list(iter_corpus(dataset / "corpus.jsonl"))
        self.doc_ids = [d["id"] for d in self.docs]
        self.texts = [index_text(d) for d in self.docs]
        self.queries = load_queries(dataset)
        self.train = load_qrels(dataset, "train")
        self.test = load_qrels(dataset, "test")
        self.train_qids = [q for q in self.queries if q in self.train]
        self.test_qids = [q for q in self.queries if q in self.test]
        self.all_qids = self.train_qids + self.test_qids


# --------------------------------------------------------------------------- dense


def dense_vectors(data: Data, cache: Path, model: str, threads: int, **encoder_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """(doc matrix, query matrix for data.all_qids), cached as .npy."""
    from services.retrieval.embedder import BiEncoder

    key = _key(model, encoder_kwargs, len(data.texts))
    name = Path(model).name
    docs_path, queries_path = cache / f"dense_{name}_{key}_docs.npy", cache / f"dense_{name}_{key}_queries.npy"
    if docs_path.exists() and queries_path.exists():
        return np.load(docs_path), np.load(queries_path)
    encoder = BiEncoder(MODELS_DIR / model if not Path(model).is_absolute() else model,
                        intra_op_threads=threads, provider="cpu", **encoder_kwargs)
    log(f"embedding {len(data.all_qids)} queries with {encoder!r}")
    queries = encoder.embed_queries([data.queries[q] for q in data.all_qids])
    np.save(queries_path, queries)
    log(f"embedding {len(data.texts)} documents (minutes on a shared CPU)")
    start = time.perf_counter()
    chunks = []
    step = 512
    for i in range(0, len(data.texts), step):
        chunks.append(encoder.embed_documents(data.texts[i : i + step]))
        log(f"  {i + len(chunks[-1])}/{len(data.texts)} documents, {time.perf_counter() - start:.0f}s")
    docs = np.concatenate(chunks)
    np.save(docs_path, docs)
    return docs, queries


def dense_runs(doc_matrix: np.ndarray, query_matrix: np.ndarray, data: Data, qids: Sequence[str], depth: int = DEPTH):
    """Exact cosine top-``depth`` per query (vectors are L2-normalised): {qid: [(doc, score)]}."""
    row = {q: i for i, q in enumerate(data.all_qids)}
    out = {}
    for start in range(0, len(qids), 256):
        chunk = qids[start : start + 256]
        scores = query_matrix[[row[q] for q in chunk]] @ doc_matrix.T
        for q, s in zip(chunk, scores):
            top = np.argpartition(-s, depth)[:depth]
            top = top[np.argsort(-s[top], kind="stable")]
            out[q] = [(data.doc_ids[j], float(s[j])) for j in top]
    return out


# --------------------------------------------------------------------------- sparse

LUCENE_STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with".split()
)
STOP_LISTS = {"snowball": sparse_mod.ENGLISH_STOP_WORDS, "lucene": LUCENE_STOP_WORDS, "none": frozenset()}


class Bm25Index:
    """Exact BM25 as Qdrant computes it for Modifier.IDF vectors from Bm25SparseEncoder.

    Terms are the encoder's 31-bit term ids (so hash collisions behave as in production);
    IDF is Qdrant's ``ln(1 + (N - df + 0.5) / (df + 0.5))``; document values are the
    encoder's ``term_weights`` formula, recomputed vectorised per (k1, b, avgdl).
    """

    def __init__(self, data: Data, stop: str, cache: Path) -> None:
        self.data = data
        self.encoder = Bm25SparseEncoder()
        self.encoder.stop_words = STOP_LISTS[stop]
        path = cache / f"tokens_{stop}_{_key(len(data.texts), sorted(STOP_LISTS[stop]))}.json"
        if path.exists():
            tokens = json.loads(path.read_text())
        else:
            tokens = [self.encoder.analyze(t) for t in data.texts]
            path.write_text(json.dumps(tokens))
        self.doc_len = np.array([len(t) for t in tokens], dtype=np.float64)
        vocab: dict[int, int] = {}
        post_doc, post_term, post_tf = [], [], []
        for d, toks in enumerate(tokens):
            counts: dict[int, int] = {}
            for t in toks:
                tid = term_id(t)
                counts[tid] = counts.get(tid, 0) + 1
            for tid, tf in counts.items():
                post_doc.append(d)
                post_term.append(vocab.setdefault(tid, len(vocab)))
                post_tf.append(tf)
        order = np.lexsort((np.array(post_doc), np.array(post_term)))
        self.p_doc = np.array(post_doc, dtype=np.int64)[order]
        self.p_term = np.array(post_term, dtype=np.int64)[order]
        self.p_tf = np.array(post_tf, dtype=np.float64)[order]
        self.vocab = vocab
        df = np.bincount(self.p_term, minlength=len(vocab)).astype(np.float64)
        n = len(tokens)
        self.idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        self.start = np.concatenate([[0], np.cumsum(df).astype(np.int64)])
        self.avg_len = float(self.doc_len.mean())

    def runs(self, qids: Sequence[str], k1: float, b: float, avgdl: float, depth: int = DEPTH):
        norm = k1 * (1.0 - b + b * self.doc_len[self.p_doc] / avgdl)
        values = self.p_tf * (k1 + 1.0) / (self.p_tf + norm)
        n = len(self.doc_len)
        out = {}
        for q in qids:
            scores = np.zeros(n)
            seen = set()
            for t in self.encoder.analyze(self.data.queries[q]):
                tid = term_id(t)
                if tid in seen or tid not in self.vocab:
                    continue
                seen.add(tid)
                v = self.vocab[tid]
                lo, hi = self.start[v], self.start[v + 1]
                scores[self.p_doc[lo:hi]] += self.idf[v] * values[lo:hi]
            hits = np.flatnonzero(scores > 0)
            if len(hits) > depth:
                hits = hits[np.argpartition(-scores[hits], depth)[:depth]]
            hits = hits[np.argsort(-scores[hits], kind="stable")]
            out[q] = [(self.data.doc_ids[j], float(scores[j])) for j in hits]
        return out


# --------------------------------------------------------------------------- evaluation helpers


def as_run(lists: dict[str, list[tuple[str, float]]], depth: int = DEPTH) -> dict[str, dict[str, float]]:
    """Ranked lists -> pytrec run with rank-derived scores (keeps the list order exactly)."""
    return {q: {d: float(depth - i) for i, (d, _) in enumerate(lst[:depth])} for q, lst in lists.items()}


def metrics(lists, qrels, qids) -> dict[str, float]:
    m = compute_metrics(as_run({q: lists[q] for q in qids}), {q: qrels[q] for q in qids})
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}


def per_query_ndcg(lists, qrels, qids) -> np.ndarray:
    import pytrec_eval

    judged = {q: qrels[q] for q in qids}
    res = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10"}).evaluate(as_run({q: lists[q] for q in qids}))
    return np.array([res[q]["ndcg_cut_10"] if q in res else 0.0 for q in qids])


def paired(lists_a, lists_b, qrels, qids) -> dict[str, float]:
    """NDCG@10 of a minus b: mean over queries and its standard error (paired)."""
    d = per_query_ndcg(lists_a, qrels, qids) - per_query_ndcg(lists_b, qrels, qids)
    return {"delta": round(float(d.mean()), 4), "se": round(float(d.std(ddof=1) / math.sqrt(len(d))), 4), "queries": len(d)}


def dbsf(rankings, weights=None):
    """Qdrant's distribution-based score fusion: each list scaled by mean +- 3 std to [0, 1], summed."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        if not ranking:
            continue
        s = np.array([x for _, x in ranking])
        mean, std = s.mean(), s.std()
        lo, hi = mean - 3 * std, mean + 3 * std
        for d, x in ranking:
            fused[d] = fused.get(d, 0.0) + (0.5 if hi == lo else (x - lo) / (hi - lo))
    return sorted(fused.items(), key=lambda kv: -kv[1])


def fuse_all(method: Callable, dense, sparse, qids, prefetch: int = 100, **kwargs):
    return {q: method([dense[q][:prefetch], sparse[q][:prefetch]], **kwargs)[:DEPTH] for q in qids}


def best_of(rows: list[dict], metric: str = "ndcg@10") -> dict:
    return max(rows, key=lambda r: (r[metric], r.get("recall@100", 0.0)))


# --------------------------------------------------------------------------- cross-encoder


class CeCache:
    def __init__(self, cache: Path, model: str, max_length: int, threads: int) -> None:
        self.path = cache / f"ce_{model}_{max_length}.json"
        self.scores: dict[str, float] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.model, self.max_length, self.threads = model, max_length, threads
        self._encoder = None

    def ensure(self, pairs: list[tuple[str, str]], data: Data, docs_by_id: dict[str, dict]) -> None:
        missing = sorted({p for p in pairs if f"{p[0]}\t{p[1]}" not in self.scores})
        if not missing:
            return
        if self._encoder is None:
            from services.reranker.cross_encoder import CrossEncoder

            self._encoder = CrossEncoder(MODELS_DIR / self.model, max_length=self.max_length,
                                         intra_op_threads=self.threads, provider="cpu")
        log(f"cross-encoder: scoring {len(missing)} pairs with {self._encoder!r}")
        start = time.perf_counter()
        step = 640
        for i in range(0, len(missing), step):
            chunk = missing[i : i + step]
            texts = [(data.queries[q], index_text(docs_by_id[d])) for q, d in chunk]
            scores = self._encoder.score_encodings(self._encoder.tokenize_pairs(texts))
            self.scores.update({f"{q}\t{d}": float(s) for (q, d), s in zip(chunk, scores)})
            self.path.write_text(json.dumps(self.scores))
            done = i + len(chunk)
            log(f"  {done}/{len(missing)} pairs, {done / (time.perf_counter() - start):.1f} pairs/s")

    def get(self, q: str, d: str) -> float:
        return self.scores[f"{q}\t{d}"]


def rerank_lists(first, ce: CeCache, qids, depth: int, method: str, weight: float, rrf_k: int = 60):
    """Combined top-``depth`` followed by the first-stage tail (as a full ranking)."""
    out = {}
    for q in qids:
        head, tail = first[q][:depth], first[q][depth:]
        final = combine_scores([s for _, s in head], [ce.get(q, d) for d, _ in head], method, weight, rrf_k)
        order = sorted(range(len(head)), key=lambda i: (-final[i], i))
        out[q] = [(head[i][0], final[i]) for i in order] + tail
    return out


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("/work/shared/datasets/scifact"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/tune_cache"))
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "tune_results_scifact_train.json")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (shared CPU: keep low)")
    parser.add_argument("--rerank-queries", type=int, default=200, help="train queries sampled for cross-encoder runs")
    parser.add_argument("--max-depth", type=int, default=30, help="deepest rerank depth measured")
    parser.add_argument("--report-test", action="store_true", help="evaluate the chosen configuration on test")
    parser.add_argument("--test-rerank", action="store_true", help="with --report-test: also rerank test queries")
    parser.add_argument("--e5", type=Path, help="directory of e5-small-v2 (model.onnx, tokenizer.json): measure a 2nd dense model")
    parser.add_argument("--skip-rerank", action="store_true")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)

    data = Data(args.dataset)
    train = data.train_qids
    results: dict = {
        "dataset": str(args.dataset),
        "split": "train",
        "train_queries": len(train),
        "notes": "All selection on SciFact train qrels; NDCG@10 / Recall@100 / MRR@10 via pytrec_eval "
        "(services/cli/evaluate.py::compute_metrics). First-stage lists are cut to 100.",
    }

    # 1. BM25 ---------------------------------------------------------------------------
    log("BM25 grid")
    bm25_rows = []
    indexes = {stop: Bm25Index(data, stop, args.cache) for stop in STOP_LISTS}
    true_avg = indexes["snowball"].avg_len
    results["analyzed_avg_doc_length"] = round(true_avg, 1)
    for stop, index in indexes.items():
        grid = itertools.product([0.6, 0.9, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0], [0.3, 0.5, 0.6, 0.75, 0.9, 1.0], [128.0, 256.0, round(index.avg_len, 1)])
        if stop != "snowball":  # other stop lists: only around the usual defaults
            grid = itertools.product([1.2, 2.0, 3.0], [0.6, 0.75, 0.9], [round(index.avg_len, 1), 256.0])
        for k1, b, avgdl in grid:
            m = metrics(index.runs(train, k1, b, avgdl), data.train, train)
            bm25_rows.append({"stop": stop, "k1": k1, "b": b, "avg_doc_length": avgdl, **m})
    best_bm25 = best_of([r for r in bm25_rows if r["stop"] == "snowball"])
    fastembed_default = next(r for r in bm25_rows if r["stop"] == "snowball" and (r["k1"], r["b"], r["avg_doc_length"]) == (1.2, 0.75, 256.0))
    results["bm25"] = {
        "grid": bm25_rows,
        "best_overall": best_of(bm25_rows),
        "best_snowball": best_bm25,
        "fastembed_default_1.2_0.75_256": fastembed_default,
    }
    log(f"BM25 best {best_bm25}; fastembed defaults {fastembed_default}")
    bm25 = indexes["snowball"]
    k1, b, avgdl = best_bm25["k1"], best_bm25["b"], best_bm25["avg_doc_length"]
    sparse_lists = bm25.runs(data.all_qids, k1, b, avgdl)

    # 2. Dense --------------------------------------------------------------------------
    docs_m, queries_m = dense_vectors(data, args.cache, "bge-small-en", args.threads, max_length=256)
    dense_lists = dense_runs(docs_m, queries_m, data, data.all_qids)
    results["dense"] = {"model": "bge-small-en", "max_length": 256, **metrics(dense_lists, data.train, train)}
    log(f"dense {results['dense']}")

    # 3. Fusion -------------------------------------------------------------------------
    log("fusion grid")
    fusion_rows = []
    for k in [1, 2, 5, 10, 20, 40, 60, 100]:
        fused = fuse_all(weighted_rrf, dense_lists, sparse_lists, train, k=k)
        fusion_rows.append({"method": "rrf", "rrf_k": k, "dense_weight": 0.5, **metrics(fused, data.train, train)})
    for k in [10, 60]:
        for w in [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]:
            fused = fuse_all(weighted_rrf, dense_lists, sparse_lists, train, weights=[w, 1 - w], k=k)
            fusion_rows.append({"method": "weighted_rrf", "rrf_k": k, "dense_weight": w, **metrics(fused, data.train, train)})
    for missing in ["min", "zero"]:
        for w in [0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8]:
            fused = fuse_all(weighted_zscore, dense_lists, sparse_lists, train, weights=[w, 1 - w], missing=missing)
            fusion_rows.append({"method": "weighted_zscore", "missing": missing, "dense_weight": w, **metrics(fused, data.train, train)})
    fusion_rows.append({"method": "dbsf", **metrics(fuse_all(dbsf, dense_lists, sparse_lists, train), data.train, train)})
    best_fusion = best_of(fusion_rows)
    prefetch_rows = []
    for prefetch in [20, 50, 100]:
        if best_fusion["method"] == "weighted_zscore":
            fused = fuse_all(weighted_zscore, dense_lists, sparse_lists, train, prefetch=prefetch,
                             weights=[best_fusion["dense_weight"], 1 - best_fusion["dense_weight"]], missing=best_fusion["missing"])
        else:
            fused = fuse_all(weighted_rrf, dense_lists, sparse_lists, train, prefetch=prefetch,
                             weights=[best_fusion["dense_weight"], 1 - best_fusion["dense_weight"]], k=best_fusion["rrf_k"])
        prefetch_rows.append({"prefetch_limit": prefetch, **metrics(fused, data.train, train)})
    results["fusion"] = {"grid": fusion_rows, "best": best_fusion, "prefetch_limit": prefetch_rows,
                         "best_rrf": best_of([r for r in fusion_rows if r["method"] == "rrf"]),
                         "best_weighted_rrf": best_of([r for r in fusion_rows if r["method"] == "weighted_rrf"]),
                         "best_weighted_zscore": best_of([r for r in fusion_rows if r["method"] == "weighted_zscore"])}
    log(f"fusion best {best_fusion}")

    def hybrid(qids, sparse_lists=sparse_lists):
        if best_fusion["method"] == "weighted_zscore":
            return fuse_all(weighted_zscore, dense_lists, sparse_lists, qids,
                            weights=[best_fusion["dense_weight"], 1 - best_fusion["dense_weight"]], missing=best_fusion["missing"])
        if best_fusion["method"] == "dbsf":
            return fuse_all(dbsf, dense_lists, sparse_lists, qids)
        return fuse_all(weighted_rrf, dense_lists, sparse_lists, qids,
                        weights=[best_fusion["dense_weight"], 1 - best_fusion["dense_weight"]], k=best_fusion["rrf_k"])

    hybrid_lists = hybrid(data.all_qids)
    default_sparse = bm25.runs(train, 1.2, 0.75, 256.0)
    results["bm25"]["paired_ndcg@10_chosen_minus_fastembed_default"] = paired(sparse_lists, default_sparse, data.train, train)
    results["fusion"]["paired_ndcg@10"] = {
        "chosen_hybrid_minus_same_fusion_over_default_bm25": paired(
            hybrid_lists, hybrid(train, default_sparse), data.train, train),
        "chosen_hybrid_minus_zscore_0.5": paired(
            hybrid_lists, fuse_all(weighted_zscore, dense_lists, sparse_lists, train, weights=[0.5, 0.5]), data.train, train),
        "chosen_hybrid_minus_dense": paired(hybrid_lists, dense_lists, data.train, train),
        "chosen_hybrid_minus_bm25": paired(hybrid_lists, sparse_lists, data.train, train),
        "chosen_hybrid_minus_rrf_k60": paired(hybrid_lists, fuse_all(weighted_rrf, dense_lists, sparse_lists, train, k=60), data.train, train),
    }

    # 4. Reranking ----------------------------------------------------------------------
    ce = CeCache(args.cache, "ms-marco-MiniLM-L-12-v2", 256, args.threads)
    docs_by_id = {d["id"]: d for d in data.docs}
    rerank_grid = [("rerank_only", 1.0, 60)]
    rerank_grid += [("weighted_zscore", w, 60) for w in [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]]
    rerank_grid += [("weighted_rrf", w, k) for k in [10, 60] for w in [0.5, 0.6, 0.7, 0.8, 0.9]]
    depths = [d for d in (10, 20, 30, 50) if d <= args.max_depth]
    sample: list[str] = []
    if not args.skip_rerank:
        sample = sorted(random.Random(13).sample(train, min(args.rerank_queries, len(train))), key=train.index)
        results["rerank"] = {"queries": len(sample), "model": "ms-marco-MiniLM-L-12-v2", "max_length": 256, "by_first_stage": {}}
        for name, first in (("hybrid", hybrid_lists), ("dense", dense_lists)):
            ce.ensure([(q, d) for q in sample for d, _ in first[q][: max(depths)]], data, docs_by_id)
            rows = []
            for depth in depths:
                for method, w, k in rerank_grid:
                    m = metrics(rerank_lists(first, ce, sample, depth, method, w, k), data.train, sample)
                    rows.append({"depth": depth, "method": method, "rerank_weight": w, "rrf_k": k, **m})
            best_row = best_of(rows)
            best_lists = rerank_lists(first, ce, sample, best_row["depth"], best_row["method"], best_row["rerank_weight"], best_row["rrf_k"])
            results["rerank"]["by_first_stage"][name] = {
                "first_stage_on_sample": metrics(first, data.train, sample),
                "paired_ndcg@10": {
                    "best_minus_first_stage": paired(best_lists, first, data.train, sample),
                    "rerank_only_depth30_minus_first_stage": paired(
                        rerank_lists(first, ce, sample, max(depths), "rerank_only", 1.0), first, data.train, sample),
                    "zscore_0.5_depth30_minus_first_stage": paired(
                        rerank_lists(first, ce, sample, max(depths), "weighted_zscore", 0.5), first, data.train, sample),
                },
                "grid": rows,
                "best": best_of(rows),
                "best_per_method": {m: best_of([r for r in rows if r["method"] == m]) for m in ("rerank_only", "weighted_zscore", "weighted_rrf")},
            }
            log(f"rerank over {name}: first stage {results['rerank']['by_first_stage'][name]['first_stage_on_sample']}, "
                f"best {results['rerank']['by_first_stage'][name]['best']}")

    # 5. Second dense model -------------------------------------------------------------
    if args.e5:
        e5_docs, e5_queries = dense_vectors(data, args.cache, str(args.e5), args.threads, max_length=256, pooling="mean",
                                            query_prefix="query: ", document_prefix="passage: ")
        e5_lists = dense_runs(e5_docs, e5_queries, data, data.all_qids)
        rows = [{"run": "e5 alone", **metrics(e5_lists, data.train, train)}]
        for dense_total in [0.4, 0.5, 0.6]:
            for e5_share in [0.0, 0.25, 0.5, 0.75, 1.0]:
                ws = [dense_total * (1 - e5_share), dense_total * e5_share, 1 - dense_total]
                fused = {q: weighted_zscore([dense_lists[q], e5_lists[q], sparse_lists[q]], ws)[:DEPTH] for q in train}
                rows.append({"run": "zscore(bge, e5, bm25)", "weights": [round(x, 3) for x in ws], **metrics(fused, data.train, train)})
        results["second_dense_model"] = {"model": str(args.e5), "grid": rows, "best": best_of(rows),
                                         "best_e5_plus_bm25_only": best_of([r for r in rows if r.get("weights", [1])[0] == 0])}
        e5_best = best_of(rows)

        def e5_hybrid(qids, ws):
            return {q: weighted_zscore([dense_lists[q], e5_lists[q], sparse_lists[q]], ws)[:DEPTH] for q in qids}

        results["second_dense_model"]["paired_ndcg@10_best_minus_chosen_hybrid"] = paired(
            e5_hybrid(train, e5_best["weights"]), hybrid_lists, data.train, train)
        log(f"e5 best {best_of(rows)}")

    # Chosen defaults -------------------------------------------------------------------
    chosen = {
        "bm25": {"k1": k1, "b": b, "avg_doc_length": avgdl, "stop_words": "snowball"},
        "fusion": {k: best_fusion[k] for k in ("method", "dense_weight", "rrf_k", "missing") if k in best_fusion},
    }
    if "rerank" in results:
        best_rr = results["rerank"]["by_first_stage"]["hybrid"]["best"]
        chosen["rerank"] = {k: best_rr[k] for k in ("method", "rerank_weight", "depth", "rrf_k")}
    results["chosen"] = chosen

    # Test check (no selection happens here) --------------------------------------------
    if args.report_test:
        test = data.test_qids
        check = {
            "note": "Evaluation of the train-chosen configuration on test; nothing was selected on these numbers.",
            "queries": len(test),
            "bm25_chosen": metrics(sparse_lists, data.test, test),
            "bm25_fastembed_default": metrics(bm25.runs(test, 1.2, 0.75, 256.0), data.test, test),
            "dense": metrics(dense_lists, data.test, test),
            "hybrid_chosen": metrics(hybrid_lists, data.test, test),
            "rrf_k60": metrics(fuse_all(weighted_rrf, dense_lists, sparse_lists, test, k=60), data.test, test),
        }
        if args.e5:
            check["e5_alone"] = metrics(e5_lists, data.test, test)
            for label, row in (("best_bge_e5_bm25", e5_best), ("best_e5_bm25", results["second_dense_model"]["best_e5_plus_bm25_only"])):
                check[label] = {"weights": row["weights"], **metrics(e5_hybrid(test, row["weights"]), data.test, test)}
        if args.test_rerank and "rerank" in chosen:
            rr = chosen["rerank"]
            ce.ensure([(q, d) for q in test for d, _ in hybrid_lists[q][: rr["depth"]]], data, docs_by_id)
            check["hybrid_rerank_chosen"] = metrics(
                rerank_lists(hybrid_lists, ce, test, rr["depth"], rr["method"], rr["rerank_weight"], rr["rrf_k"]), data.test, test)
            check["hybrid_rerank_only"] = metrics(
                rerank_lists(hybrid_lists, ce, test, rr["depth"], "rerank_only", 1.0), data.test, test)
        results["test_check"] = check
        log(f"test check {check}")

    args.out.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.out}")
    print(json.dumps({"chosen": chosen, "bm25": best_bm25, "dense": results["dense"], "fusion": best_fusion,
                      "rerank": results.get("rerank", {}).get("by_first_stage", {}).get("hybrid", {}).get("best_per_method")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
