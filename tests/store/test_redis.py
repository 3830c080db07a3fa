"""Redis: the shared cache and recent-event store, against a real redis-server.

Every test starts its own `redis-server` (free loopback port, temp dir, no persistence unless
the test turns AOF on) and stops it afterwards: no shared state, no fixed port, no fake Redis.
Outages are real: `kill -9`, `SIGSTOP` / `SIGCONT`, a port nobody listens on. Also the plain
objects these rely on, tested alone: the circuit breaker, single-flight, sealed values.

Timing assertions are bounds only (a request's extra latency under a stalled Redis stays within
one configured timeout plus a generous margin), never fast numbers.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pytest

from service.settings import Settings
from service.store.breaker import BreakerState, CircuitBreaker
from service.store.redis_cache import seal, unseal
from service.store.redis_link import CorruptValue
from service.store.singleflight import SingleFlight
from tests.helpers import REDIS_SERVER, RedisServer, free_port

if TYPE_CHECKING:
    from tests.conftest import Served, ServeFn

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed (.ci/run installs it: apt-get install redis-server)",
)

K = 10
TIMEOUT_MS = 200  # the Redis budget of the outage tests: roomy for a busy 2-core machine
MARGIN = 0.25  # seconds of non-Redis, non-model overhead a request may add on a busy machine


# ---------------------------------------------------------------------------- helpers
def settings_for(data_dir: Path, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "bootstrap": False,
        "redis_url": url,
        "redis_timeout_ms": TIMEOUT_MS,
        "redis_connect_timeout_ms": TIMEOUT_MS,
        "breaker_failures": 3,
        "breaker_reset_seconds": 0.5,
        **overrides,
    }
    return Settings(**values)


def events_of(served: Served, n: int, offset: int = 0) -> list[dict[str, str]]:
    """n real catalogue events (deterministic)."""
    engine = served.state.engine
    assert engine is not None
    ids, surfaces = engine.index.item_ids, engine.index.surfaces
    rows = np.arange(offset, offset + n) * 7 % len(ids)
    return [{"item_id": str(ids[r]), "surface": str(surfaces[r])} for r in rows]


def sample(served: Served, name: str, **labels: str) -> float:
    value = served.state.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def cache_count(served: Served, result: str, op: str = "retrieve") -> float:
    return sample(served, "uniserve_cache_requests_total", op=op, result=result)


def breaker_state(served: Served) -> float:
    return sample(served, "uniserve_redis_breaker_state")


async def post(served: Served, path: str, body: dict[str, Any], status: int = 200) -> Any:
    resp = await served.client.post(path, json=body)
    assert resp.status_code == status, resp.text
    return resp.json()


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


class EngineCalls:
    """Counts and times the engine's model/index calls (wrapping the live engine's methods)."""

    def __init__(self, served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
        engine = served.state.engine
        assert engine is not None
        self.encodes = 0
        self.seconds = 0.0
        for name in ("user_vectors", "retrieve"):
            monkeypatch.setattr(engine, name, self._wrap(name, getattr(engine, name)))

    def _wrap(self, name: str, fn: Any) -> Any:
        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.encodes += name == "user_vectors"

        return wrapped


# ---------------------------------------------------------------------------- cache behaviour
@pytest.mark.anyio
async def test_hit_after_miss_and_no_stale_hit_after_new_events_or_another_index(
    serve: ServeFn, uniserve_data_dir: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    from service.jobs.pipeline import build_and_publish

    user = new_user()
    async with serve(settings_for(uniserve_data_dir, redis_server.url)) as served:
        first, more = events_of(served, 6), events_of(served, 6, 40)
        await post(served, "/v1/events", {"user_id": user, "events": first})
        body = {"user_id": user, "k": K}
        miss = await post(served, "/v1/retrieve", body)
        assert (cache_count(served, "miss"), cache_count(served, "hit")) == (1, 0)
        assert await post(served, "/v1/retrieve", body) == miss
        assert (cache_count(served, "miss"), cache_count(served, "hit")) == (1, 1)
        assert miss == await post(served, "/v1/retrieve", {"events": first, "k": K})

        # new events bump the watermark: the next answer is the whole new history's
        await post(served, "/v1/events", {"user_id": user, "events": more})
        after = await post(served, "/v1/retrieve", body)
        assert after != miss
        assert after == await post(served, "/v1/retrieve", {"events": first + more, "k": K})
        hits = cache_count(served, "hit")
        assert await post(served, "/v1/retrieve", body) == after  # and that is cached again
        assert cache_count(served, "hit") == hits + 1

        # a replica on a newer index version shares this Redis but never its entries
        swapped = tmp_path / "swapped"
        shutil.copytree(uniserve_data_dir, swapped)
        manifest = build_and_publish(swapped / "model", swapped / "indexes", index_type="Flat")
        async with serve(settings_for(swapped, redis_server.url)) as replica:
            assert replica.state.engine is not None
            assert replica.state.engine.index_version == manifest.version != miss["index_version"]
            other = await post(replica, "/v1/retrieve", body)
            assert other["index_version"] == manifest.version
            assert (cache_count(replica, "miss"), cache_count(replica, "hit")) == (1, 0)
            assert await post(replica, "/v1/retrieve", body) == other
            assert cache_count(replica, "hit") == 1
        assert await post(served, "/v1/retrieve", body) == after  # the old replica's entry


@pytest.mark.anyio
async def test_values_are_checked_on_read_so_one_users_result_never_reaches_another(
    serve: ServeFn, uniserve_data_dir: Path, redis_server: RedisServer
) -> None:
    client = redis_server.client()
    async with serve(settings_for(uniserve_data_dir, redis_server.url)) as served:

        async def cached(events: list[dict[str, str]]) -> tuple[Any, bytes]:
            before = set(client.scan_iter("uniserve:v1:retrieve:*"))
            body = await post(served, "/v1/retrieve", {"events": events, "k": K})
            (key,) = set(client.scan_iter("uniserve:v1:retrieve:*")) - before
            return body, key

        alice, alice_key = await cached(events_of(served, 5))
        bob, bob_key = await cached(events_of(served, 5, 100))
        assert alice != bob
        # as a desynchronised connection would: bob's key answers with alice's bytes
        client.set(bob_key, client.get(alice_key) or b"")
        errors = cache_count(served, "error")
        assert (
            await post(served, "/v1/retrieve", {"events": events_of(served, 5, 100), "k": K}) == bob
        )
        assert cache_count(served, "error") == errors + 1
        assert sample(served, "uniserve_redis_calls_total", op="cache_get", result="corrupt") == 1


@pytest.mark.anyio
async def test_concurrent_identical_misses_after_a_flush_encode_once(
    serve: ServeFn,
    uniserve_data_dir: Path,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # all 200 admitted at once (the default pending limit would shed most of such a burst)
    settings = settings_for(uniserve_data_dir, redis_server.url, max_pending_requests=200)
    async with serve(settings) as served:
        body = {"events": events_of(served, 8), "k": K}
        warm = await post(served, "/v1/retrieve", body)
        redis_server.client().flushall()
        calls = EngineCalls(served, monkeypatch)
        misses = cache_count(served, "miss")
        responses = await asyncio.gather(
            *(served.client.post("/v1/retrieve", json=body) for _ in range(200))
        )
        assert [r.status_code for r in responses] == [200] * 200
        assert all(r.json() == warm for r in responses)
        assert calls.encodes == 1
        assert cache_count(served, "miss") == misses + 1  # one lookup for all who came together


# ---------------------------------------------------------------------------- event store
@pytest.mark.anyio
async def test_event_store_feeds_user_id_retrieve_bounds_length_and_expires_idle_users(
    serve: ServeFn, uniserve_data_dir: Path, redis_server: RedisServer
) -> None:
    settings = settings_for(
        uniserve_data_dir, redis_server.url, events_max_per_user=5, events_ttl_seconds=2.0
    )
    async with serve(settings) as served:
        user, other = new_user(), new_user()
        events = events_of(served, 8)
        assert (await post(served, "/v1/events", {"user_id": user, "events": events[:3]}))[
            "stored"
        ] == 3
        stored = await post(served, "/v1/events", {"user_id": user, "events": events[3:]})
        assert stored == {"user_id": user, "stored": 5}  # the newest 5 of 8
        by_user = await post(served, "/v1/retrieve", {"user_id": user, "k": K})
        assert by_user == await post(served, "/v1/retrieve", {"events": events[3:], "k": K})
        store = served.state.events
        kept, watermark = await store.read(user)
        assert [e.item_id for e in kept] == [e["item_id"] for e in events[3:]]
        assert watermark > 0
        events_key, watermark_key = store.keys(user)  # type: ignore[attr-defined]
        client = redis_server.client()
        assert 0 < client.pttl(events_key) <= 2000 and 0 < client.pttl(watermark_key) <= 2000

        await asyncio.sleep(1.0)
        await post(served, "/v1/events", {"user_id": other, "events": events[:2]})
        await asyncio.sleep(1.2)  # user idle 2.2 s > ttl; other only 1.2 s
        resp = await served.client.post("/v1/retrieve", json={"user_id": user, "k": K})
        assert resp.status_code == 404 and resp.json()["error_type"] == "unknown_user"
        assert await store.read(user) == ([], 0)
        assert client.exists(events_key, watermark_key) == 0
        assert len((await store.read(other))[0]) == 2
        # a user who comes back gets a watermark never used before
        _, again = await store.append(user, (await store.read(other))[0])
        assert again > watermark


@pytest.mark.anyio
async def test_events_survive_a_service_restart_and_with_aof_a_redis_restart(
    serve: ServeFn, uniserve_data_dir: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "aof"
    directory.mkdir()
    server = RedisServer(directory, "--appendonly", "yes", "--appendfsync", "always").start()
    user = new_user()
    try:
        settings = settings_for(uniserve_data_dir, server.url)
        async with serve(settings) as served:
            events = events_of(served, 6)
            await post(served, "/v1/events", {"user_id": user, "events": events})
            expected = await post(served, "/v1/retrieve", {"events": events, "k": K})
        async with serve(settings) as served:  # the service restarted: events are in Redis
            assert await post(served, "/v1/retrieve", {"user_id": user, "k": K}) == expected
            server.stop()
            server.start()  # Redis restarted: replayed from its append-only file
            deadline = time.monotonic() + 10
            while (
                resp := await served.client.post("/v1/retrieve", json={"user_id": user, "k": K})
            ).status_code != 200:
                assert time.monotonic() < deadline, resp.text  # breaker reopens within a reset
                await asyncio.sleep(0.1)
            assert resp.json() == expected
    finally:
        server.stop()


# ---------------------------------------------------------------------------- outages
@pytest.mark.anyio
async def test_kill_9_mid_stream_no_5xx_breaker_opens_then_hits_resume(
    serve: ServeFn, uniserve_data_dir: Path, redis_server: RedisServer
) -> None:
    async with serve(settings_for(uniserve_data_dir, redis_server.url)) as served:
        user = new_user()
        await post(served, "/v1/events", {"user_id": user, "events": events_of(served, 4)})
        bodies = [
            {"events": events_of(served, 5, 200), "k": K},  # anonymous
            {"user_id": user, "events": events_of(served, 2, 300), "k": K},  # stored + request
        ]
        expected = [await post(served, "/v1/retrieve", b) for b in bodies]
        statuses: list[int] = []
        states: set[float] = set()
        for i in range(30):
            if i == 10:
                redis_server.kill()
            resp = await served.client.post("/v1/retrieve", json=bodies[i % 2])
            statuses.append(resp.status_code)
            states.add(breaker_state(served))
            if i % 2 == 0 or i < 10:  # (stored events are out of reach while Redis is down)
                assert resp.json() == expected[i % 2]
        assert statuses == [200] * 30  # zero 5xx on reads
        assert cache_count(served, "error") >= 3
        assert 2 in states  # the breaker opened
        # writes fail loudly, reads that need stored events say why
        resp = await served.client.post(
            "/v1/events", json={"user_id": user, "events": bodies[0]["events"]}
        )
        assert resp.status_code == 503 and resp.json()["error_type"] == "backend_unavailable"
        resp = await served.client.post("/v1/retrieve", json={"user_id": new_user(), "k": K})
        assert resp.status_code == 503 and resp.json()["error_type"] == "backend_unavailable"

        redis_server.start()  # same port, empty (no persistence): the service is not restarted
        hits = cache_count(served, "hit")
        deadline = time.monotonic() + 10
        while cache_count(served, "hit") == hits:
            assert time.monotonic() < deadline, "no cache hit after Redis came back"
            assert await post(served, "/v1/retrieve", bodies[0]) == expected[0]
            await asyncio.sleep(0.05)
        assert breaker_state(served) == 0  # closed


@pytest.mark.anyio
async def test_sigstop_costs_each_request_at_most_one_timeout_then_sigcont_recovers(
    serve: ServeFn,
    uniserve_data_dir: Path,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    budget = TIMEOUT_MS / 1000
    async with serve(settings_for(uniserve_data_dir, redis_server.url)) as served:
        user = new_user()
        await post(served, "/v1/events", {"user_id": user, "events": events_of(served, 4)})
        calls = EngineCalls(served, monkeypatch)
        redis_server.signal(signal.SIGSTOP)  # accepts connections, never answers
        try:
            extra: list[float] = []
            states: set[float] = set()
            for i in range(8):
                # anonymous: 4 cache calls without a budget; with a user: the events read
                body: dict[str, Any] = {"events": events_of(served, 3, 10 * i), "k": K}
                if i % 2:
                    body["user_id"] = user
                engine_before, started = calls.seconds, time.perf_counter()
                await post(served, "/v1/retrieve", body)
                extra.append(time.perf_counter() - started - (calls.seconds - engine_before))
                states.add(breaker_state(served))
            assert max(extra) <= budget + MARGIN, extra
            assert 2 in states  # open after 3 failed requests
            skipped = sample(
                served, "uniserve_redis_calls_total", op="cache_get", result="breaker_open"
            )
            assert skipped >= 1
        finally:
            redis_server.signal(signal.SIGCONT)
        body = {"events": events_of(served, 5, 500), "k": K}
        hits = cache_count(served, "hit")
        deadline = time.monotonic() + 10
        while cache_count(served, "hit") == hits:
            assert time.monotonic() < deadline, "no cache hit after SIGCONT"
            await post(served, "/v1/retrieve", body)
            await asyncio.sleep(0.05)
        assert breaker_state(served) == 0


@pytest.mark.anyio
async def test_starts_ready_and_serves_with_redis_unreachable(
    serve: ServeFn, uniserve_data_dir: Path
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    async with serve(settings_for(uniserve_data_dir, url)) as served:
        assert (await served.client.get("/readyz")).status_code == 200
        body = {"events": events_of(served, 5), "k": K}
        first = await post(served, "/v1/retrieve", body)
        assert len(first["items"]) == K
        assert await post(served, "/v1/retrieve", body) == first
        assert cache_count(served, "error") >= 1 and cache_count(served, "hit") == 0
        resp = await served.client.post(
            "/v1/events", json={"user_id": "u", "events": body["events"]}
        )
        assert resp.status_code == 503
        assert resp.json()["error_type"] == "backend_unavailable"
        assert "not stored" in resp.json()["error"]
        metrics = (await served.client.get("/metrics")).text
        assert "uniserve_redis_breaker_state" in metrics
        assert 'uniserve_redis_calls_total{op="ping",result="connection"}' in metrics


# ---------------------------------------------------------------------------- plain objects
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_failures_probes_once_and_closes() -> None:
    clock = FakeClock()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(3, 5.0, clock=clock, on_change=changes.append)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    breaker.record_success()  # a success resets the count of consecutive failures
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now += 5.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow() and not breaker.allow()  # exactly one probe
    breaker.record_failure()  # the probe failed: open for another reset period
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now += 5.0
    assert breaker.allow()
    breaker.abandon()  # the probe was cancelled: the next caller probes
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    assert changes == [BreakerState.OPEN, BreakerState.CLOSED]
    with pytest.raises(ValueError, match="failures"):
        CircuitBreaker(0, 1.0)


@pytest.mark.anyio
async def test_single_flight_shares_one_computation_its_result_and_its_error() -> None:
    flights: SingleFlight[int] = SingleFlight()
    calls = 0
    gate = asyncio.Event()

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return calls

    waiters = [asyncio.ensure_future(flights.do("k", compute)) for _ in range(50)]
    other = asyncio.ensure_future(flights.do("other", compute))
    while calls < 2:  # both computations have started
        await asyncio.sleep(0)
    waiters[0].cancel()  # a caller that goes away does not cancel the computation
    gate.set()
    results = await asyncio.gather(*waiters[1:])
    assert results == [2] * 49 and await other == 2  # two keys, two computations
    assert calls == 2 and len(flights) == 0 and waiters[0].cancelled()
    assert await flights.do("k", compute) == 3  # finished flights are forgotten

    async def boom() -> int:
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    outcomes = await asyncio.gather(
        *(flights.do("e", boom) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, RuntimeError) for o in outcomes)


def test_sealed_values_unseal_only_under_their_own_key() -> None:
    value = seal("uniserve:v1:retrieve:a", b"payload")
    assert unseal("uniserve:v1:retrieve:a", value) == b"payload"
    for key, raw in [("uniserve:v1:retrieve:b", value), ("k", b"raw bytes"), ("k", b"")]:
        with pytest.raises(CorruptValue):
            unseal(key, raw)
    assert orjson.loads(unseal("k", seal("k", b'{"a": 1}'))) == {"a": 1}


def test_redis_settings_are_validated() -> None:
    from pydantic import ValidationError

    assert Settings(redis_url="").redis_url is None  # UNISERVE_REDIS_URL= means unset
    for bad in [
        {"redis_url": "http://localhost:6379"},
        {"redis_timeout_ms": 0},
        {"redis_timeout_ms": 5000},
        {"breaker_failures": 0},
        {"breaker_reset_seconds": 0},
        {"redis_key_prefix": "has space"},
    ]:
        with pytest.raises(ValidationError):
            Settings(**bad)
