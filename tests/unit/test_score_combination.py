"""Combining cross-encoder scores with first-stage scores: hand-computed expectations."""

from __future__ import annotations

import math

import pytest

from services.gateway.score_combination import METHODS, combine_scores

FIRST = [3.0, 2.0, 1.0]  # first-stage order: candidate 0 is best
RERANK = [-1.0, 5.0, 2.0]  # the cross-encoder prefers 1, then 2, then 0


def _order(scores):
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def test_rerank_only_returns_rerank_scores():
    assert combine_scores(FIRST, RERANK, "rerank_only", 0.3) == [-1.0, 5.0, 2.0]


def test_weighted_zscore_hand_computed():
    s = math.sqrt(2 / 3)
    zf = [1 / s, 0.0, -1 / s]
    # RERANK mean 2, deviations -3, 3, 0 -> population std sqrt(6)
    zr = [-3 / math.sqrt(6), 3 / math.sqrt(6), 0.0]
    got = combine_scores(FIRST, RERANK, "weighted_zscore", 0.5)
    assert got == pytest.approx([0.5 * f + 0.5 * r for f, r in zip(zf, zr)])
    assert _order(got) == [1, 0, 2]


def test_weighted_zscore_extreme_weights():
    assert _order(combine_scores(FIRST, RERANK, "weighted_zscore", 1.0)) == [1, 2, 0]
    assert _order(combine_scores(FIRST, RERANK, "weighted_zscore", 0.0)) == [0, 1, 2]


def test_weighted_rrf_hand_computed():
    # first-stage ranks 1,2,3; rerank ranks: cand1 -> 1, cand2 -> 2, cand0 -> 3. k = 60, w = 0.7
    got = combine_scores(FIRST, RERANK, "weighted_rrf", 0.7, rrf_k=60)
    assert got == pytest.approx([0.7 / 63 + 0.3 / 61, 0.7 / 61 + 0.3 / 62, 0.7 / 62 + 0.3 / 63])
    assert _order(got) == [1, 2, 0]


def test_weighted_rrf_rerank_ties_break_by_position():
    got = combine_scores([1.0, 1.0], [4.0, 4.0], "weighted_rrf", 1.0, rrf_k=0)
    assert got == pytest.approx([1.0, 0.5])


def test_constant_scores_normalise_to_zero():
    assert combine_scores([1.0, 1.0], [2.0, 2.0], "weighted_zscore", 0.5) == [0.0, 0.0]
    assert combine_scores([], [], "weighted_zscore", 0.5) == []
    assert combine_scores([7.0], [9.0], "weighted_rrf", 0.5, rrf_k=1) == pytest.approx([0.5])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "borda"},
        {"rerank_weight": 1.5},
        {"rerank_weight": -0.1},
        {"rerank_weight": math.nan},
        {"rrf_k": -1},
    ],
)
def test_rejects_bad_arguments(kwargs):
    args = {"method": "weighted_zscore", "rerank_weight": 0.5, "rrf_k": 60} | kwargs
    with pytest.raises(ValueError):
        combine_scores(FIRST, RERANK, **args)


def test_rejects_length_mismatch():
    with pytest.raises(ValueError):
        combine_scores([1.0, 2.0], [1.0], "rerank_only", 0.5)


def test_methods_listed():
    assert set(METHODS) == {"rerank_only", "weighted_zscore", "weighted_rrf"}
