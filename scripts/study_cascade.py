#!/usr/bin/env python
"""Per-query study of the cross-encoder's value and of fusion robustness
(docs/QUALITY.md, "When reranking pays").

In process, exactly as the services rank (bge-small-en int8 at 256 tokens, exact cosine;
the project's BM25 sparse vectors with Qdrant's IDF; z-score fusion of the two top-100
lists; ms-marco-MiniLM-L-12-v2 int8 at 256 tokens over the fused top candidates, z-score
combined with weight 0.4), this records for every query of every collection:

* first-stage signals that exist *before* reranking: the fused score margins (rank 1 - 2,
  rank 1 - 10), the dense/sparse top-10 overlap, whether their top documents agree, the
  dense top cosine and margin, the query length, the sparse-only documents in the top 10;
* NDCG@10 of the first stage and of reranking at depths 5, 10, 20 (so the cross-encoder's
  change per query and per depth).

Collections: SciFact train (choices are made here) and test, Cranfield (test only: reported,
never chosen on), and the same collections with one input weakened, as docs/QUALITY.md did:
BM25 over the first 12 words of each document ("weak BM25") and the bi-encoder over the first
12 words ("weak dense").

It also measures the label-free check the retrieval service runs on a collection's own
documents (services/retrieval/calibration.py): pseudo-queries cut from each sampled document,
and how often each list finds their document, for every variant.

Everything expensive (embeddings, BM25 tokens, cross-encoder scores) is cached under
``--cache``; the per-query table is written to ``--out`` (JSON).

    python scripts/study_cascade.py [--cache /tmp/cascade_cache] [--out scripts/study_cascade_results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "gen"))
sys.path.insert(0, str(ROOT / "scripts"))

from services.cli.beir import iter_corpus, load_qrels, load_queries  # noqa: E402
from services.gateway.score_combination import combine_scores  # noqa: E402
from services.retrieval.fusion import weighted_zscore  # noqa: E402
from tune_scifact import Bm25Index, CeCache, dense_runs, dense_vectors, index_text, log, per_query_ndcg  # noqa: E402

DATASETS = Path("/work/shared/datasets")
DEPTHS = (5, 10, 20)
K1, B, AVGDL = 2.0, 0.75, 256.0
DENSE_WEIGHT, RERANK_WEIGHT = 0.6, 0.4
WEAK_WORDS = 12


class Collection:
    """A BEIR collection, optionally with the text one retriever indexes cut short."""

    def __init__(self, name: str, path: Path, texts_cut: int | None = None) -> None:
        self.name = name
        self.docs = list(iter_corpus(path / "corpus.jsonl"))
        self.doc_ids = [d["id"] for d in self.docs]
        full = [index_text(d) for d in self.docs]
        self.texts = [" ".join(t.split()[:texts_cut]) for t in full] if texts_cut else full
        self.full_texts = full
        self.queries = load_queries(path)
        self.qrels: dict[str, dict] = {}
        for split in ("train", "test"):
            if (path / "qrels" / f"{split}.tsv").exists():
                self.qrels[split] = load_qrels(path, split)
        self.splits = {s: [q for q in self.queries if q in qr] for s, qr in self.qrels.items()}
        self.all_qids = [q for s in self.splits.values() for q in s]


def _cache(root: Path, *parts: str) -> Path:
    p = root.joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


def first_stage(name: str, path: Path, cache: Path, threads: int, weak: str | None, dense_weight: float = DENSE_WEIGHT):
    """(collection, dense lists, sparse lists, hybrid lists) for every judged query."""
    full = Collection(name, path)
    if weak == "bm25":
        bm25 = Bm25Index(Collection(name, path, WEAK_WORDS), "snowball", _cache(cache, name, "weak_bm25"))
    else:
        bm25 = Bm25Index(full, "snowball", _cache(cache, name, "full"))
    sparse = bm25.runs(full.all_qids, K1, B, AVGDL)
    dense_data = Collection(name, path, WEAK_WORDS) if weak == "dense" else full
    docs_m, queries_m = dense_vectors(dense_data, _cache(cache, name, "weak_dense" if weak == "dense" else "full"),
                                      "bge-small-en", threads, max_length=256)
    dense = dense_runs(docs_m, queries_m, full, full.all_qids)
    hybrid = {q: weighted_zscore([dense[q], sparse[q]], [dense_weight, 1 - dense_weight])[:100] for q in full.all_qids}
    return full, dense, sparse, hybrid, (bm25, docs_m, dense_data)


def features(q: str, coll: Collection, dense, sparse, hybrid, bm25: Bm25Index) -> dict[str, float]:
    d10 = [d for d, _ in dense[q][:10]]
    s10 = [d for d, _ in sparse[q][:10]]
    h = hybrid[q]
    d100 = {d for d, _ in dense[q]}
    fused = [s for _, s in h]
    ds = [s for _, s in dense[q]]
    ss = [s for _, s in sparse[q]]
    return {
        "fused_margin_1_2": fused[0] - fused[1] if len(fused) > 1 else 0.0,
        "fused_margin_1_10": fused[0] - fused[min(9, len(fused) - 1)] if fused else 0.0,
        "overlap_10": len(set(d10) & set(s10)) / 10.0,
        "top1_agree": float(bool(d10) and bool(s10) and d10[0] == s10[0]),
        "dense_top1": ds[0] if ds else 0.0,
        "dense_margin_1_10": ds[0] - ds[min(9, len(ds) - 1)] if ds else 0.0,
        "sparse_margin_rel": (ss[0] - ss[min(9, len(ss) - 1)]) / ss[0] if ss and ss[0] > 0 else 0.0,
        "query_terms": float(len(bm25.encoder.analyze(coll.queries[q]))),
        "sparse_only_10": float(sum(1 for d, _ in h[:10] if d not in d100)),
        "sparse_hits": float(len(ss)),
        **{f"zgap_1_2_at{d}": first_stage_gap(fused, d) for d in DEPTHS},
    }


def first_stage_gap(scores: Sequence[float], depth: int) -> float:
    """The gateway's signal (services/gateway/cascade.py): the gap between the first two
    first-stage scores, in standard deviations of the top ``depth``."""
    from services.gateway.cascade import first_stage_gap as gap

    return gap(scores, depth)


def reranked(first, ce: CeCache, qids, depth: int) -> dict:
    out = {}
    for q in qids:
        head, tail = first[q][:depth], first[q][depth:]
        final = combine_scores([s for _, s in head], [ce.get(q, d) for d, _ in head], "weighted_zscore", RERANK_WEIGHT)
        order = sorted(range(len(head)), key=lambda i: (-final[i], i))
        out[q] = [(head[i][0], final[i]) for i in order] + tail
    return out


def pseudo_queries(coll: Collection, n: int, words: int, seed: int = 7) -> list[tuple[int, str]]:
    """``n`` sampled documents, each with a ``words``-word window cut at a random offset of
    its full indexed text (the label-free check of services/retrieval/calibration.py)."""
    rng = random.Random(seed)
    picks = rng.sample(range(len(coll.docs)), min(n, len(coll.docs)))
    out = []
    for i in picks:
        toks = coll.full_texts[i].split()
        if len(toks) < words:
            continue
        start = rng.randrange(0, len(toks) - words + 1)
        out.append((i, " ".join(toks[start : start + words])))
    return out


def self_check(coll: Collection, bm25: Bm25Index, docs_m: np.ndarray, encoder, n: int, words: int) -> dict:
    """Share of pseudo-queries whose document each list ranks in its top 10 (and MRR@10)."""
    pq = pseudo_queries(coll, n, words)
    qv = encoder.embed_queries([t for _, t in pq])
    saved = bm25.data.queries
    bm25.data.queries = {str(k): t for k, (_, t) in enumerate(pq)}
    try:
        sparse = bm25.runs([str(k) for k in range(len(pq))], K1, B, AVGDL, depth=10)
    finally:
        bm25.data.queries = saved
    out = {}
    dense_hits, sparse_hits, dense_rr, sparse_rr = [], [], [], []
    for k, (i, _) in enumerate(pq):
        s = qv[k] @ docs_m.T
        top = np.argsort(-s)[:10]
        rd = next((r for r, j in enumerate(top, 1) if j == i), None)
        rs = next((r for r, (d, _) in enumerate(sparse[str(k)], 1) if d == coll.doc_ids[i]), None)
        dense_hits.append(rd is not None)
        sparse_hits.append(rs is not None)
        dense_rr.append(1.0 / rd if rd else 0.0)
        sparse_rr.append(1.0 / rs if rs else 0.0)
    out.update(queries=len(pq), dense_recall10=float(np.mean(dense_hits)), sparse_recall10=float(np.mean(sparse_hits)),
               dense_mrr10=float(np.mean(dense_rr)), sparse_mrr10=float(np.mean(sparse_rr)))
    return out


# --------------------------------------------------------------------------- analysis

FEATURES = ("fused_margin_1_2", "fused_margin_1_10", "overlap_10", "top1_agree", "dense_top1", "dense_margin_1_10",
            "sparse_margin_rel", "query_terms", "sparse_only_10", "zgap_1_2_at5", "zgap_1_2_at10", "zgap_1_2_at20")
GAPS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 1e9)


def _col(rows, key) -> np.ndarray:
    return np.array([r[key] for r in rows], dtype=float)


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = a - b
    return {"delta": round(float(d.mean()), 4), "se": round(se(d), 4)}


def feature_table(rows, depth: int = 10) -> dict:
    """Spearman rho of each signal with the cross-encoder's change to NDCG@10 at ``depth``, and
    the change by quintile of the signal (mean, standard error, queries)."""
    from scipy.stats import spearmanr

    delta = _col(rows, f"ndcg_rerank{depth}") - _col(rows, "ndcg_hybrid")
    out = {}
    for f in FEATURES:
        x = _col(rows, f)
        if np.all(x == x[0]):
            continue
        rho, p = spearmanr(x, delta)
        edges = np.quantile(x, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
        buckets = []
        for i in range(5):
            m = (x >= edges[i]) & ((x <= edges[i + 1]) if i == 4 else (x < edges[i + 1]))
            if m.sum() > 1:
                buckets.append({"from": round(float(edges[i]), 3), "to": round(float(edges[i + 1]), 3), "queries": int(m.sum()),
                                "delta": round(float(delta[m].mean()), 4), "se": round(se(delta[m]), 4)})
        out[f] = {"spearman": round(float(rho), 3), "p": round(float(p), 4), "quintiles": buckets}
    return out


def policy_outcome(rows, depth: int, max_gap: float, weak: bool = False) -> dict[str, float]:
    """NDCG@10 of the auto policy (rerank at ``depth`` when zgap_1_2_at<depth> <= max_gap; every
    query at depth 10, as ``always``, when the collection's check found a weak list) and its
    cost: the share of queries reranked and the pairs per query."""
    if weak:
        return {"ndcg": _col(rows, "ndcg_rerank10"), "share": 1.0, "pairs": 10.0}
    gap = _col(rows, f"zgap_1_2_at{depth}")
    chosen = gap <= max_gap
    ndcg = np.where(chosen, _col(rows, f"ndcg_rerank{depth}"), _col(rows, "ndcg_hybrid"))
    return {"ndcg": ndcg, "share": float(chosen.mean()), "pairs": float(depth * chosen.mean())}


def policy_grid(rows) -> list[dict]:
    hybrid, out = _col(rows, "ndcg_hybrid"), []
    for depth in DEPTHS:
        always = _col(rows, f"ndcg_rerank{depth}")
        for g in GAPS:
            o = policy_outcome(rows, depth, g)
            out.append({"depth": depth, "max_gap": g, "ndcg@10": round(float(o["ndcg"].mean()), 4),
                        "share_reranked": round(o["share"], 3), "pairs_per_query": round(o["pairs"], 2),
                        "vs_first_stage": paired(o["ndcg"], hybrid), "vs_always_10": paired(o["ndcg"], _col(rows, "ndcg_rerank10")),
                        "vs_always_same_depth": paired(o["ndcg"], always)})
    return out


def choose_policy(grid: list[dict], max_pairs: float) -> dict:
    """On SciFact train: the best NDCG@10 within ``max_pairs`` cross-encoder pairs per query
    (ties: the cheaper)."""
    feasible = [r for r in grid if r["pairs_per_query"] <= max_pairs]
    return max(feasible, key=lambda r: (r["ndcg@10"], -r["pairs_per_query"]))


def analyze(table: dict, max_pairs: float, calibrated: Path | None = None) -> dict:
    out: dict = {"by_collection": {}}
    train = table["variants"]["scifact:full"]["splits"]["train"]["rows"]
    out["policy_grid_scifact_train"] = policy_grid(train)
    chosen = choose_policy(out["policy_grid_scifact_train"], max_pairs)
    out["chosen_policy"] = {"depth": chosen["depth"], "max_gap": chosen["max_gap"], "max_pairs_per_query": max_pairs,
                            "on_scifact_train": chosen}
    weak_lists: dict[str, bool] = {}
    if calibrated is not None:
        from services.retrieval.calibration import Calibration, one_list_weak

        for key, row in json.loads(calibrated.read_text())["variants"].items():
            weak_lists[key] = one_list_weak(Calibration.from_metadata(row["calibration"]))
    out["one_list_weak"] = weak_lists
    for key, variant in table["variants"].items():
        for split, data in variant["splits"].items():
            rows = data["rows"]
            hybrid, always10 = _col(rows, "ndcg_hybrid"), _col(rows, "ndcg_rerank10")
            auto = policy_outcome(rows, chosen["depth"], chosen["max_gap"], weak_lists.get(key, False))
            out["by_collection"][f"{key}/{split}"] = {
                "queries": len(rows),
                "ndcg@10": {r: round(float(_col(rows, f"ndcg_{r}").mean()), 4)
                            for r in ("dense", "sparse", "hybrid", *(f"rerank{d}" for d in DEPTHS))},
                "rerank_minus_first_stage": {d: paired(_col(rows, f"ndcg_rerank{d}"), hybrid) for d in DEPTHS},
                "helps_hurts_depth10": {"helps": round(float(np.mean(always10 - hybrid > 1e-9)), 3),
                                        "hurts": round(float(np.mean(always10 - hybrid < -1e-9)), 3)},
                "auto": {"ndcg@10": round(float(auto["ndcg"].mean()), 4), "share_reranked": round(auto["share"], 3),
                         "pairs_per_query": round(auto["pairs"], 2), "vs_first_stage": paired(auto["ndcg"], hybrid),
                         "vs_always_10": paired(auto["ndcg"], always10)},
                "signals": feature_table(rows) if split == "train" or key.startswith("cranfield") else None,
            }
    return out


def se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cascade_cache"))
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "study_cascade_results.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check-docs", type=int, default=200)
    parser.add_argument("--check-words", type=int, default=12)
    parser.add_argument("--variants", default="scifact:full,scifact:bm25,scifact:dense,cranfield:full,cranfield:bm25,cranfield:dense")
    parser.add_argument("--analyze", action="store_true", help="only analyse the per-query table in --out")
    parser.add_argument("--calibrated", type=Path,
                        help="fuse with the dense weight the service's check gave each variant "
                             "(scripts/study_fusion_calibration_results.json) instead of the fixed 0.6")
    parser.add_argument("--max-pairs", type=float, default=2.0,
                        help="the auto policy's budget: cross-encoder pairs per query on SciFact train (always at depth 10: 10)")
    args = parser.parse_args(argv)
    if args.analyze:
        table = json.loads(args.out.read_text())
        table["analysis"] = analyze(table, args.max_pairs, args.calibrated)
        args.out.write_text(json.dumps(table) + "\n")
        print(json.dumps({k: v for k, v in table["analysis"].items() if k != "policy_grid_scifact_train"}, indent=1))
        return 0
    from services.retrieval.embedder import BiEncoder
    from tune_scifact import MODELS_DIR

    encoder = BiEncoder(MODELS_DIR / "bge-small-en", intra_op_threads=args.threads, provider="cpu", max_length=256)
    table: dict = {"settings": {"k1": K1, "b": B, "avgdl": AVGDL, "dense_weight": DENSE_WEIGHT, "rerank_weight": RERANK_WEIGHT,
                                "depths": DEPTHS, "weak_words": WEAK_WORDS}, "variants": {}}
    for spec in args.variants.split(","):
        name, variant = spec.split(":")
        weak = None if variant == "full" else variant
        log(f"== {name} ({variant})")
        weight = DENSE_WEIGHT
        if args.calibrated:
            weight = json.loads(args.calibrated.read_text())["variants"][spec]["calibration"]["dense_weight"]
        coll, dense, sparse, hybrid, (bm25, docs_m, dense_data) = first_stage(name, DATASETS / name, args.cache, args.threads,
                                                                              weak, weight)
        ce = CeCache(_cache(args.cache, name), "ms-marco-MiniLM-L-12-v2", 256, args.threads)
        docs_by_id = {d["id"]: d for d in coll.docs}
        ce.ensure([(q, d) for q in coll.all_qids for d, _ in hybrid[q][: max(DEPTHS)]], coll, docs_by_id)
        runs = {"dense": dense, "sparse": sparse, "hybrid": hybrid}
        runs.update({f"rerank{d}": reranked(hybrid, ce, coll.all_qids, d) for d in DEPTHS})
        per_split = {}
        for split, qids in coll.splits.items():
            qrels = coll.qrels[split]
            ndcg = {r: per_query_ndcg(lists, qrels, qids) for r, lists in runs.items()}
            rows = []
            for i, q in enumerate(qids):
                rows.append({"qid": q, **{f"ndcg_{r}": round(float(v[i]), 5) for r, v in ndcg.items()},
                             **{k: round(v, 5) for k, v in features(q, coll, dense, sparse, hybrid, bm25).items()}})
            summary = {r: round(float(v.mean()), 4) for r, v in ndcg.items()}
            summary.update({f"rerank{d}_minus_hybrid": {"delta": round(float((ndcg[f'rerank{d}'] - ndcg['hybrid']).mean()), 4),
                                                        "se": round(se(ndcg[f"rerank{d}"] - ndcg["hybrid"]), 4)} for d in DEPTHS})
            per_split[split] = {"queries": len(qids), "summary": summary, "rows": rows}
            log(f"{name}/{variant}/{split}: {summary}")
        check = self_check(coll, bm25, docs_m, encoder, args.check_docs, args.check_words)
        log(f"{name}/{variant} self-check: {check}")
        table["variants"][f"{name}:{variant}"] = {"splits": per_split, "self_check": check, "dense_weight": weight}
        args.out.write_text(json.dumps(table) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
