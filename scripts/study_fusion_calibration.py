#!/usr/bin/env python
"""Fusion calibration measured through the store, exactly as the retrieval service runs it.

For SciFact (train and test) and Cranfield (test), each as shipped and with one input weakened
(BM25 over the first 12 words of each document: "weak BM25"; the bi-encoder over the first 12
words: "weak dense"), this builds a Qdrant Edge collection from the study's cached vectors
(scripts/study_cascade.py), runs the service's label-free check
(services/retrieval/calibration.FusionCalibrator, 256 documents), and evaluates through
DocumentStore.retrieve (exact search, as Edge serves collections of this size): dense, sparse,
hybrid at the old fixed weight (0.6) and hybrid at the calibrated weight, with paired standard
errors against the better single input and against the fixed weight.

    python scripts/study_fusion_calibration.py [--cache /tmp/cascade_cache] [--out scripts/study_fusion_calibration_results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "gen"))
sys.path.insert(0, str(ROOT / "scripts"))

from services.retrieval.backends.base import PointIn, SparseVector  # noqa: E402
from services.retrieval.backends.edge import EdgeBackend  # noqa: E402
from services.retrieval.calibration import FusionCalibrator  # noqa: E402
from services.retrieval.embedder import BiEncoder  # noqa: E402
from services.retrieval.query_cache import CachedQueryEmbedder  # noqa: E402
from services.retrieval.sparse import Bm25SparseEncoder  # noqa: E402
from services.retrieval.store import DEFAULT_DENSE_WEIGHT, DocumentStore, Fusion, point_id  # noqa: E402
from study_cascade import AVGDL, B, DATASETS, K1, WEAK_WORDS, Collection, _cache, paired  # noqa: E402
from tune_scifact import MODELS_DIR, dense_vectors, log, per_query_ndcg  # noqa: E402


def build(store: DocumentStore, coll: Collection, doc_vectors: np.ndarray, sparse_texts: list[str]) -> None:
    store.create_collection("c", {})
    sparse = store.sparse_encoder.encode_documents(sparse_texts)
    points = [
        PointIn(point_id(d["id"]), v.tolist(), SparseVector(tuple(s.indices), tuple(s.values)) if s.indices else None,
                {"doc_id": d["id"], "passage": 0, "title": d["title"], "text": d["text"], "payload": {}})
        for d, v, s in zip(coll.docs, doc_vectors, sparse)
    ]
    for i in range(0, len(points), 512):
        store.backend.upsert("c", points[i : i + 512])


def runs(store: DocumentStore, coll: Collection, qids: list[str], weights: dict[str, float]) -> dict[str, dict]:
    out: dict[str, dict] = {"dense": {}, "sparse": {}, **{k: {} for k in weights}}
    for q in qids:
        text = coll.queries[q]
        for mode in ("dense", "sparse"):
            found, _ = store.retrieve("c", text, 100, mode=mode)
            out[mode][q] = [(c.id, c.score) for c in found]
        for label, w in weights.items():
            found, _ = store.retrieve("c", text, 100, mode="hybrid", fusion_options=Fusion(dense_weight=w))
            out[label][q] = [(c.id, c.score) for c in found]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cascade_cache"))
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "study_fusion_calibration_results.json")
    parser.add_argument("--sample", type=int, default=256, help="RETRIEVAL_FUSION_CALIBRATION_SAMPLE")
    args = parser.parse_args()
    encoder = BiEncoder(MODELS_DIR / "bge-small-en", intra_op_threads=1, provider="cpu", max_length=256)
    queries = CachedQueryEmbedder(encoder, 20000)
    results: dict = {"sample": args.sample, "default_weight": DEFAULT_DENSE_WEIGHT, "variants": {}}
    for name in ("scifact", "cranfield"):
        full = Collection(name, DATASETS / name)
        cut = Collection(name, DATASETS / name, WEAK_WORDS)
        for variant in ("full", "bm25", "dense"):
            log(f"== {name} ({variant})")
            vec_data = cut if variant == "dense" else full
            docs_m, _ = dense_vectors(vec_data, _cache(args.cache, name, "weak_dense" if variant == "dense" else "full"),
                                      "bge-small-en", 1, max_length=256)
            with tempfile.TemporaryDirectory() as tmp:
                backend = EdgeBackend(Path(tmp) / "edge", search_threads=1)
                store = DocumentStore(backend, queries, Bm25SparseEncoder(k1=K1, b=B, avg_doc_length=AVGDL))
                try:
                    build(store, full, docs_m, cut.texts if variant == "bm25" else full.texts)
                    calibrator = FusionCalibrator(store, encoder.embed_queries, DEFAULT_DENSE_WEIGHT, args.sample)
                    try:
                        started = time.perf_counter()
                        measured = calibrator.calibrate_if_due("c", force=True)
                        check_s = time.perf_counter() - started
                    finally:
                        calibrator.close()
                    row: dict = {"calibration": measured.to_metadata(), "check_seconds": round(check_s, 2), "splits": {}}
                    for split, qids in full.splits.items():
                        qrels = full.qrels[split]
                        lists = runs(store, full, qids, {"hybrid_fixed": DEFAULT_DENSE_WEIGHT,
                                                         "hybrid_calibrated": measured.dense_weight})
                        nd = {k: per_query_ndcg(v, qrels, qids) for k, v in lists.items()}
                        better = "dense" if nd["dense"].mean() >= nd["sparse"].mean() else "sparse"
                        row["splits"][split] = {
                            "queries": len(qids),
                            "ndcg@10": {k: round(float(v.mean()), 4) for k, v in nd.items()},
                            "better_input": better,
                            "calibrated_minus_better_input": paired(nd["hybrid_calibrated"], nd[better]),
                            "fixed_minus_better_input": paired(nd["hybrid_fixed"], nd[better]),
                            "calibrated_minus_fixed": paired(nd["hybrid_calibrated"], nd["hybrid_fixed"]),
                        }
                        log(f"{name}/{variant}/{split}: weight {measured.dense_weight} {row['splits'][split]}")
                finally:
                    backend.close()
            results["variants"][f"{name}:{variant}"] = row
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
