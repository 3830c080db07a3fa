"""The knee search of `uniserve bench service` against a simulated service whose sustainable
rates are exactly those up to a knee: it finds the knee to within the resolution its bisections
promise, and never sends a rate above its cap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from service.bench.load import KneeSearch, knee_rates


def run(search: KneeSearch, knee: float) -> list[tuple[float, bool]]:
    """(rate, sustained) of every step the search runs against a service sustaining <= knee."""
    steps: list[tuple[float, bool]] = []
    rates = knee_rates(search)
    rate = next(rates, None)
    while rate is not None:
        verdict = rate <= knee
        steps.append((rate, verdict))
        try:
            rate = rates.send(verdict)
        except StopIteration:
            rate = None
    return steps


@given(
    knee=st.floats(1.0, 5000.0),
    start=st.floats(10.0, 200.0),
    growth=st.floats(1.1, 3.0),
    refine=st.integers(0, 6),
)
def test_the_knee_is_found_to_the_promised_resolution(
    knee: float, start: float, growth: float, refine: int
) -> None:
    search = KneeSearch(start=start, growth=growth, refine=refine, cap=10_000.0)
    steps = run(search, knee)
    good = [rate for rate, ok in steps if ok]
    assert all(rate <= search.cap for rate, _ in steps)
    if knee < start:  # the first rung already fails: nothing sustained, the floor is reported
        assert good == [] or max(good) <= knee
        return
    best = max(good)
    assert best <= knee
    failed = [i for i, (_, ok) in enumerate(steps) if not ok]
    if not failed:  # the climb stopped at the cap: the next rung would have passed it
        assert best * growth > search.cap
        return
    # the climb brackets the knee in [r, r * growth); each bisection halves the bracket until it
    # is under 2 req/s, so the best sustained rate is within max((growth - 1) r / 2^refine, 2)
    bracket_low = steps[failed[0] - 1][0]
    assert knee - best <= max((growth - 1) * bracket_low / 2**refine, 2.0)


def test_a_service_sustaining_every_rate_is_climbed_to_the_cap_and_not_bisected() -> None:
    steps = run(KneeSearch(start=50.0, growth=2.0, refine=3, cap=1000.0), knee=float("inf"))
    assert steps == [(50.0, True), (100.0, True), (200.0, True), (400.0, True), (800.0, True)]


def test_a_quick_search_with_its_knee_at_700() -> None:
    steps = run(KneeSearch(start=50.0, growth=2.0, refine=3, cap=10_000.0), knee=700.0)
    assert [rate for rate, _ in steps] == [50.0, 100.0, 200.0, 400.0, 800.0, 600.0, 700.0, 750.0]
