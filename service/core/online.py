"""Online quality: remember what each user was served, match what they do next against it.

`match_events` is the rule, a pure function: an event counts once for every version
(`role`, model version, index version) that served the user a list within the window before the
event arrived; its rank is the item's best (smallest) rank among that version's lists, a hit at
k when the rank is below k (k in `HIT_KS`), and a hit at the served k when the item was in any
of them. Events of users who were served nothing within the window count for no version.

`OnlineTracker` applies it to live traffic. `ServingCore` calls `served` after every retrieve
and `events` after every stored `/v1/events` append; both only enqueue work and return. The work
runs in the background, one user's pieces in arrival order (`UserSerial`: remembering a list,
then the shadow's list for the same request, then matching the user's next events), at most
`max_pending` pieces at once: beyond that a piece is dropped and counted, never waited for.
Store errors (Redis down) drop the piece and are counted too; nothing here can fail or slow a
request. Every match is reported (`on_match`, the Prometheus counters) and added to `tally`,
which the gated promotion (`service.core.promotion`) reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, NamedTuple

import orjson

from service.core.filters import Filters
from service.store.events import Event
from service.store.served import ServedList, ServedStore, ServedStoreUnavailable

if TYPE_CHECKING:
    from service.core.shadow import Shadow, ShadowSlot

log = logging.getLogger(__name__)

HIT_KS = (1, 5, 10)  # hits at these k, and at the served k ("served")
K_LABELS = (*(str(k) for k in HIT_KS), "served")
WORKS = ("remember", "match", "shadow")  # background work, the `work` label of drops
DROP_REASONS = ("overflow", "unavailable", "error")  # queue full, store down, a bug


class VersionKey(NamedTuple):
    role: str  # "live" or "shadow"
    model_version: str
    index_version: str


class Match(NamedTuple):
    """One event scored against one version's lists."""

    version: VersionKey
    surface: str  # the event's surface ("" when unknown)
    rank: int | None  # best rank of the event's item in that version's lists; None: not served

    def hit_labels(self) -> list[str]:
        """The `k` labels this match is a hit at."""
        if self.rank is None:
            return []
        return [str(k) for k in HIT_KS if self.rank < k] + ["served"]


def match_events(lists: Sequence[ServedList], events: Iterable[Event]) -> list[Match]:
    """Each event against each version's lists (`lists`: the user's lists in the window)."""
    ranks: dict[VersionKey, dict[str, int]] = {}
    for served in lists:
        best = ranks.setdefault(
            VersionKey(served.role, served.model_version, served.index_version), {}
        )
        for rank, item in enumerate(served.items):
            if rank < best.get(item, rank + 1):
                best[item] = rank
    return [
        Match(version, event.surface, best.get(event.item_id))
        for event in events
        for version, best in ranks.items()
    ]


class Tally:
    """Events and hits per version and k, summed over surfaces (what promotion compares)."""

    def __init__(self) -> None:
        self.events: dict[VersionKey, int] = defaultdict(int)
        self.hits: dict[tuple[VersionKey, str], int] = defaultdict(int)

    def add(self, match: Match) -> None:
        self.events[match.version] += 1
        for k in match.hit_labels():
            self.hits[match.version, k] += 1

    def counts(self, version: VersionKey, k: str = "10") -> tuple[int, int]:
        """(events, hits at k) of `version`."""
        return self.events.get(version, 0), self.hits.get((version, k), 0)


class RetrieveCall(NamedTuple):
    """What a shadow needs to answer a retrieve as the live engine did."""

    user_id: str
    history: Sequence[Event]  # what the live answer was computed from, oldest first
    k: int
    filters: Filters
    exclude_seen: bool
    mode: str
    served_at: float  # wall-clock seconds


