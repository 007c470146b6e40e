"""Late interaction in the engine, on both backends: token vectors stored as a multivector,
MaxSim rescoring the prefetched candidates inside one engine query."""

from __future__ import annotations

import numpy as np
import pytest

from services.retrieval.backends import base

DIM = 16


def _docs(rng, n=60):
    out = []
    for i in range(n):
        tokens = rng.standard_normal((int(rng.integers(3, 9)), DIM)).astype(np.float32)
        tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
        dense = rng.standard_normal(8).astype(np.float32)
        out.append((f"00000000-0000-0000-0000-{i:012d}", dense / np.linalg.norm(dense), tokens))
    return out


@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_maxsim_rescores_the_prefetched_candidates(backend, quantization):
    rng = np.random.default_rng(3)
    backend.create_collection(base.CollectionSchema("li", 8, True, late_dimension=DIM, late_quantization=quantization))
    docs = _docs(rng)
    backend.upsert("li", [base.PointIn(pid, d.tolist(), base.SparseVector((i % 7 + 1,), (1.0,)), {"doc_id": str(i)},
                                       late=t.tolist()) for i, (pid, d, t) in enumerate(docs)])
    query = rng.standard_normal((4, DIM)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    dense_q = docs[0][1]
    prefetch = (base.Nearest(base.DENSE, dense_q.tolist(), 20), base.Nearest(base.SPARSE, base.SparseVector((1, 2), (1.0, 1.0)), 20))
    hits = backend.query("li", [base.Rescore(prefetch, base.LATE, query.tolist(), 5)])[0]

    candidates = {h.id for h in backend.query("li", [base.Nearest(base.DENSE, dense_q.tolist(), 20)])[0]}
    candidates |= {h.id for h in backend.query("li", [base.Nearest(base.SPARSE, base.SparseVector((1, 2), (1.0, 1.0)), 20)])[0]}
    exact = {pid: float((query @ t.T).max(axis=1).sum()) for pid, _, t in docs if pid in candidates}
    expected = sorted(exact, key=lambda pid: -exact[pid])[:5]
    assert len(hits) == 5 and {h.id for h in hits} <= candidates
    tolerance = 1e-4 if quantization == "none" else 0.05
    for h in hits:
        assert h.score == pytest.approx(exact[h.id], abs=tolerance)
    if quantization == "none":
        assert [h.id for h in hits] == expected
    else:  # int8 may swap near-ties only
        assert len({h.id for h in hits} & set(expected)) >= 4
    assert backend.schema("li").late_dimension == DIM and backend.schema("li").late_quantization == quantization


def test_late_vectors_survive_scroll(backend):
    rng = np.random.default_rng(4)
    backend.create_collection(base.CollectionSchema("li", 8, False, late_dimension=DIM, late_quantization="none"))
    pid, dense, tokens = _docs(rng, 1)[0]
    backend.upsert("li", [base.PointIn(pid, dense.tolist(), None, {"doc_id": "0"}, late=tokens.tolist())])
    page, _ = backend.scroll("li", None, 10, True)
    assert np.allclose(np.array(page[0][2][base.LATE]), tokens, atol=1e-5)
