"""Fusion of ranked lists where Qdrant's Query API cannot express it (weights).

Every function takes ``rankings``: one sequence of ``(key, score)`` per retriever, best
first, and returns the fused ``[(key, fused score), ...]`` best first.

Conventions shared by both fusions:

* ``weights`` default to 1.0 for every list; they must be finite and non-negative and
  there must be one per list.
* A key repeated inside one list counts once, at its first (best) position.
* Ties on the fused score are broken by first appearance: the order in which keys are
  first met when reading list 0 top to bottom, then list 1, and so on. The result is
  deterministic for a given input.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import TypeVar

from services.common.scores import zscores

__all__ = ["MISSING_RULES", "weighted_rrf", "weighted_zscore", "zscores"]

K = TypeVar("K", bound=Hashable)

#: What a key absent from one list scores in that list's z-normalised scale.
MISSING_RULES = ("min", "zero")


def _weights(rankings: Sequence[Sequence[tuple[K, float]]], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"got {len(weights)} weights for {len(rankings)} rankings")
    out = [float(w) for w in weights]
    if any(not math.isfinite(w) or w < 0 for w in out):
        raise ValueError(f"weights must be finite and >= 0, got {list(weights)}")
    return out


def _first_seen(rankings: Sequence[Sequence[tuple[K, float]]]) -> dict[K, int]:
    order: dict[K, int] = {}
    for ranking in rankings:
        for key, _ in ranking:
            if key not in order:
                order[key] = len(order)
    return order


def _dedup(ranking: Sequence[tuple[K, float]]) -> list[tuple[K, float]]:
    seen: set[K] = set()
    out = []
    for key, score in ranking:
        if key not in seen:
            seen.add(key)
            out.append((key, float(score)))
    return out


def _sorted(scores: dict[K, float], order: dict[K, int]) -> list[tuple[K, float]]:
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))


def weighted_rrf(
    rankings: Sequence[Sequence[tuple[K, float]]],
    weights: Sequence[float] | None = None,
    k: int = 60,
) -> list[tuple[K, float]]:
    """Weighted reciprocal rank fusion: ``score(d) = sum_i w_i / (k + rank_i(d))``.

    Ranks are 1-based positions in each list (the scores inside a list are not used; the
    list order is). A key absent from a list gets nothing from it.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    ws = _weights(rankings, weights)
    order = _first_seen(rankings)
    fused: dict[K, float] = dict.fromkeys(order, 0.0)
    for ranking, w in zip(rankings, ws):
        for rank, (key, _) in enumerate(_dedup(ranking), 1):
            fused[key] += w / (k + rank)
    return _sorted(fused, order)


def weighted_zscore(
    rankings: Sequence[Sequence[tuple[K, float]]],
    weights: Sequence[float] | None = None,
    missing: str = "min",
) -> list[tuple[K, float]]:
    """Weighted sum of per-list z-normalised scores.

    Each list's scores are z-normalised over that list (population mean and std). A key
    absent from a list gets, for that list, by ``missing``:

    * ``"min"`` (default): the list's minimum normalised score. An absent key ranked below
      everything the retriever returned, so it should not beat the list's worst; with
      ``"zero"`` (the list's mean) an absent key would outscore the list's lower half.
      On SciFact train (scripts/tune_scifact.py) ``"min"`` was the better rule.
    * ``"zero"``: 0.0, i.e. the list's mean.

    An empty list contributes nothing to anyone.
    """
    if missing not in MISSING_RULES:
        raise ValueError(f"missing must be one of {MISSING_RULES}, got {missing!r}")
    ws = _weights(rankings, weights)
    order = _first_seen(rankings)
    fused: dict[K, float] = dict.fromkeys(order, 0.0)
    for ranking, w in zip(rankings, ws):
        unique = _dedup(ranking)
        if not unique:
            continue
        z = zscores([s for _, s in unique])
        present = {key: zi for (key, _), zi in zip(unique, z)}
        absent = min(z) if missing == "min" else 0.0
        for key in fused:
            fused[key] += w * present.get(key, absent)
    return _sorted(fused, order)