class UserSerial:
    """Background work, one key's pieces in submission order, at most `max_pending` at once."""

    def __init__(self, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.max_pending = max_pending
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def submit(self, key: str, work: Callable[[], Awaitable[None]]) -> bool:
        """Run `work()` after the key's earlier pieces; False (nothing runs) when full."""
        if len(self._tasks) >= self.max_pending:
            return False
        task = asyncio.get_running_loop().create_task(self._run(self._tails.get(key), work))
        self._tails[key] = task
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._done(key, done))
        return True

    @staticmethod
    async def _run(
        previous: asyncio.Task[None] | None, work: Callable[[], Awaitable[None]]
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # its outcome is its own
        await work()

    def _done(self, key: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._tails.get(key) is task:
            del self._tails[key]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("online-quality work failed", exc_info=exc)

    async def drain(self) -> None:
        """Return once every piece submitted so far (and any they submit) has finished."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.drain()


class OnlineTracker:
    def __init__(
        self,
        store: ServedStore,
        *,
        window_seconds: float,
        max_pending: int,
        budget: Callable[[], AbstractContextManager[object]] | None = None,
        on_match: Callable[[Match], None] | None = None,
        on_drop: Callable[[str, str], None] | None = None,
        on_served: Callable[[VersionKey], None] | None = None,
        shadow: ShadowSlot | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`budget`: the scope of one piece's store calls (the Redis link's request budget);
        `on_match(match)`, `on_drop(work, reason)`, `on_served(version)` (before a version's
        list is remembered): the metrics; `shadow`: where a shadow model is, when one is."""
        self.store = store
        self.window_seconds = window_seconds
        self.work = UserSerial(max_pending)
        self.tally = Tally()
        self.shadow = shadow
        self.clock = clock
        self._budget = budget or nullcontext
        self._on_match = on_match or (lambda match: None)
        self._on_drop = on_drop or (lambda work, reason: None)
        self._on_served = on_served or (lambda version: None)

    # ------------------------------------------------------------------ request side
    def served(self, call: RetrieveCall, body: bytes) -> None:
        """A retrieve for `call.user_id` was answered with `body`: remember it, and have the
        shadow answer it too when this request is in its sample. Never raises."""
        try:
            self._submit(call.user_id, "remember", lambda: self._remember_live(call, body))
            shadow = self.shadow.shadow if self.shadow is not None else None
            if shadow is None or not shadow.takes(call):
                return
            if not self._submit(call.user_id, "shadow", lambda: self._answer(shadow, call)):
                shadow.release("dropped")
        except Exception:  # never reaches the answer
            log.exception("online quality: could not enqueue a served list")

    def events(self, user_id: str, events: Sequence[Event]) -> None:
        """`events` were stored for `user_id`: match them (in the background). Never raises."""
        now = self.clock()
        try:
            self._submit(user_id, "match", lambda: self._match(user_id, list(events), now))
        except Exception:
            log.exception("online quality: could not enqueue events for matching")

    def _submit(self, user_id: str, work: str, piece: Callable[[], Awaitable[None]]) -> bool:
        if self.work.submit(user_id, lambda: self._guarded(work, piece)):
            return True
        self._on_drop(work, "overflow")
        return False

    async def _guarded(self, work: str, piece: Callable[[], Awaitable[None]]) -> None:
        try:
            with self._budget():
                await piece()
        except ServedStoreUnavailable as exc:
            log.debug("online quality: %s dropped (%s)", work, exc)
            self._on_drop(work, "unavailable")
        except Exception:
            log.exception("online quality: %s failed", work)
            self._on_drop(work, "error")

    # ------------------------------------------------------------------ background pieces
    async def _remember_live(self, call: RetrieveCall, body: bytes) -> None:
        answer = orjson.loads(body)
        items = tuple(item["item_id"] for item in answer["items"])
        served = ServedList(
            items, "live", answer["model_version"], answer["index_version"], call.served_at
        )
        await self._remember(call.user_id, served)

    async def _remember(self, user_id: str, served: ServedList) -> None:
        self._on_served(VersionKey(served.role, served.model_version, served.index_version))
        await self.store.remember(user_id, served)

    async def _answer(self, shadow: Shadow, call: RetrieveCall) -> None:
        try:
            served = await shadow.answer(call)
        except Exception:
            shadow.release("failed")
            log.warning("shadow %s failed on a retrieve", shadow.index_version, exc_info=True)
            return
        shadow.release("answered")
        await self._remember(call.user_id, served)

    async def _match(self, user_id: str, events: list[Event], now: float) -> None:
        lists = await self.store.lists(user_id, now)
        for match in match_events(lists, events):
            self.tally.add(match)
            self._on_match(match)

    async def drain(self) -> None:
        await self.work.drain()

    async def aclose(self) -> None:
        await self.work.aclose()
