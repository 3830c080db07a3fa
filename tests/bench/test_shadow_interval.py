"""The shadow benchmark's p99 ratio and its bootstrap interval over rounds, on synthetic
latencies (no servers, no timing)."""

from __future__ import annotations

import numpy as np
import pytest

from service.bench.shadow import p99_ratio_interval


def rounds(seed: int, n: int = 30, per_round: int = 400) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.lognormal(0.7, 0.4, per_round) for _ in range(n)]


def test_a_server_slower_by_a_factor_is_measured_at_that_factor() -> None:
    base = rounds(1)
    ratio, low, high = p99_ratio_interval(base, [r * 1.3 for r in base], draws=300)
    assert ratio == pytest.approx(1.3)
    assert low == pytest.approx(1.3) and high == pytest.approx(1.3)  # every draw pairs rounds


def test_the_interval_covers_no_difference_between_two_draws_of_one_distribution() -> None:
    ratio, low, high = p99_ratio_interval(rounds(1), rounds(2), draws=300)
    assert low < 1.0 < high
    assert low <= ratio <= high


def test_slow_rounds_widen_the_interval() -> None:
    """A few rounds whose tail is four times longer (the machine's slow spells) make the
    interval wider than on steady rounds: the drift is in it, not hidden."""
    steady = p99_ratio_interval(rounds(1), rounds(2), draws=300)
    spells = rounds(2)
    for r in (3, 11, 19):
        spells[r] = spells[r] * 4
    spelled = p99_ratio_interval(rounds(1), spells, draws=300)
    assert spelled[2] - spelled[1] > 2 * (steady[2] - steady[1])


def test_unpaired_rounds_are_refused() -> None:
    with pytest.raises(ValueError, match="same number"):
        p99_ratio_interval(rounds(1, n=3), rounds(2, n=4))
    with pytest.raises(ValueError, match="same number"):
        p99_ratio_interval([], [])
