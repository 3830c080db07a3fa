"""The HTTP service: the real app, driven through its lifespan, over small real artifacts.

Also the service's plain objects that need no app: the in-process cache, the in-process event
store, the cache key function and the settings validators.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from service.api.schemas import (
    IndexInfo,
    ItemEmbedResponse,
    RankResponse,
    RetrieveResponse,
    UserEmbedResponse,
)
from service.core.serving import ServingCore
from service.settings import Settings
from service.store.cache import InProcessCache, cache_key
from service.store.events import Event, InProcessEventStore
from tests.helpers import blend_term

if TYPE_CHECKING:
    from tests.conftest import Served, ServeFn

K = 10


# ---------------------------------------------------------------------------- helpers
def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def catalogue(api: Served) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, surfaces) of the live index, row order."""
    engine = api.state.engine
    assert engine is not None
    return engine.index.item_ids, engine.index.surfaces


def events_for(item_ids: Any, surfaces: Any = None) -> list[dict[str, str]]:
    if surfaces is None:
        return [{"item_id": str(i)} for i in item_ids]
    return [{"item_id": str(i), "surface": str(s)} for i, s in zip(item_ids, surfaces, strict=True)]


def history(api: Served, n: int = 8, offset: int = 0) -> list[dict[str, str]]:
    """n real events from the catalogue (deterministic)."""
    ids, surfaces = catalogue(api)
    rows = np.arange(offset, offset + n) * 7 % len(ids)
    return events_for(ids[rows], [s or "feed" for s in surfaces[rows]])


def assert_error(resp: Any, status: int, error_type: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "error_type"}, body
    assert body["error_type"] == error_type
    assert isinstance(body["error"], str) and body["error"]
    return str(body["error"])


def assert_ranked(items: list[dict[str, Any]]) -> None:
    scores = [it["score"] for it in items]
    assert scores == sorted(scores, reverse=True)
    ids = [it["item_id"] for it in items]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, str) for i in ids)


async def retrieve(api: Served, **body: Any) -> RetrieveResponse:
    resp = await api.client.post("/v1/retrieve", json=body)
    assert resp.status_code == 200, resp.text
    out = RetrieveResponse.model_validate(resp.json())
    assert_ranked([it.model_dump() for it in out.items])
    return out


# ---------------------------------------------------------------------------- health + index
@pytest.mark.anyio
async def test_health_ready_and_index_info(api: Served) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    info = IndexInfo.model_validate((await api.client.get("/v1/index")).json())
    engine = api.state.engine
    assert engine is not None
    assert info.index_version == ready.json()["index_version"] == engine.manifest.version
    assert info.model_fingerprint == engine.manifest.model_fingerprint
    assert info.count == len(catalogue(api)[0]) and info.dim == engine.embedder.dim
    assert info.metric == "ip"


