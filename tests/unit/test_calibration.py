"""The fusion weight a collection's self-retrieval check gives (services/retrieval/calibration.py)."""

from __future__ import annotations

import pytest

from services.retrieval import calibration as cal
from services.retrieval.calibration import Calibration, dense_weight_for, pseudo_query

DEFAULT = 0.6


def test_the_reference_collection_keeps_the_default_weight():
    assert dense_weight_for(cal.REFERENCE_DENSE, cal.REFERENCE_SPARSE, DEFAULT) == DEFAULT


@pytest.mark.parametrize("dense, sparse", [(0.615, 0.995), (0.6, 1.0), (0.79, 0.7), (0.9, 0.95)])
def test_inside_the_dead_zone_the_default_stands(dense, sparse):
    # Both lists find their documents about as well as on the reference (within a factor 1.5).
    assert dense_weight_for(dense, sparse, DEFAULT) == DEFAULT


def test_a_weak_sparse_list_moves_the_weight_to_dense():
    # SciFact train with BM25 over each document's first 12 words (scripts/study_cascade.py).
    w = dense_weight_for(0.79, 0.455, DEFAULT)
    assert 0.85 <= w <= cal.WEIGHT_BOUNDS[1]


def test_a_weak_dense_list_moves_the_weight_to_sparse():
    w = dense_weight_for(0.335, 0.995, DEFAULT)
    assert cal.WEIGHT_BOUNDS[0] <= w < 0.3


def test_the_weight_is_monotonic_in_each_recall_and_bounded():
    sparse = [dense_weight_for(0.79, s / 20, DEFAULT) for s in range(0, 21)]
    assert sparse == sorted(sparse, reverse=True)
    dense = [dense_weight_for(d / 20, 1.0, DEFAULT) for d in range(0, 21)]
    assert dense == sorted(dense)
    assert min(sparse + dense) >= cal.WEIGHT_BOUNDS[0] and max(sparse + dense) <= cal.WEIGHT_BOUNDS[1]
    assert dense_weight_for(0.0, 0.0, DEFAULT) == DEFAULT  # nothing measured: nothing learned


def test_pseudo_query_is_a_stable_window_of_the_text():
    text = " ".join(f"w{i}" for i in range(40))
    q = pseudo_query(text, "point-1")
    assert q == pseudo_query(text, "point-1") and len(q.split()) == cal.WINDOW_WORDS and q in text
    offsets = {pseudo_query(text, f"point-{i}").split()[0] for i in range(50)}
    assert len(offsets) > 10  # the offset depends on the point
    assert pseudo_query("too short", "p") is None
    assert pseudo_query(" ".join(["x"] * cal.WINDOW_WORDS), "p") == " ".join(["x"] * cal.WINDOW_WORDS)


def test_calibration_round_trips_through_metadata_and_ignores_other_checks():
    c = Calibration(0.7, 0.8, 0.5, 256, 1000, 1.5)
    assert Calibration.from_metadata(c.to_metadata()) == c
    assert Calibration.from_metadata({**c.to_metadata(), "check_version": cal.CHECK_VERSION + 1}) is None
    assert Calibration.from_metadata({"dense_weight": 0.7}) is None
    assert Calibration.from_metadata(None) is None


def test_one_list_weak_is_outside_the_dead_zone():
    from services.retrieval.calibration import one_list_weak

    def measured(dense, sparse):
        return Calibration(dense_weight_for(dense, sparse, DEFAULT), dense, sparse, 256, 1000, 0.0)

    assert not one_list_weak(None)
    assert not one_list_weak(measured(cal.REFERENCE_DENSE, cal.REFERENCE_SPARSE))
    assert not one_list_weak(measured(0.615, 0.995))  # Cranfield: inside the dead zone
    assert one_list_weak(measured(0.79, 0.455)) and one_list_weak(measured(0.335, 0.995))
    # Weak exactly where the weight leaves the default.
    for dense in (0.2, 0.4, 0.5, 0.6, 0.79, 0.9):
        for sparse in (0.3, 0.5, 0.7, 0.9, 1.0):
            m = measured(dense, sparse)
            assert one_list_weak(m) == (m.dense_weight != DEFAULT), (dense, sparse)
