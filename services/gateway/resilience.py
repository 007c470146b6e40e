"""The gateway's defences against slow, failing or overloaded parts.

- :class:`RetryBudget`: a token bucket that caps retries at a fraction of requests, so
  retrying cannot multiply the load on a service that is already failing.
- :class:`RetryPolicy` / :func:`call_with_retries`: tenacity retries for idempotent calls
  only, on UNAVAILABLE / RESOURCE_EXHAUSTED, with exponential backoff and full jitter,
  stopped by the attempt limit, by the request's deadline and by the retry budget.
- :class:`CircuitBreaker`: after consecutive failures a downstream is not called at all
  for a cool-down; then one probe call decides whether it closes again.

The cap on concurrent requests (``GATEWAY_MAX_IN_FLIGHT``), shared fairly among callers, is in
admission.py with the callers' quotas, applied by guard.py.

All take an injectable clock so their logic is unit-tested without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from services.common import metrics
from services.common.errors import ServiceError, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]

#: Status codes a retry can fix: the call was refused (not executed) or shed.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass(eq=False)
class RetryBudget:
    """Token bucket: each request deposits ``ratio`` tokens, each retry withdraws one.

    Over time retries are at most ``ratio`` of requests (plus ``min_per_second``, so a
    quiet service can still retry a rare failure). The bucket holds at most ``capacity``
    tokens, which bounds a burst of retries when an outage starts.
    """

    ratio: float = 0.1
    min_per_second: float = 1.0
    capacity: float = 10.0
    clock: Clock = time.monotonic
    target: str = "downstream"
    retries: int = field(default=0, init=False)
    refused: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.ratio < 0 or self.min_per_second < 0 or self.capacity < 1:
            raise ValueError("ratio and min_per_second must be >= 0 and capacity >= 1")
        self._tokens = self.capacity
        self._last = self.clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.min_per_second)
        self._last = now

    @property
    def tokens(self) -> float:
        with self._lock:
            self._refill()
            return self._tokens

    def deposit(self) -> None:
        """One request started."""
        with self._lock:
            self._refill()
            self._tokens = min(self.capacity, self._tokens + self.ratio)

    def try_withdraw(self) -> bool:
        """Take a token for one retry; False (and no retry) when the bucket is empty."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0 - 1e-9:  # ten deposits of 0.1 make a whole token
                self._tokens -= 1.0
                self.retries += 1
                metrics.GATEWAY_RETRIES.labels(target=self.target, outcome="retried").inc()
                return True
            self.refused += 1
            metrics.GATEWAY_RETRIES.labels(target=self.target, outcome="budget_exhausted").inc()
            return False


@dataclass(frozen=True)
class RetryPolicy:
    """How an idempotent call is retried (see :func:`call_with_retries`)."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    #: Do not start an attempt with less time than this left in the request's budget.
    min_attempt_s: float = 0.05


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, ServiceError) and getattr(exc, "downstream_code", None) in RETRYABLE_CODES


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    budget: RetryBudget,
    time_left: Callable[[], float],
    describe: str = "call",
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run ``attempt`` until it succeeds or a stop condition holds; re-raise the last error.

    Stops (in this order): the error is not retryable; ``policy.max_attempts`` reached; the
    backoff would leave less than ``policy.min_attempt_s`` of ``time_left()``; the retry
    budget has no token. Only a retry that will happen takes a token.
    """
    budget.deposit()
    # Fast path: the first attempt outside tenacity (it costs ~8% of the gateway's CPU per call,
    # docs/BENCHMARKS.md). A retryable failure is handed to tenacity as its first attempt's
    # outcome, so stop conditions, backoff and logging are exactly those of the loop below.
    try:
        return await attempt()
    except BaseException as exc:  # noqa: BLE001 - re-raised at once unless retryable
        if not is_retryable(exc):
            raise
        first_error: BaseException | None = exc

    async def resumed() -> T:
        nonlocal first_error
        if first_error is not None:
            error, first_error = first_error, None
            raise error
        return await attempt()

    def stop(state: RetryCallState) -> bool:
        if state.attempt_number >= policy.max_attempts:
            return True
        if time_left() - state.upcoming_sleep < policy.min_attempt_s:
            return True
        return not budget.try_withdraw()

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info(
            "retrying",
            extra={"call": describe, "attempt": state.attempt_number, "sleep_s": round(state.upcoming_sleep, 3),
                   "error": getattr(exc, "message", str(exc))},
        )

    retrying = AsyncRetrying(
        sleep=sleep,
        retry=retry_if_exception(is_retryable),
        stop=stop,
        wait=wait_exponential_jitter(multiplier=policy.initial_backoff_s, max=policy.max_backoff_s, jitter=policy.initial_backoff_s),
        before_sleep=before_sleep,
        reraise=True,
    )
    return await retrying(resumed)


class CircuitOpen(Unavailable):
    """The breaker refuses the call without trying it."""


class CircuitBreaker:
    """closed -> (``failure_threshold`` consecutive failures) -> open -> (``cooldown_s``) ->
    half-open: one probe call at a time; its success closes, its failure re-opens.

    Use :meth:`allow` before a call and report the outcome with :meth:`success`,
    :meth:`failure` or :meth:`neutral` (an answer that says nothing about health, such as
    an overload rejection or the caller's own mistake).
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(self, name: str, failure_threshold: int = 5, cooldown_s: float = 5.0, clock: Clock = time.monotonic) -> None:
        if failure_threshold < 1 or cooldown_s < 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown_s >= 0")
        self.name = name
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = self.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.opened_count = 0
        self._open_gauge = metrics.GATEWAY_CIRCUIT_OPEN.labels(target=name)
        self._open_gauge.set(0)

    @property
    def state(self) -> str:
        if self._state == self.OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            return self.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May a call go through now? In half-open, only one probe is let through at a time."""
        state = self.state
        if state == self.CLOSED:
            return True
        if state == self.HALF_OPEN and not self._probing:
            self._state = self.HALF_OPEN
            self._probing = True
            log.info("circuit half-open: probing", extra={"target": self.name})
            return True
        return False

    def success(self) -> None:
        if self._state != self.CLOSED:
            log.info("circuit closed", extra={"target": self.name})
        self._state, self._failures, self._probing = self.CLOSED, 0, False
        self._open_gauge.set(0)

    def failure(self) -> None:
        self._failures += 1
        if self._state == self.HALF_OPEN or (self._state == self.CLOSED and self._failures >= self.failure_threshold):
            self._trip()
        self._probing = False

    def neutral(self) -> None:
        self._probing = False

    def _trip(self) -> None:
        self._state, self._opened_at, self._probing = self.OPEN, self._clock(), False
        self.opened_count += 1
        self._open_gauge.set(1)
        log.warning(
            "circuit open",
            extra={"target": self.name, "consecutive_failures": self._failures, "cooldown_s": self.cooldown_s},
        )