@pytest.mark.anyio
async def test_not_ready_without_artifacts_then_ready_once_they_exist(
    serve: ServeFn, uniserve_data_dir: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "data"
    async with serve(Settings(data_dir=empty, bootstrap=False)) as served:
        assert (await served.client.get("/healthz")).status_code == 200
        message = assert_error(await served.client.get("/readyz"), 503, "not_ready")
        assert "uniserve serve" in message and "uniserve build-index" in message
        resp = await served.client.post("/v1/retrieve", json={"events": [{"item_id": "1"}], "k": 3})
        assert_error(resp, 503, "not_ready")
        metrics = (await served.client.get("/metrics")).text
        assert "uniserve_index_items 0.0" in metrics
    shutil.copytree(uniserve_data_dir, empty)
    async with serve(Settings(data_dir=empty, bootstrap=False)) as served:
        assert (await served.client.get("/readyz")).status_code == 200
        assert (await served.client.get("/v1/index")).status_code == 200


# ---------------------------------------------------------------------------- retrieve
@pytest.mark.anyio
async def test_retrieve_returns_k_distinct_items_sorted(api: Served) -> None:
    out = await retrieve(api, events=history(api), k=K)
    assert len(out.items) == K
    engine = api.state.engine
    assert engine is not None
    assert out.model_version == engine.model_version
    assert out.index_version == engine.index_version
    ids, _ = catalogue(api)
    assert {it.item_id for it in out.items} <= set(ids.tolist())


@pytest.mark.anyio
async def test_retrieve_surface_filter_is_applied_inside_the_search(api: Served) -> None:
    ids, surfaces = catalogue(api)
    counts = Counter(surfaces.tolist())
    surface_of = dict(zip(ids.tolist(), surfaces.tolist(), strict=True))
    # the rarest surface that still has >= K items: a restrictive filter, k results anyway
    rare = min((s for s, c in counts.items() if c >= K), key=lambda s: counts[s])
    out = await retrieve(api, events=history(api), k=K, surfaces=[rare])
    assert len(out.items) == K
    assert {surface_of[it.item_id] for it in out.items} == {rare}
    # asking for more items than a surface holds returns exactly all of them
    k_all = counts[rare] + 5
    out = await retrieve(api, events=history(api), k=k_all, surfaces=[rare, "no-such-surface"])
    assert sorted(it.item_id for it in out.items) == sorted(ids[surfaces == rare].tolist())


@pytest.mark.anyio
async def test_retrieve_exclude_and_exclude_seen_still_return_k(api: Served) -> None:
    events = history(api)
    first = await retrieve(api, events=events, k=K)
    top = [it.item_id for it in first.items]
    out = await retrieve(api, events=events, k=K, exclude=[*top, "not-an-item"])
    assert len(out.items) == K and not set(top) & {it.item_id for it in out.items}

    seen_events = events + events_for(top)
    seen = {e["item_id"] for e in seen_events}
    out = await retrieve(api, events=seen_events, k=K, exclude_seen=True)
    assert len(out.items) == K and not seen & {it.item_id for it in out.items}


@pytest.mark.anyio
async def test_unknown_events_are_tolerated(api: Served) -> None:
    mixed = [*history(api, 4), {"item_id": "never-seen-item", "surface": "new-surface"}]
    assert len((await retrieve(api, events=mixed, k=K)).items) == K
    unknown = [{"item_id": f"ghost-{i}"} for i in range(5)]
    assert len((await retrieve(api, events=unknown, k=K)).items) == K


@pytest.mark.anyio
async def test_integer_ids_are_accepted_and_returned_as_strings(api: Served) -> None:
    out = await retrieve(api, user_id=None, events=[{"item_id": 12345678901}], k=3)
    assert len(out.items) == 3
    resp = await api.client.post("/v1/users/embed", json={"events": [{"item_id": 7, "surface": 2}]})
    assert resp.status_code == 200, resp.text


# ---------------------------------------------------------------------------- rank + embeddings
@pytest.mark.anyio
async def test_rank_sorts_candidates_and_reports_unknown_ids(api: Served) -> None:
    ids, _ = catalogue(api)
    events = history(api)
    candidates = [str(i) for i in ids[:20]]
    body = {"events": events, "candidates": [*candidates, "nope-1", candidates[0], "nope-2"]}
    resp = await api.client.post("/v1/rank", json=body)
    assert resp.status_code == 200, resp.text
    out = RankResponse.model_validate(resp.json())
    assert_ranked([it.model_dump() for it in out.items])
    assert sorted(it.item_id for it in out.items) == sorted(candidates)
    assert out.unknown == ["nope-1", "nope-2"]
    # reference: the inner product of the user's embedding with the model's item vectors,
    # plus the blend's term of the history (the served score)
    user = (await api.client.post("/v1/users/embed", json={"events": events})).json()
    engine = api.state.engine
    assert engine is not None
    ranked = [it.item_id for it in out.items]
    rows = engine.embedder.item_rows(ranked)
    expected = engine.embedder.item_vectors()[rows] @ np.asarray(user["embedding"], np.float32)
    expected += blend_term(engine.embedder, ranked, [e["item_id"] for e in events])
    np.testing.assert_allclose([it.score for it in out.items], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.anyio
async def test_user_embedding_has_model_dim_and_is_deterministic(api: Served) -> None:
    events = history(api, 12)
    first = await api.client.post("/v1/users/embed", json={"events": events})
    second = await api.client.post("/v1/users/embed", json={"events": events})
    assert first.status_code == second.status_code == 200
    a = UserEmbedResponse.model_validate(first.json())
    b = UserEmbedResponse.model_validate(second.json())
    engine = api.state.engine
    assert engine is not None
    assert len(a.embedding) == engine.embedder.dim
    assert a.embedding == b.embedding and a.model_version == engine.model_version
    other = (await api.client.post("/v1/users/embed", json={"events": history(api, 12, 5)})).json()
    assert other["embedding"] != a.embedding


@pytest.mark.anyio
async def test_items_embed_known_and_cold_start_items(api: Served) -> None:
    engine = api.state.engine
    assert engine is not None
    ids, surfaces = catalogue(api)
    fields = [f for f in engine.embedder.metadata_fields if f != "surface"]
    items = [
        {"item_id": str(ids[0]), "surface": str(surfaces[0]) or None},
        {"surface": "feed", "features": dict.fromkeys(fields, "x")},
        {"item_id": "brand-new-item"},
    ]
    items[0] = {k: v for k, v in items[0].items() if v is not None}
    resp = await api.client.post("/v1/items/embed", json={"items": items})
    assert resp.status_code == 200, resp.text
    out = ItemEmbedResponse.model_validate(resp.json())
    vectors = np.asarray(out.embeddings)
    assert vectors.shape == (3, engine.embedder.dim) and np.isfinite(vectors).all()

    resp = await api.client.post(
        "/v1/items/embed", json={"items": [{"features": {"no_such_field": "x"}}]}
    )
    assert "no_such_field" in assert_error(resp, 422, "invalid_input")


# ---------------------------------------------------------------------------- events + cache
@pytest.mark.anyio
async def test_unknown_user_without_events_is_404(api: Served) -> None:
    user = new_user()
    for path, extra in [("/v1/retrieve", {"k": K}), ("/v1/users/embed", {})]:
        resp = await api.client.post(path, json={"user_id": user, **extra})
        assert user in assert_error(resp, 404, "unknown_user")
    resp = await api.client.post("/v1/rank", json={"user_id": user, "candidates": ["1"]})
    assert_error(resp, 404, "unknown_user")


@pytest.mark.anyio
async def test_events_then_retrieve_by_user_id_and_cache_invalidation(api: Served) -> None:
    user = new_user()
    first, more = history(api, 6), history(api, 6, 40)
    resp = await api.client.post("/v1/events", json={"user_id": user, "events": first})
    assert resp.json() == {"user_id": user, "stored": 6}

    by_user = await retrieve(api, user_id=user, k=K)
    assert by_user == await retrieve(api, events=first, k=K)  # stored events are the history
    hits_before = api.state.metrics.cache.labels("retrieve", "hit")._value.get()
    assert await retrieve(api, user_id=user, k=K) == by_user
    assert api.state.metrics.cache.labels("retrieve", "hit")._value.get() == hits_before + 1

    resp = await api.client.post("/v1/events", json={"user_id": user, "events": more})
    assert resp.json()["stored"] == 12
    # the cached result is not served again: the answer is that of the whole new history
    assert await retrieve(api, user_id=user, k=K) == await retrieve(api, events=first + more, k=K)
    # stored events come first, then the request's
    extra = history(api, 3, 90)
    both = await retrieve(api, user_id=user, events=extra, k=K)
    assert both == await retrieve(api, events=first + more + extra, k=K)
    seen = {e["item_id"] for e in first + more}
    out = await retrieve(api, user_id=user, k=K, exclude_seen=True)
    assert len(out.items) == K and not seen & {it.item_id for it in out.items}


# ---------------------------------------------------------------------------- bad input
BAD_BODIES: list[tuple[str, str | dict[str, Any], str]] = [
    ("/v1/retrieve", '{"events": [{"item_id": "1"}], "k": ', "JSON"),
    ("/v1/retrieve", "[1, 2]", "body"),
    ("/v1/retrieve", {"events": [{"item_id": "1"}], "k": "5"}, "k"),
    ("/v1/retrieve", {"events": [{"item_id": "1"}], "k": 2.5}, "k"),
    ("/v1/retrieve", {"events": [{"item_id": "1"}], "k": True}, "k"),
    ("/v1/retrieve", {"events": [{"item_id": "1"}], "k": 0}, "k"),
    ("/v1/retrieve", {"events": [{"item_id": "1"}], "k": -3}, "k"),
    ("/v1/retrieve", {"events": [{"item_id": "1"}], "k": 1001}, "k"),
    ("/v1/retrieve", {"events": [{"item_id": "1"}]}, "k"),
    ("/v1/retrieve", {"events": [], "k": 5}, "events"),
    ("/v1/retrieve", {"k": 5}, "user_id"),
    ("/v1/retrieve", {"events": [{"item_id": "1"}], "k": 5, "colour": "red"}, "colour"),
    ("/v1/retrieve", {"events": [{"item_id": "1", "extra": 1}], "k": 5}, "events[0].extra"),
    ("/v1/retrieve", {"events": [{"item_id": True}], "k": 5}, "events[0].item_id"),
    ("/v1/retrieve", {"events": [{"item_id": 1.5}], "k": 5}, "events[0].item_id"),
    ("/v1/retrieve", {"events": [{"item_id": None}], "k": 5}, "events[0].item_id"),
    ("/v1/retrieve", {"events": [{"item_id": ""}], "k": 5}, "events[0].item_id"),
    ("/v1/retrieve", {"user_id": False, "k": 5}, "user_id"),
    ("/v1/retrieve", {"events": [{"item_id": "1"}], "k": 5, "surfaces": []}, "surfaces"),
    ("/v1/retrieve", {"events": [{"item_id": "1"}], "k": 5, "exclude_seen": "yes"}, "exclude_seen"),
    ("/v1/events", {"user_id": "u", "events": []}, "events"),
    ("/v1/events", {"events": [{"item_id": "1"}]}, "user_id"),
    ("/v1/events", {"user_id": "u", "events": [{"item_id": "1"}] * 1001}, "events"),
    ("/v1/rank", {"events": [{"item_id": "1"}], "candidates": []}, "candidates"),
    ("/v1/users/embed", {}, "user_id"),
    ("/v1/users/embed", {"user_id": "u", "multi": "yes"}, "multi"),
    ("/v1/retrieve", {"events": [{"item_id": "1"}], "k": 5, "mode": "many"}, "mode"),
    ("/v1/items/embed", {"items": []}, "items"),
    ("/v1/items/embed", {"items": [{"item_id": "1"}, {}]}, "items[1]"),
    ("/v1/items/embed", {"items": [{"features": {"a": [1]}}]}, "items[0].features.a"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "body", "named"), BAD_BODIES)
async def test_bad_input_is_422_naming_the_field(
    api: Served, path: str, body: str | dict[str, Any], named: str
) -> None:
    if isinstance(body, str):
        resp = await api.client.post(
            path, content=body, headers={"content-type": "application/json"}
        )
    else:
        resp = await api.client.post(path, json=body)
    assert named in assert_error(resp, 422, "invalid_input")


@pytest.mark.anyio
async def test_body_without_json_content_type_is_422_saying_so(api: Served) -> None:
    resp = await api.client.post(
        "/v1/retrieve", content=b'{"events": [{"item_id": "1"}], "k": 3}', headers={}
    )
    assert "Content-Type: application/json" in assert_error(resp, 422, "invalid_input")


@pytest.mark.anyio
async def test_oversized_body_is_413(api: Served) -> None:
    limit = api.state.settings.max_body_bytes
    big = {"events": [{"item_id": "x" * 200}] * (limit // 200 + 10), "k": 5}
    assert_error(await api.client.post("/v1/retrieve", json=big), 413, "too_large")

    async def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    resp = await api.client.post(
        "/v1/retrieve", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(resp, 413, "too_large")


@pytest.mark.anyio
async def test_unknown_routes_and_methods_use_the_error_shape(api: Served) -> None:
    assert_error(await api.client.get("/v2/nothing"), 404, "not_found")
    resp = await api.client.get("/v1/retrieve")
    assert_error(resp, 405, "method_not_allowed")
    assert resp.headers["allow"] == "POST"


@pytest.mark.anyio
async def test_unhandled_errors_are_500_internal(serve: ServeFn, tmp_path: Path) -> None:
    async with serve(Settings(data_dir=tmp_path, bootstrap=False)) as served:

        async def boom() -> None:
            raise RuntimeError("a bug")

        served.app.add_api_route("/boom", boom)
        resp = await served.client.get("/boom")
        assert assert_error(resp, 500, "internal") == "internal error"  # no internals leak


@pytest.mark.anyio
async def test_overload_is_429_not_a_queue(api: Served) -> None:
    engine = api.state.engine
    assert engine is not None
    ids, _ = catalogue(api)
    body = {"events": history(api, 3, 301), "candidates": ids[:5].tolist()}
    engine.inflight = engine.max_inflight  # as if max_inflight calls were running
    try:
        resp = await api.client.post("/v1/rank", json=body)
    finally:
        engine.inflight = 0
    assert "max_inflight" in assert_error(resp, 429, "overloaded")


@pytest.mark.anyio
async def test_full_batch_queue_is_429_at_once(serve: ServeFn, uniserve_data_dir: Path) -> None:
    from service.core.engine import EncodeJob
    from tests.helpers import BlockedEmbedder

    settings = Settings(
        data_dir=uniserve_data_dir, bootstrap=False, batch_queue_size=1, batch_max_size=1
    )
    async with serve(settings) as served:
        encoder = served.state.reloader.admission.encoder  # type: ignore[union-attr]
        blocked = BlockedEmbedder()
        job = EncodeJob(blocked, ([], []))  # type: ignore[arg-type]
        held = [asyncio.ensure_future(encoder.submit(job))]  # runs, blocked
        for _ in range(10_000):  # bounded waits: a bug fails the test instead of hanging it
            if encoder.running == 1:
                break
            await asyncio.sleep(0.001)
        held.append(asyncio.ensure_future(encoder.submit(job)))  # fills the queue of 1
        for _ in range(10_000):
            if encoder.depth == 1:
                break
            await asyncio.sleep(0.001)
        try:
            resp = await served.client.post(
                "/v1/users/embed", json={"events": history(served, 3, 302)}
            )
        finally:
            blocked.release.set()
            await asyncio.gather(*held)
        assert "encode queue is full" in assert_error(resp, 429, "overloaded")
        metrics = (await served.client.get("/metrics")).text
        assert 'uniserve_batch_size_count{stage="encode"}' in metrics
        ok = await served.client.post("/v1/users/embed", json={"events": history(served, 3, 302)})
        assert ok.status_code == 200  # recovers as soon as the queue drains


class BrokenCache:
    """A cache whose backend is down: every call raises."""

    async def get(self, key: str) -> bytes | None:
        raise ConnectionError("cache is down")

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        raise ConnectionError("cache is down")


@pytest.mark.anyio
async def test_serving_core_fails_open_when_the_cache_is_down(api: Served) -> None:
    engine = api.state.engine
    assert engine is not None
    seen: list[tuple[str, str]] = []
    store = InProcessEventStore(max_per_user=10, max_users=10, ttl_seconds=60)
    core = ServingCore(
        engine, BrokenCache(), store, cache_ttl=60, on_cache=lambda *r: seen.append(r)
    )
    events = [Event(str(i)) for i in catalogue(api)[0][:5]]
    body = orjson.loads(await core.retrieve(None, events, k=K))
    assert len(body["items"]) == K
    assert seen and {result for _, result in seen} == {"error"}


# ---------------------------------------------------------------------------- metrics
@pytest.mark.anyio
async def test_metrics_count_requests_by_route_template_only(api: Served) -> None:
    await api.client.get("/healthz")
    await api.client.get(f"/random/{uuid.uuid4().hex}")
    await api.client.get("/metrics")  # so /metrics itself has its series before we compare
    before = (await api.client.get("/metrics")).text
    assert 'uniserve_requests_total{route="/healthz",status="2xx"}' in before
    assert 'route="unmatched"' in before
    for _ in range(5):
        await api.client.get(f"/random/{uuid.uuid4().hex}")
    after = (await api.client.get("/metrics")).text

    def series(text: str) -> set[str]:
        return {line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}

    assert series(after) == series(before)
    assert "/random/" not in after
    assert "uniserve_cache_requests_total" in after and "uniserve_index_items" in after


# ---------------------------------------------------------------------------- plain objects
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
async def test_in_process_cache_expires_entries_after_ttl() -> None:
    clock = FakeClock()
    cache = InProcessCache(max_entries=10, clock=clock)
    await cache.set("a", b"1", ttl=5.0)
    await cache.set("never", b"x", ttl=0.0)
    clock.now += 4.9
    assert await cache.get("a") == b"1"
    assert await cache.get("never") is None
    clock.now += 0.1
    assert await cache.get("a") is None and len(cache) == 0


@pytest.mark.anyio
async def test_in_process_cache_evicts_least_recently_used() -> None:
    cache = InProcessCache(max_entries=3, clock=FakeClock())
    for key in "abc":
        await cache.set(key, key.encode(), ttl=60)
    assert await cache.get("a") == b"a"  # a is now the most recently used
    await cache.set("d", b"d", ttl=60)
    assert len(cache) == 3
    assert await cache.get("b") is None
    assert [await cache.get(k) for k in "acd"] == [b"a", b"c", b"d"]


def test_cache_key_depends_on_versions_watermark_and_params() -> None:
    base = {"model_version": "m1", "index_version": "i1", "watermark": 3}
    key = cache_key("retrieve", **base, params={"k": 5, "user": "u"})
    assert key == cache_key("retrieve", **base, params={"user": "u", "k": 5})
    variants = [
        cache_key("rank", **base, params={"k": 5, "user": "u"}),
        cache_key("retrieve", **{**base, "model_version": "m2"}, params={"k": 5, "user": "u"}),
        cache_key("retrieve", **{**base, "index_version": "i2"}, params={"k": 5, "user": "u"}),
        cache_key("retrieve", **{**base, "watermark": 4}, params={"k": 5, "user": "u"}),
        cache_key("retrieve", **base, params={"k": 6, "user": "u"}),
    ]
    assert len({key, *variants}) == 6
    secret = cache_key("retrieve", **base, params={"user": "alice@example.com"})
    assert "alice" not in secret  # ids are hashed, never kept in clear


@pytest.mark.anyio
async def test_event_store_bounds_events_per_user_and_users() -> None:
    store = InProcessEventStore(max_per_user=3, max_users=2, ttl_seconds=100, clock=FakeClock())
    stored, _ = await store.append("a", [Event(str(i)) for i in range(5)])
    assert stored == 3
    assert [e.item_id for e in await store.recent("a")] == ["2", "3", "4"]  # oldest dropped
    await store.append("b", [Event("x")])
    await store.append("a", [Event("5")])  # a is now the most recently active
    await store.append("c", [Event("y")])  # evicts b
    assert len(store) == 2
    assert await store.recent("b") == [] and await store.watermark("b") == 0
    assert [e.item_id for e in await store.recent("a")] == ["3", "4", "5"]


@pytest.mark.anyio
async def test_event_store_watermarks_grow_and_are_never_reused() -> None:
    store = InProcessEventStore(max_per_user=5, max_users=1, ttl_seconds=100, clock=FakeClock())
    assert await store.watermark("a") == 0
    _, w1 = await store.append("a", [Event("1")])
    _, w2 = await store.append("a", [Event("2")])
    assert 0 < w1 < w2 == await store.watermark("a")
    await store.append("b", [Event("3")])  # evicts a
    _, w3 = await store.append("a", [Event("1")])  # a comes back with the same events
    assert w3 > w2


@pytest.mark.anyio
async def test_event_store_forgets_idle_users() -> None:
    clock = FakeClock()
    store = InProcessEventStore(max_per_user=5, max_users=10, ttl_seconds=60, clock=clock)
    await store.append("idle", [Event("1")])
    clock.now += 30
    await store.append("active", [Event("2")])
    clock.now += 30  # idle: 60 s since its last append; active: 30 s
    assert await store.recent("idle") == [] and await store.watermark("idle") == 0
    assert [e.item_id for e in await store.recent("active")] == ["2"]
    assert len(store) == 1


def test_settings_reject_unsafe_values_and_read_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unsafe: list[dict[str, Any]] = [
        {"max_k": 0},
        {"max_body_bytes": 10**10},
        {"events_max_per_user": 0},
        {"cache_ttl_seconds": -1},
        {"port": 70000},
        {"host": " "},
        {"torch_threads": 0},
    ]
    for bad in unsafe:
        with pytest.raises(ValidationError):
            Settings(**bad)
    monkeypatch.setenv("UNISERVE_MAX_K", "50")
    monkeypatch.setenv("UNISERVE_DATA_DIR", "/srv/uni")
    settings = Settings()
    assert settings.max_k == 50
    assert settings.model_path == Path("/srv/uni/model")
    assert settings.index_path == Path("/srv/uni/indexes")
    assert Settings(model_dir=Path("/m")).model_path == Path("/m")
