#!/usr/bin/env python
"""What the cross-encoder reads, and what it costs per pair: can a cheaper cross-encoding
(shorter passages, fewer tokens) keep NDCG@10?

On SciFact train (choices) and Cranfield test (reported only), over the fused hybrid top 10 of
scripts/study_cascade.py, for each way of building the passage the cross-encoder reads:

* ``first256``: title + text cut to 256 tokens (what the service sends today);
* ``first128``: the same cut to 128 tokens;
* ``window128``: title + the 96-word window of the text sharing the most (stemmed, stop-word
  free) terms with the query, cut to 128 tokens: "the passage that matched";

it records NDCG@10 of reranking all queries at depth 10 (the ``always`` policy) and of the auto
policy's queries only, paired against the first stage, and the cost: the real token count of
each pair and the model's time per pair by length bucket (one pair per batch, as the service runs
a full-length pair on CPU), measured in interleaved rounds so the machine's drift hits every
bucket alike.

    python scripts/study_rerank_text.py [--cache /tmp/cascade_cache] [--out scripts/study_rerank_text_results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "gen"))
sys.path.insert(0, str(ROOT / "scripts"))

from services.gateway.cascade import first_stage_gap  # noqa: E402
from services.retrieval.sparse import Bm25SparseEncoder  # noqa: E402
from study_cascade import DATASETS, first_stage, paired, reranked  # noqa: E402
from tune_scifact import MODELS_DIR, log, per_query_ndcg  # noqa: E402

WINDOW_WORDS = 96
AUTO_DEPTH, AUTO_MAX_GAP = 5, 0.2  # the shipped GATEWAY_AUTO_RERANK_* defaults


def best_window(query_terms: set[str], text: str, analyzer: Bm25SparseEncoder) -> str:
    words = text.split()
    if len(words) <= WINDOW_WORDS:
        return text
    stems = [set(analyzer.analyze(w)) for w in words]
    best, best_at = -1, 0
    for start in range(0, len(words) - WINDOW_WORDS + 1, 16):
        score = len(query_terms & set().union(*stems[start : start + WINDOW_WORDS]))
        if score > best:
            best, best_at = score, start
    return " ".join(words[best_at : best_at + WINDOW_WORDS])


class Scores:
    """Cross-encoder scores of (query, passage) per variant, cached on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    def ensure(self, encoder, variant: str, items: list[tuple[str, str, str, str]]) -> None:
        missing = [it for it in items if f"{variant}\t{it[0]}\t{it[1]}" not in self.data]
        for i in range(0, len(missing), 320):
            chunk = missing[i : i + 320]
            scores = encoder.score_encodings(encoder.tokenize_pairs([(q, p) for _, _, q, p in chunk]))
            self.data.update({f"{variant}\t{qid}\t{did}": float(s) for (qid, did, _, _), s in zip(chunk, scores)})
            self.path.write_text(json.dumps(self.data))
            log(f"  {variant}: {i + len(chunk)}/{len(missing)} pairs")


