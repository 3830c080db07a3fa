"""The served-list store in a real Redis: lists remembered and bounded, expiring with the window,
hits counted as with the in-process store; and with Redis stalled or gone, retrieves still 200
within the existing Redis budget (the remembering happens in the background and is dropped and
counted), never a 5xx. Uses the real `redis-server` fixture of `tests/store/conftest.py`."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from service.store.redis_served import RedisServedStore
from tests.helpers import free_port
from tests.store import test_redis
from tests.store.test_redis import (
    MARGIN,
    TIMEOUT_MS,
    EngineCalls,
    RedisServer,
    events_of,
    new_user,
    post,
    sample,
    settings_for,
)

if TYPE_CHECKING:
    from tests.conftest import Served, ServeFn

pytestmark = test_redis.pytestmark  # skipped without redis-server
K = 10


def online_count(served: Served, name: str, **labels: str) -> float:
    return sample(served, f"uniserve_online_{name}_total", **labels)


@pytest.mark.anyio
async def test_redis_served_lists_are_bounded_expire_and_give_the_same_hits(
    serve: ServeFn, uniserve_data_dir: Path, redis_server: RedisServer
) -> None:
    settings = settings_for(
        uniserve_data_dir, redis_server.url, online_max_lists=2, online_window_seconds=30.0
    )
    async with serve(settings) as served:
        online, engine = served.state.online, served.state.engine
        assert online is not None and engine is not None
        store = online.store
        assert isinstance(store, RedisServedStore)
        user = new_user()
        await post(served, "/v1/events", {"user_id": user, "events": events_of(served, 4)})
        answers = []
        for k in (5, 10, 20):  # three lists, the store keeps the newest two
            answers.append(await post(served, "/v1/retrieve", {"user_id": user, "k": k}))
        await online.drain()
        client = redis_server.client()
        key = store.key(user)
        assert client.llen(key) == 2 and 0 < client.pttl(key) <= 30_000
        assert user not in key  # the id is hashed
        kept = await store.lists(user, online.clock())
        assert [len(s.items) for s in kept] == [10, 20]
        assert [list(s.items) for s in kept] == [
            [i["item_id"] for i in a["items"]] for a in answers[1:]
        ]
        # events: the k=20 list's rank 12 item and the rank 0 item (in both kept lists)
        top, deep = answers[2]["items"][0]["item_id"], answers[2]["items"][12]["item_id"]
        await post(served, "/v1/events", {"user_id": user, "events": [{"item_id": top}]})
        await post(served, "/v1/events", {"user_id": user, "events": [{"item_id": deep}]})
        await online.drain()
        labels = {
            "role": "live",
            "model_version": engine.model_version,
            "index_version": engine.index_version,
            "surface": "unknown",
        }
        assert online_count(served, "events", **labels) == 2
        hits = [online_count(served, "hits", **labels, k=k) for k in ("1", "5", "10", "served")]
        assert hits == [1, 1, 1, 2]
        # the window: a list older than it is not matched (as if served 31 s ago)
        old = kept[-1]._replace(served_at=online.clock() - 31.0)
        other = new_user()
        await store.remember(other, old)
        assert await store.lists(other, online.clock()) == []


@pytest.mark.anyio
async def test_redis_stalled_or_down_costs_no_more_than_the_budget_and_no_5xx(
    serve: ServeFn,
    uniserve_data_dir: Path,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    budget = TIMEOUT_MS / 1000
    async with serve(settings_for(uniserve_data_dir, redis_server.url)) as served:
        online = served.state.online
        assert online is not None
        user = new_user()
        await post(served, "/v1/events", {"user_id": user, "events": events_of(served, 4)})
        calls = EngineCalls(served, monkeypatch)
        redis_server.signal(signal.SIGSTOP)  # accepts connections, never answers
        try:
            extra = []
            for i in range(6):  # a user id and events: remembered (in the background)
                body = {"user_id": user, "events": events_of(served, 3, 10 * i), "k": K}
                engine_before, started = calls.seconds, time.perf_counter()
                await post(served, "/v1/retrieve", body)
                extra.append(time.perf_counter() - started - (calls.seconds - engine_before))
            assert max(extra) <= budget + MARGIN, extra
            await online.drain()
        finally:
            redis_server.signal(signal.SIGCONT)
        dropped = online_count(served, "dropped", work="remember", reason="unavailable")
        assert dropped == 6

    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    async with serve(settings_for(uniserve_data_dir, url)) as served:
        online = served.state.online
        assert online is not None
        body = {"user_id": new_user(), "events": events_of(served, 3), "k": K}
        for _ in range(3):
            assert len((await post(served, "/v1/retrieve", body))["items"]) == K
        await online.drain()
        assert online_count(served, "dropped", work="remember", reason="unavailable") == 3
