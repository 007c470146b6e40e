"""The raw query-embedding limit around each service step of `searchctl bench e2e`, and when a
ratio to it may be printed.

The limit is the bi-encoder alone in the bench process: one single-threaded ONNX Runtime
session run by one thread per core, on real queries the load never sends (held out), with
the model's query prefix; one query per call (``one``) and batches of :data:`BATCH` queries
(``batched``). It is measured right before and right after every service step
(:func:`bracketed`), because this machine's speed moves with whatever else runs on it: a
limit measured minutes away from the step it divides says more about the machine than about
the service. When the two measurements differ by more than :data:`TOLERANCE`, the machine
changed speed during the step and :func:`ratio_or_refusal` prints why instead of a ratio.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from services.cli.bench.harness import _bi_encoder, _retrieval_config, measure_limit_cpu

__all__ = ["BATCH", "TOLERANCE", "LimitProbe", "RawLimit", "bracketed", "describe_limits", "ratio_or_refusal", "step_ratios"]

#: The batched limit's batch size (queries per call).
BATCH = 4
#: The largest spread (larger / smaller - 1) between the limits before and after a step for which
#: a ratio is printed.
TOLERANCE = 0.15

T = TypeVar("T")


@dataclass(frozen=True)
class RawLimit:
    """One measurement of the raw limit: queries/s and CPU ms per query, and the load average then."""

    one: float
    one_cpu_ms: float
    batched: float
    batched_cpu_ms: float
    load_avg: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class LimitProbe:
    """Measures :class:`RawLimit` on ``queries`` (tokenized once, with the query prefix)."""

    def __init__(self, queries: Sequence[str], workers: int | None = None) -> None:
        from services.common.hardware import available_cpus

        self.workers = workers or available_cpus()
        self.encoder = _bi_encoder(_retrieval_config(), 1)
        self.encodings = self.encoder.tokenize_queries(list(queries))

    def measure(self) -> RawLimit:
        rates = measure_limit_cpu(self.encoder.infer, self.encodings, [1, BATCH], self.workers)
        return RawLimit(rates[1][0], rates[1][1], rates[BATCH][0], rates[BATCH][1], round(os.getloadavg()[0], 2))


def bracketed(measure: Callable[[], RawLimit], step: Callable[[], T]) -> tuple[RawLimit, T, RawLimit]:
    """``(limit before, step(), limit after)``: the limit measured right before and right after the step."""
    before = measure()
    result = step()
    after = measure()
    return before, result, after


def ratio_or_refusal(service_qps: float, before: float, after: float, tolerance: float = TOLERANCE) -> tuple[float | None, str]:
    """The service's rate over the raw limit, or None and why not.

    Refused when either limit is not a positive number or when they differ by more than
    ``tolerance`` (the machine changed speed during the step). Otherwise the ratio is taken
    against the larger of the two (the less flattering one), as `bench rerank` does.
    """
    if not all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in (before, after)):
        return None, f"no ratio: the raw limit was not measured (before {before}, after {after})"
    spread = max(before, after) / min(before, after) - 1.0
    if spread > tolerance:
        return None, (f"no ratio: the raw limit moved {spread:.0%} during the step ({before:.1f} -> {after:.1f}/s, more than "
                      f"{tolerance:.0%}): the machine's speed changed, so a ratio would measure the machine, not the service")
    limit = max(before, after)
    return service_qps / limit, f"{service_qps / limit:.2f} of {limit:.1f}/s (the larger of {before:.1f} before and {after:.1f} after)"


def describe_limits(before: RawLimit, after: RawLimit) -> str:
    return (f"    raw limit before / after: one query per call {before.one:.1f} / {after.one:.1f} q/s "
            f"({before.one_cpu_ms:.2f} / {after.one_cpu_ms:.2f} CPU ms each), batches of {BATCH} "
            f"{before.batched:.1f} / {after.batched:.1f} q/s; load average {before.load_avg:.2f} / {after.load_avg:.2f}")


def step_ratios(service_qps: float, before: RawLimit, after: RawLimit, usable: bool,
                why_not: str = "") -> tuple[dict[str, Any], list[str]]:
    """The JSON and the printed lines of one step's ratios to both limits (``usable``: the step
    met its objective; else ``why_not`` says why there is no ratio)."""
    out: dict[str, Any] = {"limit_before": before.as_dict(), "limit_after": after.as_dict()}
    lines = [describe_limits(before, after)]
    for key, label in (("one", "one query per call"), ("batched", f"batches of {BATCH}")):
        if not usable:
            out[f"ratio_{key}"], text = None, f"no ratio: {why_not}"
        else:
            out[f"ratio_{key}"], text = ratio_or_refusal(service_qps, getattr(before, key), getattr(after, key))
        if out[f"ratio_{key}"] is None:
            out[f"refused_{key}"] = text
        lines.append(f"    ratio to the raw limit, {label}: {text}")
    return out, lines

