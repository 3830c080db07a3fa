"""The pending-request limits (`service.core.limit`) against a simulated service: requests
arrive at random (Poisson, seeded), the limit admits or refuses them, and the admitted ones
queue for a batching worker whose batch takes `per_batch + per_item * size` seconds, plus
`overhead` seconds outside the queue (reading, answering). Latency grows with the requests let
in, as in uniserve; the "fast" machine is the "slow" one 1.6x faster, as two machines of one
kind here differed. The knee, the limit at which the mean latency reaches the target, is found
for each by trying fixed limits, and the adaptive limit is checked against it. Where a `Loop` is
given, the event loop is simulated too: answering a batch keeps it busy in proportion to the
batch, each 429 a little, and a tick every 2 ms (and each refused request) waits for it. Simulated
time only: nothing here waits or reads a clock."""

from __future__ import annotations

import functools
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

import service.core.limit as limit_module
from service.core.limit import LAG_FLOOR, LATE_SHARE, AdaptiveLimit, Limit, PendingLimit

TARGET = 0.05  # seconds: the mean latency the adaptive limit is sized for (the default)


@dataclass(frozen=True)
class Machine:
    per_batch: float  # seconds per batched call
    per_item: float  # seconds per request in it
    overhead: float  # seconds per request outside the queue (half before it, half after)
    max_batch: int = 64

    @property
    def capacity(self) -> float:
        """Requests/s at full batches."""
        return self.max_batch / (self.per_batch + self.per_item * self.max_batch)

    def faster(self, factor: float) -> Machine:
        return Machine(
            self.per_batch / factor, self.per_item / factor, self.overhead / factor, self.max_batch
        )


@dataclass(frozen=True)
class Loop:
    """The event loop: busy `per_answer` seconds per request of a batch that completes (its
    answers are sent in one burst), `per_refusal` per 429; `outside(t)` seconds of lateness
    from elsewhere (a co-tenant). A tick every `tick` seconds reports how late it ran."""

    per_answer: float = 0.00015
    per_refusal: float = 0.00005
    tick: float = 0.002
    outside: Callable[[float], float] = lambda t: 0.0


SLOW = Machine(per_batch=0.004, per_item=0.0012, overhead=0.003)  # 792/s at full batches
FAST = SLOW.faster(1.6)  # 1,267/s
MACHINES = {"slow": SLOW, "fast": FAST}


@dataclass
class Run:
    answers: list[tuple[float, float]] = field(default_factory=list)  # (answered at, latency)
    refused: list[float] = field(default_factory=list)  # arrival times
    limits: list[tuple[float, int]] = field(default_factory=list)  # (time, limit), sampled
    ticks: list[tuple[float, float]] = field(default_factory=list)  # (time, lateness)
    waits: list[tuple[float, float]] = field(default_factory=list)  # (time, a 429's loop wait)

    def rate(self, start: float, end: float) -> float:
        return sum(start <= t < end for t, _ in self.answers) / (end - start)

    def latency(self, start: float, end: float) -> float:
        """Mean latency of the requests answered in [start, end)."""
        seconds = [w for t, w in self.answers if start <= t < end]
        return sum(seconds) / len(seconds)

    def refusals(self, start: float, end: float) -> int:
        return sum(start <= t < end for t in self.refused)

    def late_share(self, start: float, end: float, budget: float = 0.003) -> float:
        """The share of the loop's ticks in [start, end) that ran later than `budget`."""
        late = [lag > budget for t, lag in self.ticks if start <= t < end]
        return sum(late) / len(late)

    def wait_p99(self, start: float, end: float) -> float:
        """The 99th percentile of how long the 429s in [start, end) waited for the loop."""
        waits = sorted(w for t, w in self.waits if start <= t < end)
        return waits[int(0.99 * (len(waits) - 1))]

    def limit(self, start: float, end: float) -> tuple[int, int]:
        """The lowest and highest limit in force in [start, end)."""
        seen = [limit for t, limit in self.limits if start <= t < end]
        return min(seen), max(seen)


