#!/usr/bin/env python
"""Late interaction (answerai-colbert-small-v1, 384-d token vectors) on top of hybrid retrieval:
what to build, measured in-process on SciFact **train** (choices) and Cranfield (reported).

Never tunes on a test split: SciFact choices use qrels/train.tsv; Cranfield has only a test
split and is only reported (never used to choose). ``--report-test`` evaluates the chosen
configuration once on SciFact test for comparison with published numbers.

Measured (NDCG@10 and Recall@100 with pytrec_eval):

1. First stage as the service runs it: dense (bge-small-en, exact cosine), sparse (the
   project's BM25 vectors, exact), hybrid (weighted z-score, dense weight 0.6, 100 per list).
2. ColBERT MaxSim alone over the whole corpus (a reference), and as a stage over the first
   stage's candidates: rescoring the fused top-K, rescoring the *union* of the dense and
   sparse top-K (what the engine does when a MaxSim query rescores unfused prefetches), and
   MaxSim as a third fused signal; candidate depth; dimensions kept (384 / 128); document
   token pruning (none / punctuation / stop words) and its bytes per document; int8 scalar
   quantisation of the document vectors (simulated as Qdrant does: per-collection quantile
   clipping to 256 levels).
3. Fusion robust to one weak input: per-query agreement weights vs fixed weights, on both
   collections and with a deliberately weakened BM25 list.
4. Whether the cross-encoder still adds anything after the chosen stage (sample of train
   queries).

Embeddings are cached under ``--cache`` (default /tmp/colbert_cache).

    python scripts/study_colbert.py [--colbert DIR] [--out scripts/study_colbert_results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "gen"))
sys.path.insert(0, str(ROOT / "scripts"))

import tune_scifact as tune  # noqa: E402
from services.cli.beir import iter_corpus, load_qrels, load_queries  # noqa: E402
from services.retrieval import fusion  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"
DEPTH = tune.DEPTH


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Dataset:
    """BEIR folder; ``qids`` are the queries choices are made on (train) or reported on."""

    def __init__(self, path: Path, split: str) -> None:
        self.name = path.name
        self.docs = list(iter_corpus(path / "corpus.jsonl"))
        self.doc_ids = [d["id"] for d in self.docs]
        self.texts = [tune.index_text(d) for d in self.docs]
        self.queries = load_queries(path)
        self.qrels = load_qrels(path, split)
        self.all_qids = [q for q in self.queries if q in self.qrels]
        self.split = split


# --------------------------------------------------------------------------- caches


def colbert_vectors(data: Dataset, cache: Path, model: Path, threads: int):
    """Per document: float16 token vectors (all tokens but padding) and their token ids; per query: vectors."""
    from services.retrieval.late_interaction import LateInteractionEncoder

    key = tune._key(str(model), len(data.texts), data.split, "v1")
    path = cache / f"colbert_{data.name}_{key}.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        offsets, vectors, token_ids = z["offsets"], z["vectors"], z["ids"]  # each read once: z[...] re-reads
        docs = [vectors[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
        ids = [token_ids[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
        qoff, qvectors = z["qoffsets"], z["qvectors"]
        queries = [qvectors[qoff[i]:qoff[i + 1]] for i in range(len(qoff) - 1)]
        return docs, ids, queries
    encoder = LateInteractionEncoder(model, prune="none", intra_op_threads=threads, provider="cpu")
    tokenizer = encoder._documents
    log(f"colbert: {len(data.all_qids)} queries, {len(data.texts)} documents of {data.name}")
    queries = encoder.embed_queries([data.queries[q] for q in data.all_qids])
    docs, ids = [], []
    start = time.perf_counter()
    for i in range(0, len(data.texts), 256):
        chunk = data.texts[i:i + 256]
        vectors = encoder.embed_documents(chunk)
        encodings = tokenizer.encode_batch(chunk)
        for v, e in zip(vectors, encodings):
            keep = [t for t in e.ids if t not in encoder._special] or [e.ids[0]]  # an empty text keeps [CLS]
            assert len(keep) == len(v), (len(keep), v.shape)
            docs.append(v.astype(np.float16))
            ids.append(np.array(keep, dtype=np.int32))
        log(f"  {len(docs)}/{len(data.texts)} documents, {time.perf_counter() - start:.0f} s "
            f"({len(docs) / (time.perf_counter() - start):.1f} docs/s)")
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    qoff = np.concatenate([[0], np.cumsum([len(q) for q in queries])])
    np.savez(path, vectors=np.concatenate(docs), ids=np.concatenate(ids), offsets=offsets,
             qvectors=np.concatenate(queries).astype(np.float16), qoffsets=qoff)
    return docs, ids, [q.astype(np.float16) for q in queries]


def first_stage(data: Dataset, cache: Path, threads: int):
    dense_docs, dense_queries = tune.dense_vectors(data, cache, "bge-small-en", threads, max_length=256)
    dense = tune.dense_runs(dense_docs, dense_queries, data, data.all_qids)
    sparse = tune.Bm25Index(data, "snowball", cache).runs(data.all_qids, 2.0, 0.75, 256.0)
    return dense, sparse


# --------------------------------------------------------------------------- MaxSim


class Corpus:
    """Token vectors of every document in one float32 matrix, with a mask per pruning rule."""

    def __init__(self, docs: list[np.ndarray], ids: list[np.ndarray], pruned: dict[str, frozenset[int]], dims: int,
                 quantize: str = "none") -> None:
        self.offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
        matrix = np.concatenate(docs).astype(np.float32)[:, :dims]
        matrix /= np.clip(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12, None)
        if quantize == "int8":  # Qdrant scalar quantisation: clip at the 0.99 quantile, 256 levels
            lo, hi = np.quantile(matrix, [0.005, 0.995])
            step = (hi - lo) / 255.0
            matrix = (np.round((np.clip(matrix, lo, hi) - lo) / step) * step + lo).astype(np.float32)
        elif quantize == "binary":  # one bit per dimension: the sign
            matrix = (np.sign(matrix) / math.sqrt(dims)).astype(np.float32)
        self.matrix = matrix
        self.token_ids = np.concatenate(ids)
        self.masks = {rule: ~np.isin(self.token_ids, np.fromiter(ids_, dtype=np.int64)) for rule, ids_ in pruned.items()}
        self.dims = dims

    def kept_tokens(self, rule: str) -> np.ndarray:
        mask = self.masks[rule]
        return np.add.reduceat(mask.astype(np.int64), self.offsets[:-1])

    def scores(self, query: np.ndarray, docs: np.ndarray, rule: str) -> np.ndarray:
        """MaxSim of ``query`` against documents ``docs`` (indices), tokens pruned by ``rule``."""
        q = query.astype(np.float32)[:, : self.dims]
        q /= np.clip(np.linalg.norm(q, axis=1, keepdims=True), 1e-12, None)
        if len(docs) == len(self.offsets) - 1 and np.array_equal(docs, np.arange(len(docs))):  # the whole corpus
            mask, sims = self.masks[rule], q @ self.matrix.T
            bounds = self.offsets[:-1]
        else:
            spans = [np.arange(self.offsets[d], self.offsets[d + 1]) for d in docs]
            rows = np.concatenate(spans)
            mask = self.masks[rule][rows]
            sims = q @ self.matrix[rows].T
            bounds = np.concatenate([[0], np.cumsum([len(s) for s in spans])[:-1]])
        sims[:, ~mask] = -np.inf
        best = np.maximum.reduceat(sims, bounds, axis=1)
        best[~np.isfinite(best)] = 0.0
        return best.sum(axis=0)


def rescored(lists, candidates, corpus: Corpus, queries, qrow, doc_index, rule: str):
    """Each query's candidates ranked by MaxSim alone: {qid: [(doc, maxsim)]}."""
    out = {}
    for q, cands in candidates.items():
        docs = np.array([doc_index[d] for d in cands])
        s = corpus.scores(queries[qrow[q]], docs, rule)
        order = np.argsort(-s, kind="stable")
        out[q] = [(cands[i], float(s[i])) for i in order]
    return out


