"""The rerank cascade's decision (services/gateway/cascade.py)."""

from __future__ import annotations

import math

import pytest

from services.common.config import ConfigError
from services.common.errors import InvalidArgument
from services.gateway.cascade import CascadeSettings, Decision, admit, decide, first_stage_gap
from services.gateway.config import GatewayConfig

AUTO = CascadeSettings("auto", auto_depth=10, auto_max_gap=0.5, auto_max_in_flight=1)


def test_gap_is_the_lead_in_standard_deviations_of_the_top_candidates():
    scores = [3.0, 1.0, 1.0, 1.0]
    # mean 1.5, population std sqrt(0.75): the leader is 2 / 0.866 std ahead
    assert first_stage_gap(scores, 4) == pytest.approx(2.0 / math.sqrt(0.75))
    assert first_stage_gap(scores, 2) == pytest.approx(2.0)  # two scores: the lead is two half-ranges
    assert first_stage_gap([1.0, 1.0, 0.5], 3) == 0.0  # a tie at the top
    assert first_stage_gap([2.0, 2.0], 2) == 0.0  # all tied
    assert first_stage_gap([2.0], 10) == math.inf and first_stage_gap([], 10) == math.inf
    # Scale free: the same ranking on another scale has the same gap.
    assert first_stage_gap([30.0, 10.0, 10.0, 10.0], 4) == pytest.approx(first_stage_gap(scores, 4))


def test_always_and_never_ignore_the_signal():
    scores = [5.0, 1.0, 0.9]
    assert decide("always", 20, scores, AUTO) == Decision("always", 3, "always")  # as many as there are
    assert decide("always", 2, scores, AUTO) == Decision("always", 2, "always")
    assert decide("never", 20, scores, AUTO) == Decision("never", 0, "never")
    assert decide("always", 20, [], AUTO) == Decision("always", 0, "no_candidates")


def test_auto_reranks_only_an_uncertain_first_stage_to_its_depth():
    close = [1.0, 0.99, 0.5, 0.4, 0.3]
    far = [5.0, 1.0, 0.9, 0.8, 0.7]
    uncertain = decide("auto", 10, close, AUTO)
    assert (uncertain.depth, uncertain.reason) == (5, "auto_uncertain") and uncertain.signal <= AUTO.auto_max_gap
    confident = decide("auto", 10, far, AUTO)
    assert (confident.depth, confident.reason) == (0, "auto_confident") and confident.signal > AUTO.auto_max_gap
    assert decide("auto", 3, close, AUTO).depth == 3  # the request's candidates cap the depth
    assert decide("auto", 10, [1.0], AUTO) == Decision("auto", 0, "auto_confident", 0.0)  # one candidate: nothing to reorder


def test_the_threshold_decides_at_the_boundary():
    scores = [2.0, 1.0, 0.0]
    gap = first_stage_gap(scores, 10)
    assert decide("auto", 10, scores, CascadeSettings("auto", 10, gap, 1)).depth == 3
    assert decide("auto", 10, scores, CascadeSettings("auto", 10, gap * 0.999, 1)).depth == 0


def test_unknown_policy_and_bad_settings_are_refused():
    with pytest.raises(InvalidArgument) as err:
        decide("sometimes", 10, [1.0, 0.5], AUTO)
    assert err.value.field == "rerank.policy"
    # The settings it is built from are checked where they are declared (services/gateway/config.py).
    for bad in (dict(rerank_policy="sometimes"), dict(auto_rerank_depth=0), dict(auto_rerank_max_gap=-1.0),
                dict(auto_rerank_max_gap=math.nan), dict(auto_rerank_max_in_flight=-1)):
        with pytest.raises(ConfigError):
            GatewayConfig(**bad)


def test_auto_reranks_a_collection_with_a_weak_list_as_always_would():
    far = [5.0, 1.0, 0.9, 0.8, 0.7]  # a confident first stage: auto alone would not rerank it
    assert decide("auto", 5, far, AUTO).depth == 0
    weak = decide("auto", 5, far, AUTO, one_list_weak=True, always_depth=10)
    assert (weak.depth, weak.reason) == (5, "auto_weak_list")  # 10 asked, 5 candidates
    assert decide("auto", 5, far * 3, AUTO, one_list_weak=True, always_depth=10).depth == 10
    assert decide("never", 5, far, AUTO, one_list_weak=True).depth == 0
    assert decide("always", 3, far, AUTO, one_list_weak=True).reason == "always"


def test_a_near_tie_is_served_from_the_first_stage_while_the_cap_is_in_flight():
    close = [1.0, 0.99, 0.5, 0.4, 0.3]
    uncertain = decide("auto", 10, close, AUTO)
    assert admit(uncertain, 0, AUTO) is uncertain  # under the cap: reranked
    busy = admit(uncertain, 1, AUTO)
    assert busy == Decision("auto", 0, "auto_busy", uncertain.signal)  # the signal stays reported
    two = CascadeSettings("auto", 10, 0.5, 2)
    assert admit(uncertain, 1, two) is uncertain and admit(uncertain, 2, two).reason == "auto_busy"
    uncapped = CascadeSettings("auto", 10, 0.5, 0)
    assert admit(uncertain, 1000, uncapped) is uncertain  # 0: no cap


def test_the_cap_leaves_every_other_decision_alone():
    far = [5.0, 1.0, 0.9, 0.8, 0.7]
    for decision in (decide("always", 5, far, AUTO), decide("never", 5, far, AUTO), decide("auto", 5, far, AUTO),
                     decide("auto", 5, far, AUTO, one_list_weak=True, always_depth=10), decide("auto", 5, [], AUTO)):
        assert admit(decision, 99, AUTO) is decision, decision