def simulate(
    limit: Limit,
    machine: Machine,
    phases: list[tuple[float, float]],
    *,
    outside: Callable[[float], float] = lambda t: 0.0,
    slowdown: Callable[[float], float] = lambda t: 1.0,
    loop: Loop | None = None,
    seed: int = 0,
) -> Run:
    """`phases`: (seconds, requests/s) of Poisson arrivals, one after the other. At time t an
    admitted request spends `outside(t)` seconds more outside the queue (latency that more or
    fewer requests in progress do not change: a co-tenant, the network) and a batch takes
    `slowdown(t)` times longer (the machine is slower)."""
    rng = random.Random(seed)
    events: list[tuple[float, int, int, object]] = []  # (time, order, kind, payload)

    def at(t: float, kind: int, payload: object = None) -> None:
        heapq.heappush(events, (t, len(events) + rng.random(), kind, payload))

    ARRIVE, QUEUE, BATCH_DONE, ANSWER, TICK = range(5)
    now = 0.0
    for seconds, rate in phases:
        end = now + seconds
        while (now := now + rng.expovariate(rate)) < end:
            at(now, ARRIVE)
        now = end
    if loop is not None:
        for i in range(int(now / loop.tick)):
            at(i * loop.tick, TICK)
    busy_until = 0.0  # the loop is busy with earlier work until then
    queue: list[float] = []  # entry times of the admitted requests waiting for a batch
    busy = False
    run = Run()
    sampled = -1.0

    def start_batch(t: float) -> None:
        nonlocal busy
        batch = queue[: machine.max_batch]
        del queue[: machine.max_batch]
        busy = True
        took = (machine.per_batch + machine.per_item * len(batch)) * slowdown(t)
        at(t + took, BATCH_DONE, batch)

    while events:
        t, _, kind, payload = heapq.heappop(events)
        if t - sampled >= 0.1:
            run.limits.append((t, limit.limit))
            sampled = t
        if kind == TICK:
            assert loop is not None
            late = max(0.0, busy_until - t) + loop.outside(t)
            limit.note_lag(late)
            run.ticks.append((t, late))
        elif kind == ARRIVE:
            if limit.try_enter():
                at(t + machine.overhead / 2 + outside(t), QUEUE, t)
            else:
                run.refused.append(t)
                if loop is not None:
                    run.waits.append((t, max(0.0, busy_until - t) + loop.outside(t)))
                    busy_until = max(busy_until, t) + loop.per_refusal
        elif kind == QUEUE:
            queue.append(payload)  # type: ignore[arg-type]
            if not busy:
                start_batch(t)
        elif kind == BATCH_DONE:
            busy = False
            if loop is not None:
                busy_until = max(busy_until, t) + loop.per_answer * len(payload)  # type: ignore[arg-type]
            for entered in payload:  # type: ignore[attr-defined]
                at(t + machine.overhead / 2, ANSWER, entered)
            if queue:
                start_batch(t)
        else:
            limit.leave(payload, t)  # type: ignore[arg-type]
            run.answers.append((t, t - payload))  # type: ignore[operator]
    return run


class LatencyOnlyLimit(AdaptiveLimit):
    """The reference a robust law is compared with: a window in which the limit was reached
    scales it by target / latency (within x0.5 and x1.5), with no floor and no check."""

    def _close(self, rate: float, latency: float, seconds: float) -> None:
        if self._reached:
            factor = min(1.5, max(0.5, self.target / latency))
            self.value = self._bounded(self.value * factor)