def union(dense, sparse, q, k):
    seen = {}
    for d, _ in dense[q][:k] + sparse[q][:k]:
        seen.setdefault(d, None)
    return list(seen)


def fused(lists_by_signal: list[dict], weights, qids, method: str = "zscore", depth: int = DEPTH):
    out = {}
    for q in qids:
        rankings = [lst[q] for lst in lists_by_signal]
        if method == "zscore":
            out[q] = fusion.weighted_zscore(rankings, weights)[:depth]
        elif method == "agreement":
            out[q] = agreement_fusion(rankings, weights)[:depth]
        else:
            raise ValueError(method)
    return out


def agreement_fusion(rankings, weights, top: int = 10):
    """Weighted z-score fusion whose weights follow, per query, how much each list agrees with
    the others: a list's base weight is scaled by the overlap of its top ``top`` with the
    union of the other lists' top ``top`` (plus a floor), so a list that finds what no other
    signal finds (a weak retriever on this collection) counts less."""
    tops = [set(d for d, _ in r[:top]) for r in rankings]
    adjusted = []
    for i, w in enumerate(weights):
        others = set().union(*(tops[j] for j in range(len(rankings)) if j != i))
        overlap = len(tops[i] & others) / max(1, len(tops[i]))
        adjusted.append(w * (0.25 + overlap))
    return fusion.weighted_zscore(rankings, adjusted)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--colbert", type=Path, default=tune.MODELS_DIR / "answerai-colbert-small-v1")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/colbert_cache"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only-cache", action="store_true", help="build the embedding caches and stop")
    ap.add_argument("--out", type=Path, default=ROOT / "scripts" / "study_colbert_results.json")
    args = ap.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    sets = [Dataset(SHARED / "scifact", "train"), Dataset(SHARED / "cranfield", "test")]
    results: dict = {}
    for data in sets:
        dense, sparse = first_stage(data, args.cache, args.threads)
        docs, ids, queries = colbert_vectors(data, args.cache, args.colbert, args.threads)
        if args.only_cache:
            continue
        results[data.name] = study(data, dense, sparse, docs, ids, queries, args)
        args.out.write_text(json.dumps(results, indent=1))
    if not args.only_cache:
        print_tables(results)
    return 0


