"""Online quality without HTTP: the matching rule against a hand-computed reference, the
in-process served-list store's bounds and expiry, the tracker's background work (ordering,
overflow), and the promotion test against the normal distribution it approximates."""

from __future__ import annotations

import asyncio
import math
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest

from service.core.filters import Filters
from service.core.limit import PendingLimit
from service.core.online import (
    Match,
    OnlineTracker,
    RetrieveCall,
    UserSerial,
    VersionKey,
    match_events,
)
from service.core.promotion import Arm, decide, one_sided_p_value
from service.core.shadow import Shadow
from service.store.events import Event
from service.store.served import InProcessServedStore, ServedList

WINDOW = 60.0
LIVE = VersionKey("live", "m1", "i1")
SHADOW = VersionKey("shadow", "m2", "i2")


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def body(items: list[str], version: VersionKey = LIVE) -> bytes:
    """A retrieve answer's bytes."""
    scored = [{"item_id": i, "score": 1.0 - n / 100} for n, i in enumerate(items)]
    return orjson.dumps(
        {
            "items": scored,
            "model_version": version.model_version,
            "index_version": version.index_version,
        }
    )


def call(user: str, at: float, k: int = 10) -> RetrieveCall:
    return RetrieveCall(user, [Event("h0", "feed")], k, Filters.of(None, ()), False, "single", at)


# ---------------------------------------------------------------------------- the rule
def test_match_events_takes_each_versions_best_rank_over_its_lists() -> None:
    lists = [
        ServedList(tuple("abcdefghijkl"), "live", "m1", "i1", 1000.0),
        ServedList(("x", "a", "y"), "live", "m1", "i1", 1010.0),
        ServedList(("c", "a"), "shadow", "m2", "i2", 1020.0),
    ]
    events = [Event("a", "feed"), Event("l", "search"), Event("z", "feed")]
    assert match_events(lists, events) == [
        Match(LIVE, "feed", 0),  # rank 1 in the first list, 0 in the second: best is 0
        Match(SHADOW, "feed", 1),
        Match(LIVE, "search", 11),  # only in the 12-item list, at rank 11
        Match(SHADOW, "search", None),
        Match(LIVE, "feed", None),
        Match(SHADOW, "feed", None),
    ]
    assert Match(LIVE, "", 0).hit_labels() == ["1", "5", "10", "served"]
    assert Match(LIVE, "", 4).hit_labels() == ["5", "10", "served"]
    assert Match(LIVE, "", 9).hit_labels() == ["10", "served"]
    assert Match(LIVE, "", 11).hit_labels() == ["served"]
    assert Match(LIVE, "", None).hit_labels() == []
    assert match_events([], events) == []  # served nothing: counts for no version


# ---------------------------------------------------------------------------- the store
@pytest.mark.anyio
async def test_in_process_served_store_bounds_lists_and_users_and_expires() -> None:
    clock = Clock()
    store = InProcessServedStore(max_lists=2, max_users=2, window_seconds=WINDOW, clock=clock)

    def served(name: str, at: float) -> ServedList:
        return ServedList((name,), "live", "m1", "i1", at)

    for n in range(3):
        await store.remember("u", served(f"u{n}", 1000.0 + n))
    assert [s.items for s in await store.lists("u", 1010.0)] == [("u1",), ("u2",)]  # newest 2
    await store.remember("v", served("v0", 1000.0))
    await store.remember("u", served("u3", 1003.0))  # u is now the most recent user
    await store.remember("w", served("w0", 1004.0))  # a third user evicts v
    assert await store.lists("v", 1010.0) == [] and len(store) == 2
    # the window: lists served more than WINDOW before `now` (or after it) are not returned
    assert [s.items for s in await store.lists("u", 1002.0 + WINDOW)] == [("u2",), ("u3",)]
    assert [s.items for s in await store.lists("u", 1003.0 + WINDOW)] == [("u3",)]
    assert await store.lists("u", 1002.5) == [served("u2", 1002.0)]  # u3: served after 1002.5
    clock.now = 1003.5 + WINDOW  # u's newest list is out of the window: u is dropped
    assert await store.lists("u", clock.now) == [] and len(store) == 1
    with pytest.raises(ValueError, match="max_lists"):
        InProcessServedStore(max_lists=0, max_users=1, window_seconds=1.0)


# ---------------------------------------------------------------------------- the tracker
@pytest.mark.anyio
async def test_tracker_counts_hits_against_a_hand_computed_reference() -> None:
    """Several lists per user, two versions, the window, and users served nothing."""
    clock = Clock()
    store = InProcessServedStore(max_lists=8, max_users=100, window_seconds=WINDOW, clock=clock)
    matches: list[Match] = []
    tracker = OnlineTracker(
        store, window_seconds=WINDOW, max_pending=100, on_match=matches.append, clock=clock
    )
    tracker.served(call("u", 1000.0, k=12), body(list("abcdefghijkl")))
    tracker.served(call("u", 1010.0, k=3), body(["x", "a", "y"]))
    await store.remember("u", ServedList(("c", "a"), *SHADOW, 1020.0))  # as a shadow does
    clock.now = 1030.0
    tracker.events("u", [Event("a", "feed"), Event("l", "search"), Event("z", "feed")])
    tracker.events("nobody", [Event("a", "feed")])  # served nothing: not counted
    await tracker.drain()
    clock.now = 1065.0  # the list served at 1000 is out of the window, those at 1010/1020 in
    tracker.events("u", [Event("b", "feed")])
    await tracker.drain()
    clock.now = 1085.0  # every list of u is out of the window
    tracker.events("u", [Event("x", "feed")])
    await tracker.drain()

    #           events, hits@1, @5, @10, @served  (worked out by hand from the lists above)
    expected = {LIVE: (4, 1, 1, 1, 2), SHADOW: (4, 0, 1, 1, 1)}
    for version, (events, *hits) in expected.items():
        assert tracker.tally.events[version] == events
        got = [tracker.tally.hits[version, k] for k in ("1", "5", "10", "served")]
        assert got == hits, version
        assert tracker.tally.counts(version) == (events, hits[2])
    assert len(matches) == 8 and {m.surface for m in matches} == {"feed", "search"}


