"""services.gateway.admission: per-caller token buckets with retry advice, and the in-flight cap
shared fairly (counts, a fake clock: no sleeping)."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from services.common.errors import ResourceExhausted
from services.gateway.admission import SHED_RETRY_AFTER_S, FairShare, RateLimits
from services.gateway.callers import SCOPES, Caller, CallerBook, Quota


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def caller(name: str, **quotas: Quota) -> Caller:
    return Caller(name, frozenset(SCOPES), quotas=quotas)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_token_bucket_allows_its_burst_then_its_rate_and_says_when_to_retry():
    clock = Clock()
    limits = RateLimits(clock)
    noisy = caller("noisy-bucket", search=Quota(rate=2.0, burst=3.0))
    for _ in range(3):
        limits.take(noisy, "search")
    before = sample("search_gateway_caller_shed_total", caller="noisy-bucket", reason="rate_limit")
    with pytest.raises(ResourceExhausted) as info:
        limits.take(noisy, "search")
    assert info.value.retry_after_s == pytest.approx(0.5)
    assert "over its search quota (2 requests/s, burst 3)" in info.value.message
    assert sample("search_gateway_caller_shed_total", caller="noisy-bucket", reason="rate_limit") - before == 1
    clock.now = 0.5
    limits.take(noisy, "search")  # one token came back
    limits.take(noisy, "write")  # no write quota: not limited
    # Over 10 s at 10x its rate, the caller gets its rate (plus the burst it started with).
    taken = 0
    for step in range(1, 201):
        clock.now = 0.5 + step * 0.05
        try:
            limits.take(noisy, "search")
            taken += 1
        except ResourceExhausted:
            pass
    assert taken == 20


def test_a_reload_keeps_the_buckets_of_unchanged_quotas():
    clock = Clock()
    limits = RateLimits(clock)
    steady, changed = caller("steady", search=Quota(1, 1)), caller("changed", search=Quota(1, 1))
    limits.take(steady, "search")
    limits.take(changed, "search")
    new_changed = caller("changed", search=Quota(5, 5))
    limits.update(CallerBook([steady, new_changed]))
    with pytest.raises(ResourceExhausted):
        limits.take(steady, "search")  # still empty: a reload does not refill it
    limits.take(new_changed, "search")  # a new quota starts with a full bucket


def test_one_caller_alone_gets_the_plain_cap():
    share = FairShare(2)
    alone = caller("alone")
    share.acquire(alone)
    share.acquire(alone)
    with pytest.raises(ResourceExhausted, match=r"limit is 2 \(GATEWAY_MAX_IN_FLIGHT\)") as info:
        share.acquire(alone)
    assert info.value.retry_after_s == SHED_RETRY_AFTER_S
    share.release(alone)
    share.acquire(alone)
    assert share.in_flight == 2 and share.rejected == 1


def test_at_the_cap_a_caller_within_its_share_is_served_and_the_one_over_it_is_shed():
    share = FairShare(4)
    noisy, quiet = caller("noisy"), caller("quiet")
    for _ in range(4):
        share.acquire(noisy)  # alone, the noisy caller may fill the cap
    share.acquire(quiet)  # at the cap, but the quiet caller holds nothing of its share (2)
    with pytest.raises(ResourceExhausted, match=r"caller 'noisy' holds 4, its fair share with 1 other caller\(s\) is 2.0"):
        share.acquire(noisy)
    share.acquire(quiet)  # 1 < 2: still within its share
    with pytest.raises(ResourceExhausted):
        share.acquire(quiet)  # 2 is its share: now it is shed too
    for _ in range(2):
        share.release(noisy)
    with pytest.raises(ResourceExhausted):
        share.acquire(noisy)  # 4 in flight (2 + 2) = the cap, and it holds its share
    share.release(quiet)
    share.acquire(noisy)  # below the cap: anyone
    assert share.by_caller == {"noisy": 3, "quiet": 1} and share.in_flight == 4


def test_a_steady_caller_is_never_shed_while_a_noisy_one_floods():
    """Counts, not times: a noisy caller keeps 12 calls waiting; a quiet one sends one call at a
    time. Calls finish in arrival order (oldest first), one per step."""
    share = FairShare(4)
    noisy, quiet = caller("flood"), caller("steady")
    running: list[Caller] = []
    served = {"flood": 0, "steady": 0}
    shed = {"flood": 0, "steady": 0}
    for _ in range(200):
        for who in [noisy] * 3 + [quiet] * (quiet not in running):
            try:
                share.acquire(who)
                running.append(who)
                served[who.name] += 1
            except ResourceExhausted:
                shed[who.name] += 1
        done = running.pop(0)
        share.release(done)
    assert shed["steady"] == 0 and served["steady"] > 0
    assert shed["flood"] > 0
    assert share.in_flight <= 4 + 2  # over the cap only by what callers under their share hold


def test_zero_is_no_cap():
    share = FairShare(0)
    for _ in range(1000):
        share.acquire(caller("many"))
    assert share.in_flight == 1000
