"""Vectors of `searchctl bench scale`: the real SciFact corpus embedded by the service's models,
and deterministic synthetic points that resemble it, at any size.

Dense, ``--dense-model``:

* ``interpolated`` (the default): each point lies between a real SciFact document embedding
  and one of its 10 nearest real neighbours (a uniform fraction up to half way), plus
  Gaussian noise with the real embeddings' covariance scaled by ``noise`` (0.5),
  L2-normalised. The points follow the real documents' neighbourhoods, which a single
  Gaussian does not: for the real queries, at the real corpus's size (5,183 points), the
  mean cosines of the top 1 / 10 / 100 are 0.758 / 0.697 / 0.650 against the real corpus's
  0.793 / 0.704 / 0.654, and a point's nearest neighbour 0.87 against 0.85 (measured by
  :meth:`SyntheticCorpus.neighbourhoods`, in every report). What it cannot reproduce: a real
  million-document corpus has more topics than SciFact, here the same topics get denser.
* ``gaussian`` (the model of the earlier runs): one Gaussian with the real embeddings' mean
  and covariance. Its neighbourhoods are near-ties (top 1 / 100 at 0.69 / 0.64 at 5,183
  points, 0.71 / 0.67 at 100k), the hardest case for a graph search: a lower bound.

Sparse: unigram draws from SciFact's term ids with their collection frequencies plus a
fitted Zipf tail, document lengths resampled from SciFact, BM25 document weights.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.cli.bench.harness import _bi_encoder, _retrieval_config, load_corpus
from services.retrieval.backends.base import PointIn, SparseVector
from services.retrieval.sparse import Bm25SparseEncoder, term_id
from services.retrieval.store import point_id

DENSE_MODELS = ("interpolated", "gaussian")
#: Real neighbours a synthetic point is drawn towards, and how far at most.
NEIGHBOURS, MAX_STEP = 10, 0.5


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

    def __init__(self, real: RealData, seed: int, vocabulary: int = 200_000, payload_text_chars: int = 60,
                 dense_model: str = "interpolated", noise: float = 0.5) -> None:
        if dense_model not in DENSE_MODELS:
            raise ValueError(f"dense model must be one of {DENSE_MODELS}, got {dense_model!r}")
        self.seed = seed
        self.dense_model, self.noise = dense_model, noise
        self.real = real
        self.anchors = real.dense.astype(np.float32)
        similarity = self.anchors @ self.anchors.T
        np.fill_diagonal(similarity, -np.inf)
        self.neighbours = np.argsort(-similarity, axis=1)[:, :NEIGHBOURS]
        del similarity
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
        x = self.dense(rng, count)
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

    def dense(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` L2-normalised dense vectors of the corpus's model."""
        z = rng.standard_normal((count, self.dim), dtype=np.float32) @ self.chol.T
        if self.dense_model == "gaussian":
            x = self.mean32 + z
        else:
            anchor = rng.integers(0, len(self.anchors), count)
            toward = self.neighbours[anchor, rng.integers(0, NEIGHBOURS, count)]
            step = rng.uniform(0.0, MAX_STEP, (count, 1)).astype(np.float32)
            a = self.anchors[anchor]
            x = a + step * (self.anchors[toward] - a) + self.noise * z
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def neighbourhoods(self, size: int = 0) -> dict[str, Any]:
        """Mean cosine of the real queries' top 1 / 10 / 100 and of a point's nearest neighbour,
        for ``size`` synthetic points (default: as many as real documents) and for the real corpus."""
        size = size or len(self.anchors)

        def figures(x: np.ndarray) -> dict[str, float]:
            top = np.sort(self.real.query_dense @ x.T, axis=1)
            own = x[:2000] @ x.T
            own[np.arange(len(own)), np.arange(len(own))] = -np.inf
            ranks = {f"top{k}": round(float(top[:, -k].mean()), 3) for k in (1, 10, 100) if k <= top.shape[1]}
            return {**ranks, "nearest_neighbour": round(float(own.max(axis=1).mean()), 3)}

        return {"points": size, "synthetic": figures(self.dense(np.random.default_rng([self.seed, 5]), size)),
                "real": figures(self.anchors)}

    def describe(self) -> dict[str, Any]:
        sample = self.batch(10**9, 500)
        nnz = [len(p.sparse.indices) for p in sample]
        payload = [len(json.dumps(p.payload)) for p in sample]
        models = {
            "gaussian": "Gaussian with the empirical mean and covariance of the real SciFact document embeddings "
                        "(bge-small-en), L2-normalised",
            "interpolated": f"between a real SciFact document embedding (bge-small-en) and one of its {NEIGHBOURS} nearest "
                            f"real neighbours (uniform fraction 0-{MAX_STEP}), plus {self.noise} x Gaussian noise with the "
                            "real embeddings' covariance, L2-normalised",
        }
        return {"dense_model": self.dense_model, "dense": models[self.dense_model],
                "neighbourhoods": self.neighbourhoods(),
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


