"""When a Search is reranked: the cascade's policy (no gRPC here).

The cross-encoder is the costliest step of a Search by far on a CPU, and on most queries it
does not change the answer (docs/QUALITY.md, "When reranking pays"). What predicts that it
cannot is visible before it runs: the combination ranks by ``w * z(rerank) + (1 - w) *
z(first stage)``, so when the first-stage leader stands far above the rest of the candidates,
the cross-encoder's vote can rarely overturn it, and reranking the others moves NDCG@10 little.
The signal is that lead, :func:`first_stage_gap`: the gap between the first two first-stage
scores in standard deviations of the top candidates. Nothing else is needed (no extra field
from retrieval, no second model).

Policies (``RerankOptions.policy``, default GATEWAY_RERANK_POLICY):

* ``always``: rerank the top ``candidates`` of every query;
* ``never``: the first-stage ranking;
* ``auto``: on a collection whose fusion check found one of its lists weak (retrieval reports
  it with every Retrieve, services/retrieval/calibration.py), rerank as ``always`` does: there the
  first stage is weaker and the cross-encoder measurably repairs it (+0.006 to +0.017 NDCG@10 at
  depth 10 on SciFact train with one list weakened, docs/QUALITY.md). Elsewhere rerank
  ``GATEWAY_AUTO_RERANK_DEPTH`` candidates (capped by the request's ``candidates``) when the gap
  is at most ``GATEWAY_AUTO_RERANK_MAX_GAP``, else nothing.

Near-tie reranks are a small gain each (docs/QUALITY.md), so under load they must not queue on a
saturated cross-encoder: :func:`admit` serves one from the first stage (``auto_busy``) while the
gateway already has ``GATEWAY_AUTO_RERANK_MAX_IN_FLIGHT`` of them in flight. Weak-list reranks
are not capped (there the cross-encoder repairs the first stage), nor are ``always`` ones (the
caller asked for them).

The thresholds come from settings (services/gateway/config.py); their values were chosen on
SciFact train (scripts/study_cascade.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.errors import InvalidArgument

__all__ = ["POLICIES", "CascadeSettings", "Decision", "admit", "decide", "first_stage_gap"]

#: The policy names (api_names maps the proto enum to them).
POLICIES = ("always", "auto", "never")

#: Reasons a decision reports (the proto's RerankReason, by name).
ALWAYS, NEVER, AUTO_UNCERTAIN, AUTO_CONFIDENT, NO_CANDIDATES, AUTO_WEAK_LIST, AUTO_BUSY = (
    "always", "never", "auto_uncertain", "auto_confident", "no_candidates", "auto_weak_list", "auto_busy")


@dataclass(frozen=True)
class CascadeSettings:
    """The gateway's cascade settings (GATEWAY_RERANK_POLICY, GATEWAY_AUTO_RERANK_*; their values are
    checked where they are declared, services/gateway/config.py)."""

    policy: str
    auto_depth: int
    auto_max_gap: float
    auto_max_in_flight: int  # near-tie reranks at once per gateway (0: no cap)


@dataclass(frozen=True)
class Decision:
    """What the reranking stage does for one Search."""

    policy: str
    depth: int
    reason: str
    signal: float = 0.0


def first_stage_gap(scores: Sequence[float], depth: int) -> float:
    """``(s1 - s2) / std(s1..s_depth)`` over the best-first first-stage ``scores`` (population
    std); ``inf`` for fewer than two candidates (nothing to reorder) or equal scores but a lead."""
    top = [float(s) for s in scores[: max(depth, 2)]]
    if len(top) < 2:
        return math.inf
    mean = math.fsum(top) / len(top)
    std = math.sqrt(math.fsum((s - mean) ** 2 for s in top) / len(top))
    lead = top[0] - top[1]
    if std <= 1e-12 * max(1.0, abs(mean)):
        return 0.0  # all tied: as uncertain as it gets
    return lead / std


def decide(policy: str, candidates: int, scores: Sequence[float], settings: CascadeSettings,
           one_list_weak: bool = False, always_depth: int | None = None) -> Decision:
    """The decision for a query whose first stage returned ``scores`` (best first).

    ``policy`` is the request's (or the setting's) name; ``candidates`` the request's depth
    (``always``) or cap (``auto``); ``one_list_weak`` what retrieval reported of the collection;
    ``always_depth`` what ``always`` would rerank for this request (default: ``candidates``).
    """
    if policy not in POLICIES:
        raise InvalidArgument("rerank.policy", f"unknown rerank policy {policy!r}")
    if not scores:
        return Decision(policy, 0, NO_CANDIDATES)
    if policy == "never":
        return Decision(policy, 0, NEVER)
    if policy == "always":
        return Decision(policy, min(candidates, len(scores)), ALWAYS)
    if one_list_weak:
        return Decision(policy, min(always_depth or candidates, len(scores)), AUTO_WEAK_LIST)
    depth = min(settings.auto_depth, candidates, len(scores))
    gap = first_stage_gap(scores, depth)
    signal = gap if math.isfinite(gap) else 0.0
    if gap <= settings.auto_max_gap:
        return Decision(policy, depth, AUTO_UNCERTAIN, signal)
    return Decision(policy, 0, AUTO_CONFIDENT, signal)


def admit(decision: Decision, in_flight: int, settings: CascadeSettings) -> Decision:
    """``decision``, or depth 0 with reason ``auto_busy`` when it is a near-tie rerank and the
    gateway already has ``settings.auto_max_in_flight`` (> 0) near-tie reranks in flight."""
    cap = settings.auto_max_in_flight
    if decision.reason != AUTO_UNCERTAIN or cap == 0 or in_flight < cap:
        return decision
    return Decision(decision.policy, 0, AUTO_BUSY, decision.signal)
