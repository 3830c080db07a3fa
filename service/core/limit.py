"""How many compute requests may be in progress at once: a fixed number, or one sized from what
this process is measured to complete.

`ShedMiddleware` (`service.api.shedding`) calls `try_enter()` when a compute request arrives
(False: answer 429 at once) and `leave(started, now)` when it has been answered, with the two
`perf_counter` readings. Both are O(1); the adaptive limit does its arithmetic once per
measurement window.

`AdaptiveLimit`'s law. Answers are measured in windows of about half a second: the window's
completion rate `X` (answers/s), their mean latency `W` (entry to answer), and whether the limit
was reached in it. A window in which the limit was not reached changes nothing: an unused
limit is neither raised (it would admit a burst unchecked later) nor lowered by latency it did
not cause. In a window in which it was reached:

- **Little's-law size.** `capacity` is the highest `X` of such windows, and the limit is never
  below `capacity * budget`: what this process has been seen to complete within `budget` (the
  target, unless raised below). That is the rule the old constant was set by ("what one
  process completes in 50 ms"), measured at run time, so it sheds at the knee of whatever
  machine it runs on: under overload the limit settles where `W` is the target.
- **Gradient.** `W` well under the target (under half): the limit grows by `target / W`, at most
  x1.5 and at least +1 per window. Over the target: it shrinks by `target / W`, at most x0.5
  per window, down to the Little's-law size. In between it holds.
- **Checked cuts.** Over the target at the Little's-law size is ambiguous: the machine got
  slower (fewer requests in progress would complete as many: the latency is queueing, and the
  limit should fall) or the latency comes from elsewhere (a co-tenant, the event loop's work on
  rejections: a cut would only lose throughput, and cut after cut would collapse it). So after
  three such windows in a row the limit runs one window at 4/5 of its size. If the completion
  rate held (9/10 of the windows before, or more), the cut stands: a raised budget is lowered
  by 1/5, or else the capacity estimate (to no less than 4/5 of what it was), and the next cut
  is checked after one more such window. If the rate fell with the limit, the latency is not
  the limit's to fix: the budget grows by 5/4, and more requests in progress keep the
  throughput at the price of latency the limit cannot remove. A cut costing less than half its
  size in throughput stands, so with latency from outside the limit ends near the point where
  throughput starts to follow it (Kleinrock's optimum of throughput / latency); a wrong verdict
  (noise) moves it by one step, which the next checks undo.

The limit thus falls below the Little's-law size of the demonstrated completion rate only after
a check showed that fewer requests in progress complete about as many, which keeps latency from
outside from collapsing throughput (a law that only follows latency does: the simulated
co-tenant in `tests/core/test_limit.py` takes one to under a fifth of its throughput), or when
the event loop runs late:

- **The loop's lateness.** Every request, a 429 included, waits for the event loop before
  anything of it runs, and under overload the loop runs late in bursts: a batch of answers
  completing at once, a crowd of admitted requests being parsed. So at twice the sustainable
  rate a 429 took 10-18 ms p99 while the limit sat at its Little's-law size, and a limit of 16
  instead of about 40 gave 3 ms 429s and as many answers (BENCHMARKS.md, "Fast 429s need an
  idle loop"). `note_lag(seconds)` takes how late a periodic tick of the loop ran
  (`service.api.shedding.watch_loop`). In a window in which the limit refused more than
  `SHEDDING` of the requests and more than `LATE_SHARE` of the ticks ran later than
  `lag_budget`, a lag ceiling drops to `LAG_CUT` x the limit, and the limit never exceeds it;
  in one in which the limit was reached with no late tick, the ceiling grows by `LAG_GROW`.
  Near the knee, where the limit refuses a few requests now and then, the loop's lateness is
  the admitted requests' own latency, which the target governs; heeding it there too shed
  requests the process could serve (a full run lost its knee to 40 429s in 6,940 requests,
  BENCHMARKS.md). The ceiling never falls below `LAG_FLOOR` of the Little's-law size (what
  completes the demonstrated rate in a third of the budget), so lateness the limit cannot
  remove (rejections alone filling the loop far beyond twice the load, a co-tenant taking the
  CPU) costs a bounded share of the answers instead of collapsing them: with only the
  bandwidth-delay size as a floor (the capacity times the lowest mean latency seen), at about
  four times the load the answers fell to two thirds (BENCHMARKS.md).

Tested there on simulated slow and fast batching services (the knee of each, found by trying
fixed limits), with latency added from outside, a machine slowed under load, load that comes and
goes, and a loop that runs late in proportion to the batches it answers, or from outside.
"""