@functools.cache
def knee(machine: Machine, slowdown: float = 1.0) -> int:
    """The smallest fixed limit at which the mean latency under overload reaches TARGET."""
    slowed = Machine(machine.per_batch * slowdown, machine.per_item * slowdown, machine.overhead)
    low, high = 1, 512  # latency(low) < TARGET <= latency(high)
    while high - low > 1:
        mid = (low + high) // 2
        run = simulate(PendingLimit(mid), slowed, [(4.0, 2 * machine.capacity)])
        if run.latency(1.0, 4.0) >= TARGET:
            high = mid
        else:
            low = mid
    return high


def test_fixed_limit_admits_up_to_its_limit() -> None:
    limit = PendingLimit(2)
    assert limit.try_enter() and limit.try_enter()
    assert not limit.try_enter()  # a refused request is not counted
    assert limit.pending == 2
    limit.leave(0.0, 1.0)
    assert limit.try_enter()
    with pytest.raises(ValueError, match="got 0"):
        PendingLimit(0)


def test_adaptive_limit_refuses_bad_parameters() -> None:
    with pytest.raises(ValueError, match="got 0"):
        AdaptiveLimit(0.0)
    with pytest.raises(ValueError, match="got 8, 4, 1024"):
        AdaptiveLimit(TARGET, lowest=8, initial=4)


@pytest.mark.parametrize("name", list(MACHINES))
def test_the_limit_settles_at_the_knee_of_a_slow_and_of_a_fast_machine(name: str) -> None:
    """At twice its capacity each machine's limit settles within 15% of its own knee, serving
    at least 97% of what the knee's fixed limit serves at a mean latency within 10% of the
    target; one default fits both (the knees differ 1.6x)."""
    machine = MACHINES[name]
    adaptive = AdaptiveLimit(TARGET)
    run = simulate(adaptive, machine, [(20.0, 2 * machine.capacity)])
    at_knee = simulate(PendingLimit(knee(machine)), machine, [(20.0, 2 * machine.capacity)])
    low, high = run.limit(10.0, 20.0)
    assert 0.85 * knee(machine) <= low <= high <= 1.15 * knee(machine), (knee(machine), low, high)
    assert run.rate(10.0, 20.0) >= 0.97 * at_knee.rate(10.0, 20.0)
    assert run.latency(10.0, 20.0) <= 1.1 * TARGET
    assert knee(FAST) >= 1.4 * knee(SLOW)


def test_the_old_constant_sheds_the_fast_machine_below_its_knee() -> None:
    """At 85% of the fast machine's capacity, the old default (40, the slow machine's knee)
    refuses over 1% of load the machine can serve within the target; the adaptive limit,
    raised as it is reached, a tenth as much."""
    rate = 0.85 * FAST.capacity
    fixed = simulate(PendingLimit(40), FAST, [(15.0, rate)])
    adaptive = simulate(AdaptiveLimit(TARGET), FAST, [(15.0, rate)])
    assert adaptive.latency(5.0, 15.0) < TARGET
    assert fixed.refusals(5.0, 15.0) > 0.01 * rate * 10
    assert adaptive.refusals(5.0, 15.0) < 0.1 * fixed.refusals(5.0, 15.0)


@pytest.mark.parametrize("name", list(MACHINES))
def test_latency_from_outside_does_not_collapse_the_limit(name: str) -> None:
    """Overloaded (1.5x), then for 20 s every request spends 100 ms more outside the queue (a
    co-tenant): latency above the target whatever the limit, throughput still there for
    enough requests in progress. A law that only follows latency collapses to a fraction of
    the throughput; this limit rises instead, keeps at least 70% of the throughput it had, and
    comes back to the knee once the delay is gone."""
    machine = MACHINES[name]
    outside = lambda t: 0.1 if 10.0 <= t < 30.0 else 0.0  # noqa: E731
    phases = [(40.0, 1.5 * machine.capacity)]
    run = simulate(AdaptiveLimit(TARGET), machine, phases, outside=outside)
    latency_only = simulate(LatencyOnlyLimit(TARGET), machine, phases, outside=outside)
    before = run.rate(5.0, 10.0)
    assert latency_only.rate(20.0, 30.0) < 0.2 * before  # the collapse this law avoids
    assert run.rate(20.0, 30.0) >= 0.7 * before
    assert run.limit(20.0, 30.0)[0] >= run.limit(5.0, 10.0)[1]  # raised, not lowered
    low, high = run.limit(35.0, 40.0)
    assert 0.85 * knee(machine) <= low <= high <= 1.15 * knee(machine), (knee(machine), low, high)


