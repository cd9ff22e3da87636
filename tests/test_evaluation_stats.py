"""Win rates with ties half and Wilson 95% intervals: hand values and coverage on simulated coin flips."""

from __future__ import annotations

import random

import pytest

from lit_rlhf.evaluation.stats import wilson_interval, win_rate


def test_wilson_interval_hand_values():
    # z = 1.959964, z² = 3.841459, n = 10: denominator 1 + 0.3841459 = 1.3841459.
    # 5/10: centre (0.5 + 0.1920729) / 1.3841459 = 0.5; half 1.96 * sqrt(0.025 + 0.0096036) / 1.3841459 = 0.26341.
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.23659, abs=1e-5) and high == pytest.approx(0.76341, abs=1e-5)
    # 0/10: centre 0.1920729 / 1.3841459 = 0.138767 = half, so [0, 0.277535] (Wald would give [0, 0]).
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.277535, abs=1e-5)
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(1 - 0.277535, abs=1e-5) and high == 1.0


def test_ties_count_half():
    # 3 wins, 2 ties, 5 losses: (3 + 2/2) / 10 = 0.4, the interval of 4 successes in 10.
    wr = win_rate([1, 1, 1, 0.5, 0.5, 0, 0, 0, 0, 0])
    assert (wr.rate, wr.wins, wr.ties, wr.n) == (0.4, 3, 2, 10)
    assert (wr.low, wr.high) == wilson_interval(4, 10)
    assert win_rate([0.5] * 4).rate == 0.5


def test_bad_outcomes_and_empty_input_are_rejected():
    with pytest.raises(ValueError, match="0, 0.5 or 1"):
        win_rate([1, 0.7])
    with pytest.raises(ValueError, match="at least one comparison"):
        win_rate([])


@pytest.mark.parametrize("p", [0.5, 0.6, 0.85])
def test_interval_covers_the_true_rate_at_the_nominal_rate(p):
    rng = random.Random(0)
    covered = 0
    for _ in range(1000):
        wr = win_rate([float(rng.random() < p) for _ in range(100)])
        covered += wr.low <= p <= wr.high
    assert 0.92 <= covered / 1000 <= 0.98, covered


def test_interval_with_ties_is_conservative():
    # Outcomes 1 / 0.5 / 0 with probabilities 0.5 / 0.2 / 0.3: true win rate 0.5 + 0.2 / 2 = 0.6.
    rng = random.Random(1)
    covered = 0
    for _ in range(1000):
        outcomes = [rng.choices([1.0, 0.5, 0.0], weights=[0.5, 0.2, 0.3])[0] for _ in range(100)]
        wr = win_rate(outcomes)
        covered += wr.low <= 0.6 <= wr.high
    assert 0.93 <= covered / 1000 <= 1.0, covered