from __future__ import annotations

GROW = 1.5  # the most the limit grows in one window
WELL_UNDER = 0.5  # ...which it does when the mean latency is under this fraction of the target
SHRINK = 0.5  # the most the gradient lowers it in one window
CUT = 0.8  # a check runs one window at this fraction of the limit
HELD = 0.9  # ...and the cut stands when the completion rate kept this fraction
RAISE = 1.25  # the budget's step when a check shows the latency is not queueing
LATE_SHARE = 0.02  # a window's loop ran late when more of its ticks than this were late
LAG_CUT = 0.8  # ...and the lag ceiling drops to this fraction of the limit
LAG_GROW = 1.1  # a window with no late tick raises the lag ceiling by this factor
LAG_FLOOR = 1 / 3  # ...which never falls below this fraction of the Little's-law size
MIN_TICKS = 20  # a window with fewer ticks of the loop says nothing of its lateness
SHEDDING = 0.05  # the ceiling drops only in a window refusing more than this share of requests


class PendingLimit:
    """A fixed limit (`UNISERVE_ADMISSION=fixed`): at most `limit` compute requests in progress;
    one per app state, shared by the public and admin listeners."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the pending-request limit must be >= 1, got {limit}")
        self.limit = limit
        self.pending = 0

    def try_enter(self) -> bool:
        if self.pending >= self.limit:
            return False
        self.pending += 1
        return True

    def leave(self, started: float, now: float) -> None:
        """One request answered (`started`, `now`: its entry and answer, in seconds)."""
        self.pending -= 1

    def note_lag(self, seconds: float) -> None:
        """How late a tick of the event loop ran; a fixed limit does not use it."""

    def describe(self) -> str:
        return f"UNISERVE_MAX_PENDING_REQUESTS={self.limit}"


class AdaptiveLimit:
    """A limit sized from the completion rate and latency this process measures (the law is in
    the module docstring): `target` is the mean latency (seconds) of admitted requests it sizes
    for, `initial` where it starts, [`lowest`, `highest`] its bounds; `window` seconds (and at
    least `min_answers` answers) per measurement; `lag_budget` how late (seconds) the event
    loop may run (None: its lateness is not used)."""

    def __init__(
        self,
        target: float,
        *,
        initial: int = 40,
        lowest: int = 4,
        highest: int = 1024,
        window: float = 0.5,
        min_answers: int = 20,
        check_every: int = 3,
        lag_budget: float | None = 0.003,
    ) -> None:
        if not target > 0 or not window >= 0 or min_answers < 1 or check_every < 1:
            raise ValueError(
                f"need target > 0, window >= 0, min_answers >= 1 and check_every >= 1, got "
                f"{target}, {window}, {min_answers}, {check_every}"
            )
        if lag_budget is not None and not lag_budget > 0:
            raise ValueError(f"need lag_budget > 0 (or None), got {lag_budget}")
        if not 1 <= lowest <= initial <= highest:
            raise ValueError(
                f"need 1 <= lowest <= initial <= highest, got {lowest}, {initial}, {highest}"
            )
        self.target = target
        self.lowest = lowest
        self.highest = highest
        self.window = window
        self.min_answers = min_answers
        self.check_every = check_every
        self.lag_budget = lag_budget
        self.pending = 0
        self.value = float(initial)  # the limit, fractional between windows
        self.capacity = 0.0  # answers/s: the highest rate demonstrated with the limit reached
        self.budget = target  # seconds of latency the Little's-law size allows (>= target)
        self._start: float | None = None  # when the current window began
        self._answers = 0
        self._latency = 0.0  # summed over the window's answers
        self._reached = False  # the limit was reached in the window
        self._over: list[float] = []  # rates of the windows in a row over the target at the size
        self._check: tuple[float, float] | None = None  # a check runs: (rate before, limit)
        self._wait = check_every  # windows over the target before the next check
        self.lag_ceiling = float(highest)  # the limit's ceiling while the loop runs late
        self._ticks = 0  # ticks of the loop in the current window
        self._late = 0  # ...of which ran later than lag_budget
        self._refused = 0  # requests refused in the current window

    @property
    def limit(self) -> int:
        return int(self.value)

    def try_enter(self) -> bool:
        if self.pending >= self.value:
            self._reached = True
            self._refused += 1
            return False
        self.pending += 1
        if self.pending >= self.value:
            self._reached = True
        return True

    def leave(self, started: float, now: float) -> None:
        """One request answered (`started`, `now`: its entry and answer, in seconds)."""
        self.pending -= 1
        if self._start is None:
            self._start = started
        self._answers += 1
        self._latency += now - started
        seconds = now - self._start
        if self._answers >= self.min_answers and seconds >= self.window:
            self._close(self._answers / max(seconds, 1e-9), self._latency / self._answers, seconds)
            self._start, self._answers, self._latency, self._reached = now, 0, 0.0, False
            self._ticks = self._late = self._refused = 0

    def note_lag(self, seconds: float) -> None:
        """How late (seconds) a periodic tick of the event loop ran."""
        self._ticks += 1
        if self.lag_budget is not None and seconds > self.lag_budget:
            self._late += 1

    def describe(self) -> str:
        return (
            f"UNISERVE_ADMISSION=adaptive, the limit now {self.limit} for a mean latency of "
            f"{1000 * self.target:g} ms"
        )

    def _bounded(self, value: float) -> float:
        """`value` within the bounds and under the lag ceiling."""
        return min(float(self.highest), max(float(self.lowest), min(value, self.lag_ceiling)))

    def _follow_lag(self, seconds: float, size: float) -> None:
        """Move the lag ceiling by the lateness of a window of `seconds` in which the limit was
        reached (one spanning a pause in the traffic says nothing of it); `size` is the
        Little's-law size."""
        if self.lag_budget is None or self._ticks < MIN_TICKS or seconds > 2 * self.window:
            return
        shedding = self._refused > SHEDDING * (self._refused + self._answers)
        if self._late > LATE_SHARE * self._ticks and shedding:
            self.lag_ceiling = max(float(self.lowest), LAG_FLOOR * size, LAG_CUT * self.value)
        elif self._late == 0:
            self.lag_ceiling = min(float(self.highest), LAG_GROW * self.lag_ceiling)

    def _close(self, rate: float, latency: float, seconds: float) -> None:
        """The end of a window of `seconds`: `rate` answers/s, `latency` their mean (seconds)."""
        if self._check is not None:
            # a check window the limit did not bind in, or that spans a pause in the traffic,
            # says nothing of the cut
            self._conclude(rate if self._reached and seconds <= 2 * self.window else None)
            return
        if not self._reached:
            self._over.clear()
            return  # the limit did not bind: the window says nothing about it
        self.capacity = max(self.capacity, rate)
        size = self.capacity * self.budget  # Little's law: what completes within the budget
        self._follow_lag(seconds, size)
        value = self.value
        if latency <= WELL_UNDER * self.target:
            value = max(value * min(self.target / max(latency, 1e-9), GROW), value + 1)
        elif latency > self.target:
            value = value * max(self.target / latency, SHRINK)
        self.value = self._bounded(max(value, size))
        if latency <= self.target or self.value > size * (1 + 1e-9) or self.lag_ceiling < size:
            self._over.clear()
            return
        self._over.append(rate)  # over the target at the Little's-law size: check a cut
        if len(self._over) >= self._wait:
            self._check = (sum(self._over) / len(self._over), self.value)
            self._over.clear()
            self.value = self._bounded(CUT * self.value)

    def _conclude(self, rate: float | None) -> None:
        """The end of a check window (run at CUT x the limit, `rate` answers/s in it; None: no
        verdict): keep the cut or undo it."""
        assert self._check is not None
        before, limit = self._check
        self._check = None
        self._wait = self.check_every
        if rate is None:
            self.value = limit
        elif rate >= HELD * before:  # as many answers with fewer in progress: it was queueing
            self._wait = 1  # the next cut is checked as soon as the latency is over again
            if self.budget > self.target:
                self.budget = max(self.target, CUT * self.budget)
            else:
                self.capacity = max(CUT * self.capacity, before, rate)
            self.value = self._bounded(min(limit, self.capacity * self.budget))
        else:  # the rate fell with the limit: the latency is not queueing the limit controls
            ceiling = self.highest / max(self.capacity, 1e-9)
            self.budget = min(RAISE * self.budget, max(ceiling, self.target))
            self.value = self._bounded(max(limit, self.capacity * self.budget))


Limit = PendingLimit | AdaptiveLimit