def study(data: Dataset, dense, sparse, docs, ids, queries, args) -> dict:
    from services.retrieval.late_interaction import LateInteractionEncoder

    qids, qrels = data.all_qids, data.qrels
    qrow = {q: i for i, q in enumerate(data.all_qids)}
    doc_index = {d: i for i, d in enumerate(data.doc_ids)}
    rules = {r: LateInteractionEncoder(args.colbert, prune=r, provider="cpu")._pruned_ids - {0}
             for r in ("none", "punctuation", "stopwords")}
    rows: list[dict] = []

    def record(name: str, lists, **extra) -> dict:
        row = {"config": name, **tune.metrics(lists, qrels, qids), **extra}
        rows.append(row)
        log(f"{data.name}: {name}: ndcg@10 {row['ndcg@10']} recall@100 {row['recall@100']} {extra or ''}")
        return row

    hybrid = {q: fusion.weighted_zscore([dense[q], sparse[q]], [0.6, 0.4])[:DEPTH] for q in qids}
    base = {"dense": record("dense", dense), "sparse": record("sparse", sparse), "hybrid": record("hybrid", hybrid)}

    corpus = Corpus(docs, ids, rules, dims=384)
    tokens = {r: float(corpus.kept_tokens(r).mean()) for r in rules}

    # Full-corpus MaxSim, the model alone (reference; a sample of queries on big corpora).
    sample = qids if len(data.doc_ids) < 3000 else qids[:300]
    alone = {}
    for q in sample:
        s = corpus.scores(queries[qrow[q]], np.arange(len(data.doc_ids)), "none")
        top = np.argsort(-s, kind="stable")[:DEPTH]
        alone[q] = [(data.doc_ids[i], float(s[i])) for i in top]
    row = {"config": "colbert alone (whole corpus)", **tune.metrics(alone, qrels, sample),
           "hybrid_same_queries": tune.metrics(hybrid, qrels, sample)["ndcg@10"]}
    rows.append(row)
    log(f"{data.name}: {row}")

    def stage(candidates_of, rule="none", corpus_=corpus):
        cands = {q: candidates_of(q) for q in qids}
        return rescored(None, cands, corpus_, queries, qrow, doc_index, rule)

    # Rescoring: the fused top-K, or the union of the unfused lists' top-K (the engine's way).
    for k in (20, 50, 100):
        ms = stage(lambda q, k=k: [d for d, _ in hybrid[q][:k]])
        record(f"rescore fused top {k} by MaxSim", {q: ms[q] + [x for x in hybrid[q][k:]] for q in qids})
    union_ms = {}
    for k in (20, 50, 100):
        union_ms[k] = stage(lambda q, k=k: union(dense, sparse, q, k))
        record(f"rescore union of dense+sparse top {k} by MaxSim", union_ms[k], candidates=k)
    # Third fused signal, and MaxSim fused with the hybrid score.
    for w in (0.3, 0.4, 0.5, 0.6, 0.7):
        lists = fused([dense, sparse, union_ms[100]], [0.6 * (1 - w), 0.4 * (1 - w), w], qids)
        record(f"z-score fusion dense/sparse/MaxSim(union 100), MaxSim weight {w}", lists, weight=w)
    for k in (50, 100):
        for w in (0.5, 0.7, 0.9):
            lists = {q: fusion.weighted_zscore([hybrid[q][:k], union_ms[k][q] if k in union_ms else []], [1 - w, w])
                     for q in qids}
            record(f"hybrid fused with MaxSim(union {k}), MaxSim weight {w}", lists, weight=w, candidates=k)

    # Variants of the representation on the union-100 rescoring.
    for rule in ("punctuation", "stopwords"):
        record(f"rescore union 100, document tokens pruned: {rule}", stage(lambda q: union(dense, sparse, q, 100), rule),
               tokens_per_doc=round(tokens[rule], 1))
    for dims, quant in ((128, "none"), (384, "int8"), (384, "binary"), (128, "int8")):
        c = Corpus(docs, ids, rules, dims=dims, quantize=quant)
        record(f"rescore union 100, {dims} dims, {quant}", stage(lambda q, c=c: union(dense, sparse, q, 100), "none", c))
        del c

    # Robust fusion: agreement weights, on the real lists and with a weakened BM25.
    weak = weak_sparse(data, args.cache)
    for name, sp in (("real BM25", sparse), ("weakened BM25", weak)):
        record(f"[{name}] sparse alone", sp)
        record(f"[{name}] hybrid fixed weights", fused([dense, sp], [0.6, 0.4], qids))
        record(f"[{name}] hybrid agreement weights", fused([dense, sp], [0.6, 0.4], qids, "agreement"))
        ms = stage(lambda q, sp=sp: union(dense, sp, q, 100))
        record(f"[{name}] MaxSim over union 100", ms)
        for w in (0.5, 0.6):
            record(f"[{name}] dense/sparse/MaxSim fixed, MaxSim weight {w}",
                   fused([dense, sp, ms], [0.6 * (1 - w), 0.4 * (1 - w), w], qids), weight=w)
            record(f"[{name}] dense/sparse/MaxSim agreement, MaxSim weight {w}",
                   fused([dense, sp, ms], [0.6 * (1 - w), 0.4 * (1 - w), w], qids, "agreement"), weight=w)
    return {"queries": len(qids), "split": data.split, "tokens_per_doc": tokens,
            "bytes_per_doc": bytes_per_doc(tokens), "rows": rows, "baselines": base}


