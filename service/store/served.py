"""Served-list store: the top-k lists each user was served, bounded in count and expiring.

`ServedList` is one answer as it was served: the item ids in rank order, who served it (`role`:
"live" or "shadow"), the model and index versions, and when (wall-clock seconds, comparable
across replicas). `ServedStore` is what the online-quality tracker (`service.core.online`)
uses; `InProcessServedStore` keeps the lists in this process (the embedded default),
`service.store.redis_served.RedisServedStore` in Redis, shared by every replica. A store that
cannot be reached raises `ServedStoreUnavailable`; the tracker then drops that piece of work
(counted), never a request.

Bounds: at most `max_lists` lists per user (the oldest dropped), lists older than
`window_seconds` are never returned (and dropped with their user once all are that old), and at
most `max_users` users (the least recently served evicted).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol

import orjson

ROLES = ("live", "shadow")


class ServedList(NamedTuple):
    items: tuple[str, ...]  # item ids, best first (rank 0 first)
    role: str  # "live" or "shadow"
    model_version: str
    index_version: str
    served_at: float  # wall-clock seconds (time.time()) when the answer was made

    def encode(self) -> bytes:
        return orjson.dumps(
            [self.served_at, self.role, self.model_version, self.index_version, self.items]
        )

    @classmethod
    def decode(cls, raw: bytes) -> ServedList:
        served_at, role, model_version, index_version, items = orjson.loads(raw)
        return cls(tuple(items), role, model_version, index_version, float(served_at))


class ServedStoreUnavailable(ConnectionError):
    """The store could not be reached: nothing was remembered or read."""


class ServedStore(Protocol):
    async def remember(self, user_id: str, served: ServedList) -> None:
        """Keep `served` among the user's lists. Raises ServedStoreUnavailable."""
        ...

    async def lists(self, user_id: str, now: float) -> list[ServedList]:
        """The user's lists served within the window before `now`, oldest first.
        Raises ServedStoreUnavailable."""
        ...


class InProcessServedStore:
    """Per-user deques in an LRU-ordered dict (least recently served first)."""

    def __init__(
        self,
        *,
        max_lists: int,
        max_users: int,
        window_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_lists < 1 or max_users < 1 or window_seconds <= 0:
            raise ValueError(
                f"max_lists ({max_lists}) and max_users ({max_users}) must be >= 1 and "
                f"window_seconds ({window_seconds}) > 0"
            )
        self.max_lists = max_lists
        self.max_users = max_users
        self.window_seconds = window_seconds
        self._clock = clock
        self._users: OrderedDict[str, deque[ServedList]] = OrderedDict()

    def __len__(self) -> int:
        """Users currently held (expired users may linger until the next call)."""
        return len(self._users)

    def _expire(self, now: float) -> None:
        """Drop users whose newest list is older than the window, least recent first."""
        while self._users:
            user_id, lists = next(iter(self._users.items()))
            if now - lists[-1].served_at <= self.window_seconds:
                return
            del self._users[user_id]

    async def remember(self, user_id: str, served: ServedList) -> None:
        self._expire(self._clock())
        lists = self._users.get(user_id)
        if lists is None:
            lists = self._users[user_id] = deque(maxlen=self.max_lists)
        else:
            self._users.move_to_end(user_id)
        lists.append(served)
        while len(self._users) > self.max_users:
            self._users.popitem(last=False)

    async def lists(self, user_id: str, now: float) -> list[ServedList]:
        self._expire(self._clock())
        return in_window(self._users.get(user_id, ()), now, self.window_seconds)


def in_window(lists: Iterable[ServedList], now: float, window_seconds: float) -> list[ServedList]:
    """The lists of `lists` served at most `window_seconds` before `now` (and not after it)."""
    return [s for s in lists if 0.0 <= now - s.served_at <= window_seconds]
