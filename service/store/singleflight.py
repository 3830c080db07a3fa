"""Single-flight: concurrent calls for the same key in one process share one computation.

The first caller for a key (the leader) starts the computation as its own task; callers that
arrive while it runs await the same task and get the same result or the same exception. When
it finishes the key is forgotten, so a later caller starts afresh (by then the result is usually
in the cache). The computation runs shielded: a cancelled caller (a client that went away) stops
waiting but neither cancels it nor the other callers' wait.

Used by `ServingCore` around "look the cache up, else compute and store": 200 identical
requests arriving together after a cache flush cost one encoder call and one cache write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Future[T]] = {}

    def __len__(self) -> int:
        """Computations in flight."""
        return len(self._flights)

    async def do(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> T:
        """`await fn()`, unless a call for `key` is already running: then await that one."""
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(fn())
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(flight)

    def _forget(self, key: Hashable, done: asyncio.Future[T]) -> None:
        if self._flights.get(key) is done:
            del self._flights[key]
        if not done.cancelled():
            done.exception()  # retrieved: no "exception was never retrieved" when nobody waits