@pytest.mark.parametrize("name", list(MACHINES))
def test_a_machine_slowed_under_load_gets_its_new_knee(name: str) -> None:
    """Overloaded, then for 20 s each batch takes 1.6x longer (a co-tenant takes CPU): fewer
    requests in progress complete as many, so checked cuts take the limit down to the slowed
    machine's knee; it rises back to the first one afterwards."""
    machine = MACHINES[name]
    slowdown = lambda t: 1.6 if 10.0 <= t < 30.0 else 1.0  # noqa: E731
    phases = [(40.0, 1.5 * machine.capacity)]
    run = simulate(AdaptiveLimit(TARGET), machine, phases, slowdown=slowdown)
    low, high = run.limit(20.0, 30.0)
    slowed = knee(machine, 1.6)
    assert 0.8 * slowed <= low <= high <= 1.15 * slowed, (slowed, low, high)
    assert run.latency(20.0, 30.0) <= 1.1 * TARGET
    low, high = run.limit(35.0, 40.0)
    assert 0.85 * knee(machine) <= low <= high <= 1.15 * knee(machine), (knee(machine), low, high)


def test_the_limit_recovers_when_load_drops() -> None:
    """Overload with latency from outside (the limit raised), then half the capacity: no
    request is refused and latency is back under the target; overload again: the knee."""
    machine = FAST
    outside = lambda t: 0.1 if t < 20.0 else 0.0  # noqa: E731
    phases = [
        (20.0, 2 * machine.capacity),
        (10.0, 0.5 * machine.capacity),
        (15.0, 2 * machine.capacity),
    ]
    run = simulate(AdaptiveLimit(TARGET), machine, phases, outside=outside)
    assert run.refusals(21.0, 30.0) == 0
    assert run.latency(21.0, 30.0) < TARGET
    low, high = run.limit(38.0, 45.0)
    assert 0.85 * knee(machine) <= low <= high <= 1.15 * knee(machine), (knee(machine), low, high)


def test_an_unreached_limit_does_not_move() -> None:
    """Below capacity the limit is never reached: neither its growth nor latency from outside
    (above the target) moves it, and nothing is refused."""
    outside = lambda t: 0.1 if t >= 10.0 else 0.0  # noqa: E731
    adaptive = AdaptiveLimit(TARGET, initial=64)
    run = simulate(adaptive, SLOW, [(20.0, 0.3 * SLOW.capacity)], outside=outside)
    assert run.latency(12.0, 20.0) > 2 * TARGET
    assert run.limit(0.0, 20.0) == (64, 64)
    assert not run.refused


def test_a_loop_running_late_lowers_the_limit_until_it_is_on_time() -> None:
    """The fast machine at twice its capacity, its loop busy 0.15 ms per answer of a batch: at
    the Little's-law size the answer bursts make the loop late (over 3 ms) in more than 2% of
    its ticks, and a 429 waits longer. Watching the loop, the limit steps down until it is on
    time, the 429s wait less, and at least 90% of the answers remain."""
    phases = [(20.0, 2 * FAST.capacity)]
    watched = simulate(AdaptiveLimit(TARGET), FAST, phases, loop=Loop())
    unwatched = simulate(AdaptiveLimit(TARGET, lag_budget=None), FAST, phases, loop=Loop())
    assert unwatched.late_share(10.0, 20.0) > 2 * LATE_SHARE
    assert watched.late_share(10.0, 20.0) <= LATE_SHARE
    assert watched.limit(10.0, 20.0)[1] < unwatched.limit(10.0, 20.0)[0]
    assert watched.wait_p99(10.0, 20.0) < 0.8 * unwatched.wait_p99(10.0, 20.0)
    assert watched.rate(10.0, 20.0) >= 0.9 * unwatched.rate(10.0, 20.0)


