"""Quantile sketches and the distance between two distributions computed from them.

A sketch is the 101 quantiles at 0, 0.01, ..., 1 (DuckDB's approx_quantile, a T-Digest: bounded
memory whatever the row count). The distance is the two-sample Kolmogorov-Smirnov statistic,
the largest gap between the two cumulative distribution functions, each rebuilt from its
quantiles by linear interpolation.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

LEVELS = [i / 100 for i in range(101)]


def cdf(quantiles: Sequence[float], x: float) -> float:
    """F(x) of the distribution whose quantiles at LEVELS are `quantiles` (sorted)."""
    if x < quantiles[0]:
        return 0.0
    if x >= quantiles[-1]:
        return 1.0
    # The last level whose quantile is <= x, then interpolate to the next quantile.
    i = bisect.bisect_right(quantiles, x) - 1
    low, high = quantiles[i], quantiles[i + 1]
    step = LEVELS[i + 1] - LEVELS[i]
    if high <= low:
        return LEVELS[i + 1]
    return LEVELS[i] + step * (x - low) / (high - low)


def ks_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """sup |F_a(x) - F_b(x)| over the quantile points of both (where the supremum is reached)."""
    if not a or not b:
        return 0.0
    qa, qb = sorted(a), sorted(b)
    points = sorted(set(qa) | set(qb))
    worst = 0.0
    for x in points:
        worst = max(worst, abs(cdf(qa, x) - cdf(qb, x)))
        # The CDFs are right-continuous: just below a jump the gap can be larger.
        below = x - abs(x) * 1e-12 - 1e-300
        worst = max(worst, abs(cdf(qa, below) - cdf(qb, below)))
    return round(worst, 6)
