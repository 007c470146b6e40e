"""The raw limit around each `bench e2e` step (services/cli/bench/limits.py): when a ratio is
printed, what it is taken against, and that the limit brackets the step."""

from __future__ import annotations

import math

import pytest

from services.cli.bench.e2e import held_out, search_result_hit_line
from services.cli.bench.limits import TOLERANCE, LimitProbe, RawLimit, bracketed, ratio_or_refusal, step_ratios


def limit(one: float, batched: float, load: float = 0.5) -> RawLimit:
    return RawLimit(one=one, one_cpu_ms=3.8, batched=batched, batched_cpu_ms=2.2, load_avg=load)


def test_ratio_is_taken_against_the_larger_limit_when_they_agree():
    ratio, text = ratio_or_refusal(250.0, 500.0, 560.0)
    assert ratio == pytest.approx(250.0 / 560.0)
    assert "500.0" in text and "560.0" in text
    # the order of before and after does not matter
    assert ratio_or_refusal(250.0, 560.0, 500.0)[0] == pytest.approx(250.0 / 560.0)


@pytest.mark.parametrize("before, after", [(500.0, 500.0 * (1 + TOLERANCE + 0.01)), (500.0 * (1 + TOLERANCE + 0.01), 500.0),
                                           (526.0, 160.0)])
def test_ratio_is_refused_when_the_limits_differ_by_more_than_the_tolerance(before, after):
    ratio, text = ratio_or_refusal(191.0, before, after)
    assert ratio is None
    assert text.startswith("no ratio") and "machine" in text
    assert f"{before:.1f}" in text and f"{after:.1f}" in text


def test_ratio_is_printed_just_inside_the_tolerance():
    ratio, _ = ratio_or_refusal(100.0, 500.0, 500.0 * (1 + TOLERANCE - 0.01))
    assert ratio is not None and ratio == pytest.approx(100.0 / (500.0 * (1 + TOLERANCE - 0.01)))


@pytest.mark.parametrize("before, after", [(0.0, 500.0), (500.0, math.nan), (-1.0, -1.0), (500.0, math.inf)])
def test_ratio_is_refused_without_two_measured_limits(before, after):
    ratio, text = ratio_or_refusal(100.0, before, after)
    assert ratio is None and "not measured" in text


def test_step_ratios_judge_each_limit_on_its_own_pair():
    # batch-1 limits agree, the batched ones do not: one ratio printed, the other refused
    ratios, lines = step_ratios(200.0, limit(500.0, 900.0), limit(520.0, 600.0), usable=True)
    assert ratios["ratio_one"] == pytest.approx(200.0 / 520.0)
    assert ratios["ratio_batched"] is None and "moved" in ratios["refused_batched"]
    assert "refused_one" not in ratios
    assert ratios["limit_before"]["one"] == 500.0 and ratios["limit_after"]["batched"] == 600.0
    assert any("load average 0.50 / 0.50" in line for line in lines)


def test_a_step_that_missed_its_objective_gets_no_ratio_and_says_why():
    ratios, lines = step_ratios(200.0, limit(500.0, 900.0), limit(500.0, 900.0), usable=False, why_not="p95 400 ms is over")
    assert ratios["ratio_one"] is None and ratios["ratio_batched"] is None
    assert "p95 400 ms" in ratios["refused_one"] and any("p95 400 ms" in line for line in lines)


def test_the_limit_is_measured_right_before_and_right_after_the_step():
    calls: list[str] = []
    measured = iter([limit(500.0, 900.0), limit(510.0, 910.0)])

    def measure() -> RawLimit:
        calls.append("limit")
        return next(measured)

    def step() -> str:
        calls.append("step")
        return "served"

    before, result, after = bracketed(measure, step)
    assert calls == ["limit", "step", "limit"]
    assert (before.one, result, after.one) == (500.0, "served", 510.0)


def test_held_out_queries_are_never_sent_by_the_load():
    queries = [f"q{i}" for i in range(100)]
    load, kept = held_out(queries, 30)
    assert len(kept) == 30 and len(load) == 70 and not set(load) & set(kept)
    load, kept = held_out(queries[:10], 384)  # a small set keeps half for the load
    assert len(kept) == 5 and len(load) == 5


def test_search_result_hit_line():
    assert "0.0%" in search_result_hit_line({"cache_hit_rates": {"search_result": 0.0, "query_embedding": 0.0}})
    assert "off" in search_result_hit_line({"cache_hit_rates": {}})


def test_limit_probe_measures_the_real_model_one_per_call_and_batched():
    probe = LimitProbe(["what causes fever", "does vitamin d prevent fractures", "gene expression in tumours",
                        "statins and muscle pain", "sleep and memory", "antibiotic resistance", "insulin signalling",
                        "air pollution and asthma"], workers=2)
    assert probe.encodings[0].tokens[1:4] == ["represent", "this", "sentence"]  # the query prefix
    measured = probe.measure()
    assert measured.one > 0 and measured.batched > 0 and measured.one_cpu_ms > 0 and measured.batched_cpu_ms > 0
    assert measured.load_avg >= 0