@pytest.mark.parametrize("name", list(MACHINES))
def test_lateness_from_outside_lowers_the_limit_to_its_floor_and_no_further(name: str) -> None:
    """Overloaded (1.5x), the loop 5 ms late a tenth of the time whatever is admitted (a
    co-tenant): the limit cannot make it on time, so it goes down to a third of its
    Little's-law size (a little under a third of the knee) and stays there, keeping at least
    70% of the answers; when the co-tenant is gone it comes back to where it settles without
    one."""
    machine = MACHINES[name]
    co_tenant = Loop(outside=lambda t: 0.005 if t < 20.0 and int(t * 50) % 10 == 0 else 0.0)
    run = simulate(AdaptiveLimit(TARGET), machine, [(40.0, 1.5 * machine.capacity)], loop=co_tenant)
    assert run.late_share(10.0, 20.0) > 2 * LATE_SHARE  # nothing the limit does removes it
    floor = LAG_FLOOR * knee(machine)
    low, high = run.limit(10.0, 20.0)
    assert 0.7 * floor <= low <= high <= min(low + 1, floor + 1), (floor, low, high)
    assert run.rate(10.0, 20.0) >= 0.7 * run.rate(35.0, 40.0)
    alone = simulate(AdaptiveLimit(TARGET), machine, [(40.0, 1.5 * machine.capacity)], loop=Loop())
    settled = alone.limit(35.0, 40.0)
    low, high = run.limit(35.0, 40.0)
    assert 0.85 * settled[0] <= low <= high <= 1.15 * settled[1], (settled, low, high)


def test_lateness_is_only_heeded_while_the_limit_is_reached() -> None:
    """Under capacity the loop's lateness (from outside) moves nothing; a fixed limit ignores
    it; a budget must be positive."""
    late = Loop(outside=lambda t: 0.01)
    adaptive = AdaptiveLimit(TARGET, initial=64)
    run = simulate(adaptive, SLOW, [(10.0, 0.3 * SLOW.capacity)], loop=late)
    assert run.late_share(0.0, 10.0) == 1.0
    assert run.limit(0.0, 10.0) == (64, 64) and adaptive.lag_ceiling == adaptive.highest
    fixed = PendingLimit(8)
    fixed.note_lag(1.0)
    assert fixed.limit == 8
    with pytest.raises(ValueError, match="lag_budget > 0"):
        AdaptiveLimit(TARGET, lag_budget=0.0)


def test_near_the_knee_lateness_refuses_nothing_more(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 85% of the fast machine's capacity the limit is reached now and then, and the loop
    runs late in some windows, from the admitted requests' own answers: the watched limit
    refuses exactly what the unwatched one does, since it heeds lateness only in windows that
    refuse more than SHEDDING of the requests. Heeding it in every window where the limit was
    reached refuses several times as many."""
    phases = [(20.0, 0.85 * FAST.capacity)]
    watched = simulate(AdaptiveLimit(TARGET), FAST, phases, loop=Loop())
    unwatched = simulate(AdaptiveLimit(TARGET, lag_budget=None), FAST, phases, loop=Loop())
    assert watched.refusals(5.0, 20.0) == unwatched.refusals(5.0, 20.0)
    monkeypatch.setattr(limit_module, "SHEDDING", 0.0)
    ungated = simulate(AdaptiveLimit(TARGET), FAST, phases, loop=Loop())
    assert ungated.refusals(5.0, 20.0) > 5 * unwatched.refusals(5.0, 20.0)