@pytest.mark.anyio
async def test_a_users_work_runs_in_order_and_overflow_is_dropped_and_counted() -> None:
    serial = UserSerial(max_pending=3)
    done: list[str] = []
    gate = asyncio.Event()

    async def piece(name: str, wait: bool = False) -> None:
        if wait:
            await gate.wait()
        done.append(name)

    assert serial.submit("u", lambda: piece("u1", wait=True))
    assert serial.submit("u", lambda: piece("u2"))  # waits for u1
    assert serial.submit("v", lambda: piece("v1"))  # another user: not held by u
    assert not serial.submit("w", lambda: piece("w1"))  # full: refused at once
    await asyncio.sleep(0.01)
    assert done == ["v1"] and serial.pending == 2
    gate.set()
    await serial.drain()
    assert done == ["v1", "u1", "u2"] and serial.pending == 0

    drops: list[tuple[str, str]] = []
    tracker = OnlineTracker(
        InProcessServedStore(max_lists=1, max_users=1, window_seconds=WINDOW),
        window_seconds=WINDOW,
        max_pending=1,
        on_drop=lambda work, reason: drops.append((work, reason)),
    )
    tracker.served(call("u", 1000.0), body(["a"]))
    tracker.events("u", [Event("a")])  # the queue holds one piece: this one is dropped
    tracker.served(call("u", 1000.0), b"not json")  # a bad body fails its own piece only
    await tracker.drain()
    assert drops == [("match", "overflow"), ("remember", "overflow")]
    tracker.served(call("u", 1000.0), b"not json")
    await tracker.drain()
    assert drops[-1] == ("remember", "error")


# ---------------------------------------------------------------------------- promotion
def test_one_sided_p_value_matches_the_normal_tail_and_simulated_rejections() -> None:
    live, shadow = Arm("m1", "i1", 2000, 200), Arm("m2", "i2", 2000, 250)
    pooled = 450 / 4000
    z = (0.125 - 0.1) / math.sqrt(pooled * (1 - pooled) * (2 / 2000))
    assert one_sided_p_value(live, shadow) == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    assert one_sided_p_value(live, shadow) == pytest.approx(0.00625, abs=5e-4)  # z = 2.50
    assert one_sided_p_value(shadow, live) == pytest.approx(1 - 0.00625, abs=5e-4)
    assert one_sided_p_value(Arm("a", "b", 0, 0), shadow) == 1.0
    assert one_sided_p_value(Arm("a", "b", 10, 0), Arm("a", "c", 10, 0)) == 1.0
    # two equal models: a 0.95 test wrongly promotes about 5% of the time, not more
    rng = random.Random(7)
    wrong = 0
    for _ in range(400):
        a = sum(rng.random() < 0.1 for _ in range(1000))
        b = sum(rng.random() < 0.1 for _ in range(1000))
        decision = decide(
            Arm("m", "i1", 1000, a), Arm("m", "i2", 1000, b), min_events=1000, confidence=0.95
        )
        wrong += decision.promote
    assert wrong / 400 < 0.09  # 5% expected; 0.09 is over 3 standard errors above


def test_decide_refuses_below_the_minimum_and_when_not_significant() -> None:
    live = Arm("m1", "i1", 2000, 200)
    few = decide(live, Arm("m2", "i2", 999, 300), min_events=1000, confidence=0.95)
    assert not few.promote and "too few matched events (999 < 1000)" in few.reason
    close = decide(live, Arm("m2", "i2", 2000, 210), min_events=1000, confidence=0.95)
    assert not close.promote and "does not win" in close.reason and close.p_value > 0.05
    wins = decide(live, Arm("m2", "i2", 2000, 260), min_events=1000, confidence=0.95)
    assert wins.promote and wins.p_value < 0.05
    for text in ("0.1000", "0.1300", "2000 events", "p = "):
        assert text in wins.reason
    assert wins.as_dict()["shadow"]["hit_rate"] == 0.13
    with pytest.raises(ValueError, match="confidence"):
        decide(live, live, min_events=1, confidence=1.0)


def test_the_shadow_yields_while_live_requests_fill_half_their_limit() -> None:
    live = PendingLimit(4)
    outcomes: list[str] = []
    worker = SimpleNamespace(alive=True, backlogged=False)  # `takes` reads only these
    shadow = Shadow(
        cast(Any, worker),
        root=Path("."),
        sample=1.0,
        max_pending=8,
        on_outcome=outcomes.append,
        live_busy=lambda: 2 * live.pending >= live.limit,
    )
    call = RetrieveCall("u", (), 10, Filters(), False, "single", 0.0)
    assert live.try_enter() and shadow.takes(call)  # 1 of 4 in progress: shadowed
    shadow.release("answered")
    assert live.try_enter() and not shadow.takes(call)  # 2 of 4: live comes first
    assert outcomes == ["answered", "dropped"] and shadow.pending == 0
    live.leave(0.0, 0.0)
    assert shadow.takes(call)  # back under half: shadowed again
    shadow.release("answered")
    worker.backlogged = True  # the worker's socket is full: dropped
    assert not shadow.takes(call) and outcomes[-1] == "dropped"
    worker.alive = False  # the worker exited: failed, nothing taken
    assert not shadow.takes(call) and outcomes[-1] == "failed" and shadow.pending == 0
