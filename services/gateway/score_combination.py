"""Combine the cross-encoder score with the first-stage (retrieval) evidence.

The candidates are given in first-stage order (best first). ``rerank_weight`` is the
weight of the cross-encoder; the first stage gets ``1 - rerank_weight``.

* ``rerank_only``: the cross-encoder score (the weight is ignored).
* ``weighted_zscore``: ``w * z(rerank) + (1 - w) * z(first_stage)``, each z-normalised
  over the candidate set (population std; a constant list normalises to zeros).
* ``weighted_rrf``: ``w / (k + rerank_rank) + (1 - w) / (k + first_stage_rank)`` with
  1-based ranks; the first-stage rank is the candidate's position, the rerank rank its
  position when sorted by cross-encoder score (ties by position).

Defaults are chosen by measurement on SciFact train queries (scripts/tune_scifact.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from services.common.api_names import SCORE_COMBINATIONS
from services.common.scores import zscores

__all__ = ["METHODS", "combine_scores"]

METHODS = tuple(SCORE_COMBINATIONS.values())


def combine_scores(
    first_stage: Sequence[float],
    rerank: Sequence[float],
    method: str,
    rerank_weight: float,
    rrf_k: int = 60,
) -> list[float]:
    """Final score per candidate (higher is better), in the input order."""
    if method not in METHODS:
        raise ValueError(f"unknown score combination {method!r}; one of {METHODS}")
    if len(first_stage) != len(rerank):
        raise ValueError(f"{len(first_stage)} first-stage scores but {len(rerank)} rerank scores")
    w = float(rerank_weight)
    if not (math.isfinite(w) and 0.0 <= w <= 1.0):
        raise ValueError(f"rerank_weight must be in [0, 1], got {rerank_weight}")
    if rrf_k < 0:
        raise ValueError(f"rrf_k must be >= 0, got {rrf_k}")
    rerank = [float(s) for s in rerank]
    if method == "rerank_only":
        return rerank
    if method == "weighted_zscore":
        zf, zr = zscores([float(s) for s in first_stage]), zscores(rerank)
        return [w * r + (1.0 - w) * f for f, r in zip(zf, zr)]
    n = len(rerank)
    rerank_rank = [0] * n
    for rank, i in enumerate(sorted(range(n), key=lambda i: (-rerank[i], i)), 1):
        rerank_rank[i] = rank
    return [w / (rrf_k + rerank_rank[i]) + (1.0 - w) / (rrf_k + i + 1) for i in range(n)]
