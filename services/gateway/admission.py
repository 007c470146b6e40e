"""Which calls the gateway takes on: per-caller rate quotas and a fairly shared in-flight cap.

- :class:`RateLimits`: a token bucket per caller and method class (``search``, ``write``,
  ``admin``) with the caller's quota (``rate`` per second, ``burst`` at once). A call finds a
  token or is refused at once with RESOURCE_EXHAUSTED carrying when the next token comes
  (``retry_after_s``, sent as ``google.rpc.RetryInfo``). A reload keeps the buckets whose quota
  did not change, so reloading never refills or empties a caller's bucket.
- :class:`FairShare`: at most ``GATEWAY_MAX_IN_FLIGHT`` unary calls at once, shared among the
  callers that have calls in flight. Below the cap every call is taken. At the cap, a caller
  holding less than its fair share (the cap divided by the callers with calls in flight,
  itself included) is still served, while one at or over its share is shed first: so one
  caller flooding the gateway cannot starve a caller that stays within its share. The cap is
  exceeded only by calls of callers under their share; each holds at most its share, so the
  total stays below twice the cap (in practice the cap plus a few). With one caller (or
  authentication off) this is the plain cap.

No gRPC here; clocks are injectable so the logic is tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from services.common import metrics
from services.common.errors import ResourceExhausted
from services.gateway.callers import CallerBook, Caller, Quota

Clock = Callable[[], float]

#: RetryInfo of a call shed at the in-flight cap: calls finish in a fraction of a second.
SHED_RETRY_AFTER_S = 0.1


class TokenBucket:
    def __init__(self, quota: Quota, clock: Clock = time.monotonic) -> None:
        self.quota = quota
        self._clock = clock
        self.tokens = quota.burst
        self._last = clock()

    def take(self) -> float:
        """0.0 when a token was taken; otherwise the seconds until one is there."""
        now = self._clock()
        self.tokens = min(self.quota.burst, self.tokens + (now - self._last) * self.quota.rate)
        self._last = now
        if self.tokens >= 1.0 - 1e-9:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.quota.rate


class RateLimits:
    """One :class:`TokenBucket` per (caller, method class) that has a quota."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self.refused = 0

    def update(self, book: CallerBook) -> None:
        """After a reload: drop the buckets of callers or quotas that are gone or changed."""
        keep = {}
        for (name, klass), bucket in self._buckets.items():
            caller = book.by_name.get(name)
            if caller is not None and caller.quotas.get(klass) == bucket.quota:
                keep[(name, klass)] = bucket
        self._buckets = keep

    def take(self, caller: Caller, klass: str) -> None:
        """Take a token of ``caller``'s ``klass`` quota, or raise ResourceExhausted with retry advice."""
        quota = caller.quotas.get(klass)
        if quota is None:
            return
        bucket = self._buckets.get((caller.name, klass))
        if bucket is None or bucket.quota != quota:
            bucket = self._buckets[(caller.name, klass)] = TokenBucket(quota, self._clock)
        wait = bucket.take()
        if wait:
            self.refused += 1
            metrics.GATEWAY_CALLER_SHED.labels(caller=caller.label, reason="rate_limit").inc()
            raise ResourceExhausted(
                f"caller {caller.name!r} is over its {klass} quota ({quota.rate:g} requests/s, burst {quota.burst:g}); "
                f"retry in {wait:.2f} s",
                retry_after_s=wait,
            )


class FairShare:
    """The in-flight cap, shared fairly among the callers with calls in flight (0 = no cap)."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self.limit = limit
        self.in_flight = 0
        self.by_caller: dict[str, int] = {}
        self.rejected = 0

    def share(self, name: str) -> float:
        """``name``'s fair share now: the cap over the callers with calls in flight, ``name`` included."""
        active = len(self.by_caller) + (name not in self.by_caller)
        return self.limit / active

    def acquire(self, caller: Caller) -> None:
        name = caller.name
        mine = self.by_caller.get(name, 0)
        if self.limit and self.in_flight >= self.limit and mine + 1 > self.share(name):
            self.rejected += 1
            metrics.GATEWAY_REJECTED_REQUESTS.inc()
            metrics.GATEWAY_CALLER_SHED.labels(caller=caller.label, reason="fair_share").inc()
            others = len(self.by_caller) - (name in self.by_caller)
            shared = f"; caller {name!r} holds {mine}, its fair share with {others} other caller(s) is " \
                     f"{self.share(name):.1f}" if others else ""
            raise ResourceExhausted(
                f"gateway overloaded: {self.in_flight} requests in flight, the limit is {self.limit} "
                f"(GATEWAY_MAX_IN_FLIGHT){shared}; retry with backoff",
                retry_after_s=SHED_RETRY_AFTER_S,
            )
        self.in_flight += 1
        self.by_caller[name] = mine + 1
        metrics.GATEWAY_CALLER_IN_FLIGHT.labels(caller=caller.label).inc()

    def release(self, caller: Caller) -> None:
        self.in_flight -= 1
        left = self.by_caller.get(caller.name, 1) - 1
        if left > 0:
            self.by_caller[caller.name] = left
        else:
            self.by_caller.pop(caller.name, None)
        metrics.GATEWAY_CALLER_IN_FLIGHT.labels(caller=caller.label).dec()
