"""Fusion of ranked lists: hand-computed expectations."""

from __future__ import annotations

import math

import pytest

from services.retrieval.fusion import weighted_rrf, weighted_zscore, zscores

DENSE = [("a", 0.9), ("b", 0.8), ("c", 0.7)]
SPARSE = [("c", 12.0), ("d", 6.0), ("a", 3.0)]


def _approx(pairs):
    return [(k, pytest.approx(v)) for k, v in pairs]


# ----------------------------------------------------------------------------- RRF


def test_rrf_unweighted_hand_computed():
    # a: 1/61 + 1/63, b: 1/62, c: 1/63 + 1/61, d: 1/62.  a and c tie -> first seen (a).
    fused = weighted_rrf([DENSE, SPARSE], k=60)
    assert fused == _approx([("a", 1 / 61 + 1 / 63), ("c", 1 / 63 + 1 / 61), ("b", 1 / 62), ("d", 1 / 62)])
    assert [k for k, _ in fused] == ["a", "c", "b", "d"]


def test_rrf_weights_change_the_order():
    # w = (0.2, 0.8), k = 1: a 0.2/2 + 0.8/4 = 0.3, b 0.2/3 = 0.0667, c 0.2/4 + 0.8/2 = 0.45, d 0.8/3 = 0.2667
    fused = weighted_rrf([DENSE, SPARSE], [0.2, 0.8], k=1)
    assert fused == _approx([("c", 0.45), ("a", 0.3), ("d", 0.8 / 3), ("b", 0.2 / 3)])


def test_rrf_uses_positions_not_scores():
    same_order_other_scores = [("a", 100.0), ("b", -5.0), ("c", -6.0)]
    assert weighted_rrf([DENSE, SPARSE]) == weighted_rrf([same_order_other_scores, SPARSE])


def test_rrf_zero_weight_list_only_adds_keys():
    fused = weighted_rrf([DENSE, SPARSE], [1.0, 0.0], k=60)
    assert [k for k, _ in fused] == ["a", "b", "c", "d"]
    assert dict(fused)["d"] == 0.0


def test_rrf_duplicate_key_counts_once_at_best_rank():
    fused = weighted_rrf([[("x", 3.0), ("y", 2.0), ("x", 1.0)]], k=0)
    assert fused == _approx([("x", 1.0), ("y", 0.5)])


def test_rrf_tie_break_is_first_appearance_across_lists():
    # Same rank in different lists: list 0's key was seen first.
    fused = weighted_rrf([[("p", 1.0)], [("q", 1.0)]])
    assert [k for k, _ in fused] == ["p", "q"]
    fused = weighted_rrf([[("q", 1.0)], [("p", 1.0)]])
    assert [k for k, _ in fused] == ["q", "p"]


def test_rrf_empty_inputs():
    assert weighted_rrf([]) == []
    assert weighted_rrf([[], []]) == []
    assert weighted_rrf([[], [("a", 1.0)]], k=0) == [("a", 1.0)]


@pytest.mark.parametrize("weights", [[1.0], [1.0, 2.0, 3.0], [-0.1, 1.0], [math.nan, 1.0]])
def test_rejects_bad_weights(weights):
    with pytest.raises(ValueError):
        weighted_rrf([DENSE, SPARSE], weights)
    with pytest.raises(ValueError):
        weighted_zscore([DENSE, SPARSE], weights)


def test_rrf_rejects_negative_k():
    with pytest.raises(ValueError):
        weighted_rrf([DENSE], k=-1)


# ----------------------------------------------------------------------------- z-score


def test_zscores_population_std():
    # mean 2, population std sqrt(2/3)
    s = math.sqrt(2 / 3)
    assert zscores([1.0, 2.0, 3.0]) == pytest.approx([-1 / s, 0.0, 1 / s])
    assert zscores([5.0, 5.0]) == [0.0, 0.0]
    assert zscores([7.0]) == [0.0]
    assert zscores([]) == []


def test_weighted_zscore_hand_computed_missing_gets_list_minimum():
    s = math.sqrt(2 / 3)  # both lists below have population std sqrt(2/3) in their units
    dense = [("a", 3.0), ("b", 2.0), ("c", 1.0)]  # z: a +1/s, b 0, c -1/s
    sparse = [("c", 30.0), ("d", 20.0), ("e", 10.0)]  # z: c +1/s, d 0, e -1/s
    fused = dict(weighted_zscore([dense, sparse], [0.5, 0.5]))
    # a: 0.5*(1/s) + 0.5*min(sparse)=-1/s -> 0 ; b: 0 + (-0.5/s) ; c: -0.5/s + 0.5/s = 0
    # d: 0.5*(-1/s) + 0 ; e: 0.5*(-1/s) + 0.5*(-1/s) = -1/s
    assert fused == {
        "a": pytest.approx(0.0),
        "b": pytest.approx(-0.5 / s),
        "c": pytest.approx(0.0),
        "d": pytest.approx(-0.5 / s),
        "e": pytest.approx(-1 / s),
    }
    order = [k for k, _ in weighted_zscore([dense, sparse], [0.5, 0.5])]
    # ties a/c and b/d broken by first appearance (a before c, b before d).
    assert order == ["a", "c", "b", "d", "e"]


def test_weighted_zscore_missing_zero_rule():
    s = math.sqrt(2 / 3)
    dense = [("a", 3.0), ("b", 2.0), ("c", 1.0)]
    sparse = [("c", 30.0), ("d", 20.0), ("e", 10.0)]
    fused = dict(weighted_zscore([dense, sparse], [0.5, 0.5], missing="zero"))
    assert fused["a"] == pytest.approx(0.5 / s)
    assert fused["e"] == pytest.approx(-0.5 / s)
    with pytest.raises(ValueError):
        weighted_zscore([dense], missing="mean")


def test_weighted_zscore_is_scale_invariant_per_list():
    scaled = [(k, 1000.0 * v - 7.0) for k, v in SPARSE]
    assert weighted_zscore([DENSE, SPARSE], [0.3, 0.7]) == _approx(weighted_zscore([DENSE, scaled], [0.3, 0.7]))


def test_weighted_zscore_weight_one_follows_that_list():
    fused = weighted_zscore([DENSE, SPARSE], [0.0, 1.0])
    assert [k for k, _ in fused][:3] == ["c", "d", "a"]


def test_weighted_zscore_default_weights_and_empty_list():
    assert weighted_zscore([DENSE, []]) == _approx(weighted_zscore([DENSE]))
    assert weighted_zscore([]) == []
    # a single-item list normalises to 0 for its member and its minimum (0) for the rest
    assert weighted_zscore([[("x", 5.0)], [("y", 1.0)]]) == [("x", 0.0), ("y", 0.0)]
