"""Redis Cluster: the cache, the event store, the served lists and the catalogue change feed on a
real 3-master cluster, and a master killed (SIGKILL) while the real app answers a stream of
requests.

Each test starts its own cluster (`redis_cluster` in `tests/store/conftest.py`: three
`redis-server --cluster-enabled yes` on free loopback ports joined by `redis-cli --cluster
create`, a 1 s node timeout, `cluster-require-full-coverage no`) and stops it afterwards.
Without redis-server or redis-cli the fixture fails, it never skips: `.ci/run` installs them.
Where keys live is checked on the nodes themselves (`CLUSTER KEYSLOT`, `CLUSTER SLOTS`, then the
key read from that node alone), not through the cluster client.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

from service.settings import Settings
from service.store.breaker import CircuitBreaker
from service.store.events import Event
from service.store.redis_events import RedisEventStore
from service.store.redis_feed import CHANNEL, RedisChangeFeed
from service.store.redis_link import RedisLink, RedisUnavailable
from service.store.redis_served import RedisServedStore
from tests.api import test_catalogue as catalogue
from tests.helpers import RedisClusterServers, copy_data
from tests.store.test_redis import (
    EngineCalls,
    K,
    breaker_state,
    cache_count,
    events_of,
    post,
    settings_for,
)

if TYPE_CHECKING:
    from tests.conftest import Served, ServeFn


def cluster_settings(data_dir: Path, cluster: RedisClusterServers, **overrides: Any) -> Settings:
    return settings_for(data_dir, cluster.url, redis_cluster=True, **overrides)


def ports(nodes: Any) -> set[int]:
    return {node.port for node in nodes}


def ids(body: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in body["items"]]


def failed_calls(served: Served) -> float:
    """Redis calls made that failed, every operation and reason together."""
    (family,) = [
        f for f in served.state.metrics.registry.collect() if f.name == "uniserve_redis_calls"
    ]
    made = ("ok", "breaker_open", "budget_spent")
    return sum(
        s.value
        for s in family.samples
        if s.name.endswith("_total") and s.labels["result"] not in made
    )


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 15.0) -> None:
    """Wait (bounded, generous for a busy machine) until `await check()` is true."""
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "not within the bound"
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------- stores
@pytest.mark.anyio
async def test_cache_events_and_served_lists_spread_over_every_master_one_slot_per_user(
    serve: ServeFn,
    uniserve_data_dir: Path,
    redis_cluster: RedisClusterServers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = cluster_settings(
        uniserve_data_dir, redis_cluster, events_max_per_user=5, max_pending_requests=200
    )
    async with serve(settings) as served:
        store, online = served.state.events, served.state.online
        assert isinstance(store, RedisEventStore) and online is not None
        users = [f"cluster-user-{i}" for i in range(24)]
        answers = {}
        for i, user in enumerate(users):
            first, more = events_of(served, 3, 10 * i), events_of(served, 4, 10 * i + 300)
            assert (await post(served, "/v1/events", {"user_id": user, "events": first}))[
                "stored"
            ] == 3
            stored = await post(served, "/v1/events", {"user_id": user, "events": more})
            assert stored["stored"] == 5  # trimmed to the newest 5 of 7
            answers[user] = await post(served, "/v1/retrieve", {"user_id": user, "k": K})
            by_events = {"events": (first + more)[-5:], "k": K}
            assert answers[user] == await post(served, "/v1/retrieve", by_events)
        hits = cache_count(served, "hit")
        for user in users:
            assert await post(served, "/v1/retrieve", {"user_id": user, "k": K}) == answers[user]
        assert cache_count(served, "hit") == hits + len(users)

        # one user's two keys share a slot (the append script and the read's MULTI need it);
        # the users spread over all three masters, each key read from its node alone
        any_node = redis_cluster.nodes[0].client()
        user_nodes = set()
        for user in users:
            events_key, watermark_key = store.keys(user)
            assert any_node.cluster("keyslot", events_key) == any_node.cluster(
                "keyslot", watermark_key
            )
            node = redis_cluster.node_of(events_key).client()
            assert node.llen(events_key) == 5 and node.exists(watermark_key) == 1
            user_nodes.add(redis_cluster.node_of(events_key).port)
        assert user_nodes == ports(redis_cluster.nodes)
        assert not any(n.client().keys("*events-clock*") for n in redis_cluster.nodes)

        # a user's watermarks come from the user's own clock: they grow by one per append,
        # and after the keys are gone (expired, evicted) the next one is still above them
        user = users[0]
        _, watermark = await store.read(user)
        _, again = await store.append(user, [Event("1", "0", 0.0)])
        assert again == watermark + 1
        redis_cluster.node_of(store.keys(user)[0]).client().delete(*store.keys(user))
        assert await store.read(user) == ([], 0)
        assert (await store.append(user, [Event("1", "0", 0.0)]))[1] > again

        # cache entries (user vectors, responses) land on every master too
        cache_nodes = {
            n.port for n in redis_cluster.nodes if n.client().keys("uniserve:v1:retrieve:*")
        }
        assert cache_nodes == ports(redis_cluster.nodes)

        # served lists: one key per user, spread likewise, the lists as served
        await online.drain()
        served_store = online.store
        assert isinstance(served_store, RedisServedStore)
        served_nodes = set()
        for user in users[1:]:
            lists = await served_store.lists(user, online.clock())
            assert [list(s.items) for s in lists] == [
                [i["item_id"] for i in answers[user]["items"]]
            ] * 2  # the miss and the hit
            served_nodes.add(redis_cluster.node_of(served_store.key(user)).port)
        assert served_nodes == ports(redis_cluster.nodes)

        # single-flight across slots: concurrent identical misses encode once per distinct
        # request, whichever master their keys live on
        for node in redis_cluster.nodes:
            node.client().flushall()
        calls = EngineCalls(served, monkeypatch)
        bodies = [{"events": events_of(served, 6, 50 * j), "k": K} for j in range(9)]
        responses = await asyncio.gather(
            *(served.client.post("/v1/retrieve", json=bodies[i % 9]) for i in range(180))
        )
        assert [r.status_code for r in responses] == [200] * 180
        assert calls.encodes == 9
        assert failed_calls(served) == 0  # no CROSSSLOT or any other failure, all along


@pytest.mark.anyio
async def test_change_feed_reaches_listeners_on_any_node_and_moves_off_a_killed_one(
    redis_cluster: RedisClusterServers,
) -> None:
    def link() -> RedisLink:
        breaker = CircuitBreaker(3, 0.2)
        return RedisLink.from_url(
            redis_cluster.url,
            timeout=0.5,
            connect_timeout=0.5,
            max_connections=4,
            breaker=breaker,
            cluster=True,
        )

    publisher, listeners = link(), [link(), link()]
    heard = [0, 0]

    def counter(i: int) -> Callable[[], Awaitable[None]]:
        async def on_change() -> None:
            heard[i] += 1

        return on_change

    def subscribed() -> dict[int, int]:
        """Listeners subscribed on each running node, by port (classic pub/sub: per node)."""
        counts = {
            n.port: int(n.client().pubsub_numsub(CHANNEL)[0][1]) for n in redis_cluster.running()
        }
        return {port: count for port, count in counts.items() if count}

    try:
        for each in (publisher, *listeners):
            assert await each.ping()  # learns the cluster's nodes
        async with anyio.create_task_group() as tasks:
            for i, each in enumerate(listeners):
                feed = RedisChangeFeed(each, redis_cluster.url, connect_timeout=0.5)
                tasks.start_soon(feed.listen, counter(i))

            async def both_heard(n: int) -> bool:
                return min(heard) >= n

            await eventually(lambda: both_heard(1))  # once on subscribing
            listening = subscribed()
            assert sum(listening.values()) == 2
            # a message published on another node reaches them (the cluster bus carries it)
            other = next(n for n in redis_cluster.nodes if n.port not in listening)
            other.client().publish(CHANNEL, 1)
            await eventually(lambda: both_heard(2))
            await RedisChangeFeed(publisher, redis_cluster.url, connect_timeout=0.5).notify(2)
            await eventually(lambda: both_heard(3))

            # a node they listen on dies: its listeners subscribe on another one
            victim = next(n for n in redis_cluster.nodes if n.port in listening)
            victim.kill()

            async def moved() -> bool:
                return sum(subscribed().values()) == 2

            await eventually(moved)
            before = list(heard)
            seq = 3

            async def announced() -> bool:
                # a nudge is best effort: the publisher's first call may still go to the dead
                # node; its client then moves its default node off it
                nonlocal seq
                await RedisChangeFeed(publisher, redis_cluster.url, connect_timeout=0.5).notify(seq)
                seq += 1
                return all(h > b for h, b in zip(heard, before, strict=True))

            await eventually(announced)
            tasks.cancel_scope.cancel()
    finally:
        for each in (publisher, *listeners):
            await each.aclose()


@pytest.mark.anyio
async def test_learning_the_cluster_map_runs_once_and_outside_every_request_budget(
    redis_cluster: RedisClusterServers,
) -> None:
    """The first map (CLUSTER SLOTS, the command table) costs tens of milliseconds of parsing,
    more than a request's budget on a busy machine. A request cut off by its budget while the
    map is learnt fails alone; the learning goes on (it is never learnt a second time) and
    the startup ping waits for it, so later requests pay nothing for it."""
    results: list[tuple[str, str]] = []
    link = RedisLink.from_url(
        redis_cluster.url,
        timeout=0.5,
        connect_timeout=0.5,
        max_connections=4,
        breaker=CircuitBreaker(100, 1),
        cluster=True,
        on_call=lambda op, result, seconds: results.append((op, result)),
    )

    def maps_served() -> int:
        """CLUSTER SLOTS answered by the nodes so far (each node's own command stats)."""
        stats = [n.client().info("commandstats") for n in redis_cluster.nodes]
        return sum(int(each.get("cmdstat_cluster|slots", {}).get("calls", 0)) for each in stats)

    before = maps_served()
    try:
        link.timeout = 1e-4  # a budget no network round trip fits in
        with pytest.raises(RedisUnavailable, match="timeout"):
            await link.call("set", lambda r: r.set("first", 1))
        link.timeout = 0.5

        async def mapped() -> bool:  # every node known, with no further call made
            return ports(link.client.get_nodes()) == ports(redis_cluster.nodes)

        await eventually(mapped)
        assert await link.ping()
        assert await link.call("get", lambda r: r.get("first")) is None  # the cut-off set
        await link.call("set", lambda r: r.set("second", 2))
        assert await link.call("get", lambda r: r.get("second")) == b"2"
        assert maps_served() - before == 1  # learnt once: the cut-off request did not cancel it
        assert results == [
            ("set", "timeout"),
            ("ping", "ok"),
            ("get", "ok"),
            ("set", "ok"),
            ("get", "ok"),
        ]
    finally:
        await link.aclose()


# ---------------------------------------------------------------------------- outage
@pytest.mark.anyio
async def test_master_killed_mid_stream_no_5xx_others_keep_serving_restart_recovers(
    serve: ServeFn, uniserve_data_dir: Path, redis_cluster: RedisClusterServers
) -> None:
    async with serve(cluster_settings(uniserve_data_dir, redis_cluster)) as served:
        store = served.state.events
        assert isinstance(store, RedisEventStore)
        victim = redis_cluster.nodes[1]
        # users whose keys live on the master that will die, and on the others
        users = [f"outage-user-{i}" for i in range(30)]
        doomed = [u for u in users if redis_cluster.node_of(store.keys(u)[0]) is victim]
        spared = [u for u in users if redis_cluster.node_of(store.keys(u)[0]) is not victim]
        assert doomed and spared
        stored = events_of(served, 4)
        for user in users:
            await post(served, "/v1/events", {"user_id": user, "events": stored})
        # enough cached bodies that some keys live on the victim whatever the versions hash to
        # ((2/3)^24: about 1 in 16,000 runs would find none there)
        cached = 24
        bodies = [
            {"events": events_of(served, 5, 200 + 7 * i), "k": K} for i in range(cached)
        ] + [  # stored events and the request's
            {"user_id": user, "events": events_of(served, 2, 300), "k": K}
            for user in (doomed[0], spared[0])
        ]
        expected = [await post(served, "/v1/retrieve", body) for body in bodies]
        only_request = await post(
            served, "/v1/retrieve", {"events": bodies[cached]["events"], "k": K}
        )
        spared_answer = await post(served, "/v1/retrieve", {"user_id": spared[1], "k": K})

        statuses: list[int] = []
        answers: list[tuple[int, Any]] = []
        killed = asyncio.Event()

        async def client(worker: int) -> None:
            for i in range(worker, 80, 4):
                if i == 30:
                    victim.kill()  # mid-stream: other workers have requests in flight
                    killed.set()
                resp = await served.client.post("/v1/retrieve", json=bodies[i % len(bodies)])
                statuses.append(resp.status_code)
                answers.append((i % len(bodies), resp.json()))

        await asyncio.gather(*(client(w) for w in range(4)))
        assert killed.is_set()
        assert statuses == [200] * 80  # no 5xx
        # (items compared, not scores: concurrent requests share batches, which moves floats)
        for which, body in answers:
            if which >= cached:  # stored events, or the request's alone while they are out of reach
                assert ids(body) in (ids(expected[which]), ids(only_request))
            else:
                assert ids(body) == ids(expected[which])
        assert cache_count(served, "error") >= 1
        assert any(ids(body) == ids(only_request) for which, body in answers if which == cached)

        # while the master is down: users on the other masters keep their stored events (once
        # the breaker lets calls through), those on it are the documented 503s
        async def spared_served_from_store() -> bool:
            resp = await served.client.post("/v1/retrieve", json={"user_id": spared[1], "k": K})
            if resp.status_code == 200:
                return bool(resp.json() == spared_answer)
            # the breaker is open (the dead master's failures): the stored events are skipped
            assert resp.status_code == 503, resp.text
            return False

        await eventually(spared_served_from_store)
        # a live master that lost its scripts (restarted, SCRIPT FLUSH) while another is down:
        # an append still works (EVAL to the keys' node; SCRIPT LOAD goes to every master)
        redis_cluster.node_of(store.keys(spared[1])[0]).client().script_flush()

        async def spared_user_appends() -> bool:
            body = {"user_id": spared[1], "events": stored}
            resp = await served.client.post("/v1/events", json=body)
            assert resp.status_code in (200, 503), resp.text  # 503: the breaker is open
            return resp.status_code == 200

        await eventually(spared_user_appends)
        resp = await served.client.post("/v1/retrieve", json={"user_id": doomed[1], "k": K})
        assert resp.status_code == 503 and resp.json()["error_type"] == "backend_unavailable"
        resp = await served.client.post("/v1/events", json={"user_id": doomed[1], "events": stored})
        assert resp.status_code == 503 and resp.json()["error_type"] == "backend_unavailable"

        # the master comes back (same port and node id, empty): its users' writes and the
        # cache work again without restarting the service
        victim.start()
        redis_cluster.wait_ok()

        async def doomed_user_back() -> bool:
            body = {"user_id": doomed[1], "events": stored}
            return (await served.client.post("/v1/events", json=body)).status_code == 200

        await eventually(doomed_user_back)
        hits = cache_count(served, "hit")
        body = {"user_id": doomed[1], "k": K}
        assert await post(served, "/v1/retrieve", body) == await post(served, "/v1/retrieve", body)
        assert cache_count(served, "hit") == hits + 1
        assert breaker_state(served) == 0  # closed


# ---------------------------------------------------------------------------- real replicas
def connection_failures(replica: catalogue.Replica) -> float:
    """Redis calls of `replica` that failed to reach a node, from its /metrics."""
    text = httpx.get(f"{replica.url}/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("uniserve_redis_calls_total{") and 'result="connection"' in line
    )


def test_real_replicas_on_a_cluster_hear_changes_and_a_master_killed_mid_stream_costs_no_5xx(
    uniserve_data_dir: Path, tmp_path: Path, redis_cluster: RedisClusterServers
) -> None:
    """Two `uniserve serve` processes configured through the environment share the cluster;
    they never poll the index root's log (an hour apart), so only the nudge can bring a
    change to the other one. A real HTTP client streams retrieves at both while the master
    their listeners subscribed on is SIGKILLed: no 5xx, and changes still spread."""
    data = copy_data(uniserve_data_dir, tmp_path / "data")
    env = {
        "UNISERVE_REDIS_URL": redis_cluster.url,
        "UNISERVE_REDIS_CLUSTER": "true",
        "UNISERVE_INDEX_POLL_SECONDS": "3600",
    }
    a, b = catalogue.Replica(data, "a", **env), catalogue.Replica(data, "b", **env)
    admin = catalogue.ADMIN
    try:
        a.start()
        b.start()
        upsert = {"items": [{"item_id": "cluster-new", "surface": "0"}]}
        assert a.post("/admin/items/upsert", upsert, headers=admin).status_code == 200
        catalogue.eventually(lambda: b.unknown(["cluster-new"]) == [])
        for i, replica in enumerate((a, b)):
            body = {"user_id": f"stream-{i}", "events": catalogue.events(["2", "3"])}
            assert replica.post("/v1/events", body).status_code == 200

        statuses: list[int] = []
        stop = threading.Event()

        def stream() -> None:
            with httpx.Client(timeout=30) as client:
                i = 0
                while not stop.is_set():
                    replica = (a, b)[i % 2]
                    body: dict[str, Any] = {"events": catalogue.events([str(i % 50)]), "k": 5}
                    if i % 3 == 0:  # stored events too
                        body["user_id"] = f"stream-{i % 2}"
                    statuses.append(
                        client.post(f"{replica.url}/v1/retrieve", json=body).status_code
                    )
                    i += 1

        streamer = threading.Thread(target=stream)
        streamer.start()
        try:
            while len(statuses) < 20:
                time.sleep(0.05)
            (listening, *_) = [
                n for n in redis_cluster.running() if n.client().pubsub_numsub(CHANNEL)[0][1]
            ]
            listening.kill()
            done = len(statuses)
            while len(statuses) < done + 40:
                time.sleep(0.05)
        finally:
            stop.set()
            streamer.join(60)
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        assert connection_failures(a) + connection_failures(b) >= 1  # the dead master was hit

        # the listeners moved to a live node: a change on b reaches a, with no poll
        retired = b.post("/admin/items/retire", {"item_ids": ["cluster-new"]}, headers=admin)
        assert retired.status_code == 200, retired.text
        catalogue.eventually(lambda: a.unknown(["cluster-new"]) == ["cluster-new"])
    finally:
        a.kill()
        b.kill()


# ---------------------------------------------------------------------------- settings
def test_cluster_settings_are_validated() -> None:
    from pydantic import ValidationError

    ok = Settings(redis_url="redis://10.0.0.1:7000", redis_cluster=True)
    assert ok.redis_cluster and not Settings().redis_cluster
    for bad, says in [
        ({"redis_cluster": True}, "redis_url"),
        ({"redis_cluster": True, "redis_url": "unix:///run/redis.sock"}, "unix"),
        ({"redis_cluster": True, "redis_url": "redis://10.0.0.1:7000/2"}, "db 0"),
        (
            {"redis_cluster": True, "redis_url": "redis://h:1", "redis_key_prefix": "{a}:"},
            "hash tags",
        ),
    ]:
        with pytest.raises(ValidationError, match=says):
            Settings(**bad)
