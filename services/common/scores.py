"""Score normalisation shared by retrieval's fusion and the gateway's score combination."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["zscores"]


def zscores(scores: Sequence[float]) -> list[float]:
    """``(s - mean) / std`` with the population std; all zeros when std is 0 (or 1 item)."""
    n = len(scores)
    if n == 0:
        return []
    mean = math.fsum(scores) / n
    std = math.sqrt(math.fsum((s - mean) ** 2 for s in scores) / n)
    if std <= 1e-12 * max(1.0, abs(mean)):
        return [0.0] * n
    return [(s - mean) / std for s in scores]