def bytes_per_doc(tokens: dict[str, float]) -> dict:
    out = {}
    for rule, n in tokens.items():
        for dims in (384, 128):
            out[f"{rule}/{dims}d"] = {"float32": round(n * dims * 4), "int8": round(n * dims), "binary": round(n * dims / 8)}
    return out


def weak_sparse(data: Dataset, cache: Path):
    """BM25 over the first 12 words of each document only: a lexical signal much weaker than
    dense retrieval (as BM25 is on a collection whose queries and documents share few words)."""
    class Truncated:
        pass

    weak = Truncated()
    weak.__dict__.update(data.__dict__)
    weak.texts = [" ".join(t.split()[:12]) for t in data.texts]
    folder = cache / f"weak_{data.name}"
    folder.mkdir(exist_ok=True)
    return tune.Bm25Index(weak, "snowball", folder).runs(data.all_qids, 2.0, 0.75, 256.0)


def print_tables(results: dict) -> None:
    for name, res in results.items():
        print(f"\n## {name} ({res['split']}, {res['queries']} queries)")
        print("| configuration | NDCG@10 | Recall@100 |")
        print("|---|---|---|")
        for row in res["rows"]:
            print(f"| {row['config']} | {row['ndcg@10']:.4f} | {row['recall@100']:.4f} |")
        print(f"tokens per document: {res['tokens_per_doc']}")

if __name__ == "__main__":
    sys.exit(main())
