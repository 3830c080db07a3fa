"""A circuit breaker: stop calling a backend that keeps failing, probe it again later.

Three states. **closed**: calls go through; `failures` consecutive failures open the breaker.
**open**: calls are refused at once (no network, no timeout paid) for `reset_seconds`.
**half_open**: the cool-down is over; exactly one caller is let through as a probe while the
others are still refused. The probe's success closes the breaker, its failure opens it again for
another `reset_seconds`. A probe abandoned without a verdict (its caller was cancelled) frees
the slot for the next caller.

The caller reports each admitted call's outcome: `allow()` before the call, then exactly one of
`record_success()`, `record_failure()` or `abandon()`. Time comes from an injectable monotonic
clock, so tests need no sleeping. Not thread-safe: use it from one event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


# Gauge values of the states (`uniserve_redis_breaker_state`).
STATE_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class CircuitBreaker:
    def __init__(
        self,
        failures: int,
        reset_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        if failures < 1 or reset_seconds <= 0:
            raise ValueError(
                f"failures ({failures}) must be >= 1 and reset_seconds ({reset_seconds}) > 0"
            )
        self.failures = failures
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._on_change = on_change or (lambda state: None)
        self._consecutive = 0  # failures in a row while closed
        self._opened_at: float | None = None  # None while closed
        self._probing = False  # a half-open probe is in flight

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.reset_seconds:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """Whether a call may go out now (in half_open: only to the one probe)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        was_open = self._opened_at is not None
        self._consecutive = 0
        self._opened_at = None
        self._probing = False
        if was_open:
            self._on_change(BreakerState.CLOSED)

    def record_failure(self) -> None:
        if self._opened_at is not None:  # the probe failed (or a call admitted before opening)
            self._probing = False
            self._opened_at = self._clock()
            return
        self._consecutive += 1
        if self._consecutive >= self.failures:
            self._opened_at = self._clock()
            self._on_change(BreakerState.OPEN)

    def abandon(self) -> None:
        """An admitted call ended without a verdict (cancelled): free the probe slot."""
        self._probing = False
