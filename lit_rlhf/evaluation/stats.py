"""Win rates with ties counted half, and their 95% intervals. Pure Python: no torch, no models.

Interval: the **Wilson score interval** (Wilson 1927) on ``p = (wins + ties / 2) / n``. Why Wilson and not the
alternatives:

* the normal ("Wald") interval ``p ± 1.96 sqrt(p(1-p)/n)`` under-covers badly at small ``n`` and near 0 or 1, which is
  exactly where a strong policy's win rate lands (and collapses to zero width at p = 0 or 1);
* a bootstrap needs a random generator and thousands of resamples, and at small ``n`` it under-covers like Wald;
* Wilson is closed-form, deterministic, never leaves [0, 1], and its coverage is close to nominal from n ≈ 10 on.

Ties: counting a tie as half a win makes each outcome a value in {0, 0.5, 1} whose variance is at most that of a
coin flip with the same mean (``Var = p(1-p) - t/4`` for a tie share ``t``), so the Wilson interval, which assumes
coin flips, is exact without ties and conservative with them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

OUTCOMES = (0.0, 0.5, 1.0)
"""What a judge may return for one comparison: 0 (second better), 0.5 (tie), 1 (first better)."""


@dataclass(frozen=True)
class WinRate:
    """A win rate and its interval.

    Attributes:
        rate: ``(wins + ties / 2) / n``.
        low: Lower end of the interval.
        high: Upper end of the interval.
        n: Number of comparisons.
        wins: Comparisons the first response won.
        ties: Comparisons judged equal.
        confidence: The interval's nominal coverage.
    """

    rate: float
    low: float
    high: float
    n: int
    wins: int
    ties: int
    confidence: float = 0.95


@functools.cache
def z_value(confidence: float) -> float:
    """The two-sided standard-normal quantile: 1.95996... for 0.95."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n`` (``successes`` may be fractional: ties count half).

    ``centre = (p + z²/2n) / (1 + z²/n)``, ``half = z sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)``.

    Returns:
        ``(low, high)``; exactly 0 (or 1) at 0 (or n) successes, where the formula gives it up to round-off.
    """
    if n < 1:
        raise ValueError(f"a win rate needs at least one comparison, got n={n}")
    if not 0.0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    z = z_value(confidence)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def win_rate(outcomes: Sequence[float], confidence: float = 0.95) -> WinRate:
    """Win rate of the first response over the second, ties counted half, with a Wilson interval.

    Args:
        outcomes: One judgement per comparison: 1 (first better), 0 (second better) or 0.5 (tie).
        confidence: Nominal coverage of the interval.
    """
    bad = sorted({o for o in outcomes if o not in OUTCOMES})
    if bad:
        raise ValueError(f"judge outcomes must be 0, 0.5 or 1; got {bad[:5]}")
    n = len(outcomes)
    wins = sum(1 for o in outcomes if o == 1.0)
    ties = sum(1 for o in outcomes if o == 0.5)
    successes = wins + ties / 2
    low, high = wilson_interval(successes, n, confidence)
    return WinRate(rate=successes / n, low=low, high=high, n=n, wins=wins, ties=ties, confidence=confidence)


__all__ = ["OUTCOMES", "WinRate", "wilson_interval", "win_rate", "z_value"]