def cost_per_length(encoder, pairs: list[tuple[str, str]], rounds: int = 3) -> dict[str, dict[str, float]]:
    """Model time per pair (one pair per batch) by token-length bucket, interleaved rounds."""
    encodings = encoder.tokenize_pairs(pairs)
    buckets: dict[int, list] = {}
    for e in encodings:
        buckets.setdefault(min(256, ((len(e.ids) - 1) // 64 + 1) * 64), []).append(e)
    times: dict[int, list[float]] = {b: [] for b in buckets}
    for _ in range(rounds):
        for b, encs in sorted(buckets.items()):
            sample = encs[:40]
            start = time.perf_counter()
            for e in sample:
                encoder.infer([e])
            times[b].append((time.perf_counter() - start) / len(sample) * 1000.0)
    return {f"<= {b} tokens": {"pairs": len(buckets[b]), "ms_per_pair": round(statistics.median(t), 2),
                               "rounds_ms": [round(x, 2) for x in t]} for b, t in sorted(times.items())}


def cost_per_variant(encoders, pairs: dict[str, list[tuple[str, str]]], lengths: dict[str, int],
                     rounds: int = 5) -> dict[str, dict[str, float]]:
    """Model time per pair (one pair per batch, as the service scores a full-length pair on CPU)
    of each variant's text for the same candidates, in interleaved rounds (A B C, B C A, ...)."""
    encoded = {v: encoders[lengths[v]].tokenize_pairs(p) for v, p in pairs.items()}
    times: dict[str, list[float]] = {v: [] for v in pairs}
    order = list(pairs)
    for r in range(rounds):
        for v in order[r % len(order):] + order[: r % len(order)]:
            start = time.perf_counter()
            for e in encoded[v]:
                encoders[lengths[v]].infer([e])
            times[v].append((time.perf_counter() - start) / len(encoded[v]) * 1000.0)
    return {v: {"pairs": len(encoded[v]), "mean_tokens": round(float(np.mean([len(e.ids) for e in encoded[v]])), 1),
                "ms_per_pair": round(statistics.median(t), 2), "rounds_ms": [round(x, 2) for x in t]}
            for v, t in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cascade_cache"))
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "study_rerank_text_results.json")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from services.reranker.cross_encoder import CrossEncoder

    encoders = {n: CrossEncoder(MODELS_DIR / "ms-marco-MiniLM-L-12-v2", max_length=n, intra_op_threads=args.threads,
                                provider="cpu") for n in (128, 256)}
    analyzer = Bm25SparseEncoder()
    results: dict = {"window_words": WINDOW_WORDS, "auto": {"depth": AUTO_DEPTH, "max_gap": AUTO_MAX_GAP}, "collections": {}}
    for name, split in (("scifact", "train"), ("cranfield", "test")):
        coll, _, _, hybrid, _ = first_stage(name, DATASETS / name, args.cache, args.threads, None)
        docs = {d["id"]: d for d in coll.docs}
        qids, qrels = coll.splits[split], coll.qrels[split]
        scores = Scores(args.cache / name / "rerank_text_scores.json")
        texts = {}
        for q in qids:
            terms = set(analyzer.analyze(coll.queries[q]))
            for did, _ in hybrid[q][:10]:
                d = docs[did]
                head = f"{d['title']}\n" if d["title"] else ""
                texts[(q, did)] = {"first256": head + d["text"], "first128": head + d["text"],
                                   "window128": head + best_window(terms, d["text"], analyzer)}
        variants = {"first256": 256, "first128": 128, "window128": 128}
        tokens = {}
        for variant, length in variants.items():
            items = [(q, did, coll.queries[q], t[variant]) for (q, did), t in texts.items()]
            log(f"{name}: scoring {variant}")
            scores.ensure(encoders[length], variant, items)
            encs = encoders[length].tokenize_pairs([(qt, p) for _, _, qt, p in items])
            tokens[variant] = float(np.mean([len(e.ids) for e in encs]))
        base = per_query_ndcg(hybrid, qrels, qids)
        row: dict = {"queries": len(qids), "first_stage_ndcg@10": round(float(base.mean()), 4), "variants": {}}
        gap = np.array([first_stage_gap([s for _, s in hybrid[q]], AUTO_DEPTH) for q in qids])
        per_variant: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for variant in variants:
            class _Ce:  # reranked() reads scores through .get(q, d)
                @staticmethod
                def get(q, d, v=variant):
                    return scores.data[f"{v}\t{q}\t{d}"]

            always = per_query_ndcg(reranked(hybrid, _Ce, qids, 10), qrels, qids)
            auto5 = per_query_ndcg(reranked(hybrid, _Ce, qids, AUTO_DEPTH), qrels, qids)
            auto = np.where(gap <= AUTO_MAX_GAP, auto5, base)
            per_variant[variant] = (always, auto)
            row["variants"][variant] = {
                "mean_tokens_per_pair": round(tokens[variant], 1),
                "always10_ndcg@10": round(float(always.mean()), 4), "always10_minus_first_stage": paired(always, base),
                "auto_ndcg@10": round(float(auto.mean()), 4), "auto_minus_first_stage": paired(auto, base),
            }
            log(f"{name}/{split} {variant}: {row['variants'][variant]}")
        for variant in variants:  # paired against the text the service sends today
            always, auto = per_variant[variant]
            row["variants"][variant]["always10_minus_first256"] = paired(always, per_variant["first256"][0])
            row["variants"][variant]["auto_minus_first256"] = paired(auto, per_variant["first256"][1])
        sample = [(coll.queries[q], t["first256"]) for (q, _), t in list(texts.items())[:600]]
        row["model_ms_per_pair_by_length"] = cost_per_length(encoders[256], sample)
        picked = list(texts.items())[:: max(1, len(texts) // 100)][:100]
        row["model_ms_per_pair_by_variant"] = cost_per_variant(
            encoders, {v: [(coll.queries[q], t[v]) for (q, _), t in picked] for v in variants}, variants)
        log(f"{name}/{split} cost: {row['model_ms_per_pair_by_variant']}")
        results["collections"][f"{name}/{split}"] = row
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
