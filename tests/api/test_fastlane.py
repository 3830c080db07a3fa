"""The fast lane (`service.api.fastlane`): hot POST routes answered without FastAPI's routing and
dependency solving, exactly as the full app answers them.

Every request below goes to two real apps over the same artifacts, one with the lane and one
without (its route table emptied), and the answers must be the same: status, error type and
message, and body. The lane must also really be taken on the happy path (FastAPI's dependency
solver never runs for it) and never on an error path (the full app answers those).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastapi.routing
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from service.api.fastlane import fast_routes
from service.api.routes import ROUTERS
from service.api.schemas import (
    STR_ID_MODELS,
    EventsRequest,
    RankRequest,
    RetrieveRequest,
    UserEmbedRequest,
)
from service.api.shedding import COMPUTE_ROUTES
from service.settings import Settings
from service.store.events import EventStoreUnavailable

if TYPE_CHECKING:
    from tests.conftest import Served, ServeFn

LANE_ROUTES = {
    "/v1/retrieve",
    "/v1/rank",
    "/v1/users/embed",
    "/v1/items/embed",
    "/v1/events",
    "/v1/shard/search",
}


def test_the_lane_serves_the_post_routes_of_a_body_model_and_the_state() -> None:
    routes = fast_routes(r for router in ROUTERS for r in router.routes)
    assert set(routes) == LANE_ROUTES
    assert set(routes) >= COMPUTE_ROUTES  # every route the load shedder counts
    assert {fr.route.path for fr in routes.values()} == LANE_ROUTES  # the metrics' template


@asynccontextmanager
async def two_apps(
    serve: ServeFn, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Served, Served]]:
    """(with the lane, without it) over the same settings."""
    async with serve(settings) as lane:
        with monkeypatch.context() as patch:
            patch.setattr("service.api.app.fast_routes", lambda routes: {})
            async with serve(settings) as full:
                assert not _lane_of(full).routes and _lane_of(lane).routes
                yield lane, full


def _lane_of(served: Served) -> Any:
    from service.api.fastlane import FastLane

    app = served.app.middleware_stack or served.app.build_middleware_stack()
    served.app.middleware_stack = app
    while not isinstance(app, FastLane):
        app = app.app
    return app


def _requests(ids: list[str]) -> list[tuple[str, bytes, dict[str, str]]]:
    """(path, body, headers): valid requests of every lane route, then error cases of each
    kind the full app answers (validation, strict JSON, content type, limits, not found)."""
    json_h = {"content-type": "application/json"}
    user = f"user-{uuid.uuid4().hex[:8]}"
    events = [{"item_id": i, "surface": "feed"} for i in ids[:6]]

    def j(path: str, body: Any, headers: dict[str, str] = json_h) -> tuple[str, bytes, dict]:
        return path, orjson.dumps(body), headers

    return [
        j("/v1/retrieve", {"events": events, "k": 5}),
        j("/v1/retrieve", {"events": events, "k": 3, "exclude_seen": True, "exclude": ids[7:9]}),
        j("/v1/rank", {"events": events, "candidates": [*ids[10:14], "no-such-item"]}),
        j("/v1/users/embed", {"events": events}),
        j("/v1/items/embed", {"items": [{"item_id": ids[0]}, {"features": {"title": "a b"}}]}),
        j("/v1/events", {"user_id": user, "events": events}),
        j("/v1/retrieve", {"user_id": user, "k": 4}),  # the stored events just sent
        j(
            "/v1/retrieve",
            {"events": [{"item_id": int(ids[0]) if ids[0].isdigit() else 7}], "k": 2},
        ),
        j("/v1/shard/search", {"vector": [0.1] * 8, "k": 3}),  # wrong dimension: 422
        j("/v1/retrieve", {"user_id": "nobody-" + user, "k": 4}),  # 404 unknown_user
        j("/v1/retrieve", {"events": events, "k": 10**6}),  # over max_k: check_limits
        j("/v1/retrieve", {"events": events, "k": 0}),
        j("/v1/retrieve", {"events": events, "k": 5, "bogus": 1}),
        j("/v1/retrieve", {}),
        j("/v1/retrieve", [1, 2]),
        j("/v1/rank", {"events": events, "candidates": []}),
        ("/v1/retrieve", b'{"events": [{"item_id": "1"}], "k": NaN}', json_h),
        ("/v1/retrieve", b'{"events": [{"item_id": "1"}], "k": 3', json_h),
        ("/v1/retrieve", b'{"k": [[[[[[[[[[1]]]]]]]]]]}', json_h),
        ("/v1/retrieve", b"", json_h),
        ("/v1/retrieve", b'{"events": [{"item_id": "1"}], "k": 3}', {}),
        ("/v1/retrieve", b'{"events": [{"item_id": "1"}], "k": 3}', {"content-type": "text/plain"}),
        j("/v1/retrieve", {"events": events, "k": 5}, {"content-type": "application/x+json"}),
        j("/v1/retrieve/", {"events": events, "k": 5}),
    ]


@pytest.mark.anyio
async def test_the_lane_answers_every_request_as_the_full_app_does(
    serve: ServeFn, uniserve_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=uniserve_data_dir, bootstrap=False)
    async with two_apps(serve, settings, monkeypatch) as (lane, full):
        engine = lane.state.engine
        assert engine is not None
        ids = [str(i) for i in engine.index.item_ids[:20]]
        statuses = set()
        for path, body, headers in _requests(ids):
            a = await lane.client.post(path, content=body, headers=headers)
            b = await full.client.post(path, content=body, headers=headers)
            assert a.status_code == b.status_code, (path, body, a.text, b.text)
            assert a.headers.get("content-type") == b.headers.get("content-type"), (path, a.text)
            assert a.content == b.content, (path, body)
            statuses.add(a.status_code)
        assert statuses == {200, 307, 404, 422}  # 307: the trailing-slash redirect
        # the metrics label lane requests with their route template, as the full app does
        text = (await lane.client.get("/metrics")).text
        assert 'route="/v1/rank"' in text and 'route="/v1/retrieve"' in text


@pytest.mark.anyio
async def test_the_happy_path_skips_fastapis_dependency_solver_and_errors_do_not(
    api: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    solve = fastapi.routing.solve_dependencies

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return await solve(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    engine = api.state.engine
    assert engine is not None
    events = [{"item_id": str(i)} for i in engine.index.item_ids[:5]]
    resp = await api.client.post("/v1/retrieve", json={"events": events, "k": 3})
    assert resp.status_code == 200 and len(resp.json()["items"]) == 3
    assert calls == []
    resp = await api.client.post("/v1/retrieve", json={"events": events, "k": -1})
    assert resp.status_code == 422 and resp.json()["error_type"] == "invalid_input"
    assert calls == [1]  # the full app answered the invalid body
    assert (await api.client.get("/v1/index")).status_code == 200  # other routes: FastAPI's
    assert calls == [1, 1]


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.anyio
async def test_a_service_error_from_a_lane_route_is_answered_and_counted(api: Served) -> None:
    engine = api.state.engine
    assert engine is not None
    events = [{"item_id": str(i)} for i in engine.index.item_ids[:5]]
    body = {"events": events, "candidates": [str(i) for i in engine.index.item_ids[5:9]]}
    rejected = 'uniserve_rejected_requests_total{reason="overloaded"}'
    served = 'uniserve_requests_total{route="/v1/rank",status="4xx"}'
    before = (await api.client.get("/metrics")).text
    engine.inflight = engine.max_inflight  # the engine refuses: ServiceError(overloaded)
    try:
        resp = await api.client.post("/v1/rank", json=body)
    finally:
        engine.inflight = 0
    assert resp.status_code == 429 and resp.json()["error_type"] == "overloaded"
    assert "max_inflight" in resp.json()["error"]
    after = (await api.client.get("/metrics")).text
    assert _sample(after, rejected) == _sample(before, rejected) + 1
    assert _sample(after, served) == _sample(before, served) + 1


@pytest.mark.anyio
async def test_a_lane_routes_error_type_reaches_the_rejection_metric(
    api: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 503 counts as not_ready unless the answer names its type; backend_unavailable is only
    counted as such when the lane left the error type for the metrics middleware."""

    async def down(user_id: str) -> Any:
        raise EventStoreUnavailable("event store unreachable")

    monkeypatch.setattr(api.state.events, "read", down)
    series = 'uniserve_rejected_requests_total{reason="backend_unavailable"}'
    before = _sample((await api.client.get("/metrics")).text, series)
    resp = await api.client.post("/v1/retrieve", json={"user_id": "someone", "k": 3})
    assert resp.status_code == 503 and resp.json()["error_type"] == "backend_unavailable"
    assert _sample((await api.client.get("/metrics")).text, series) == before + 1


@pytest.mark.anyio
@pytest.mark.parametrize("otel", [False, True])
async def test_fastapis_telemetry_looks_for_a_provider_only_when_switched_on(
    serve: ServeFn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, otel: bool
) -> None:
    trace = pytest.importorskip("opentelemetry.trace")  # absent: FastAPI has no telemetry
    looked = []
    provider = trace.get_tracer_provider

    def counted() -> Any:
        looked.append(1)
        return provider()

    monkeypatch.setattr(trace, "get_tracer_provider", counted)
    async with serve(Settings(data_dir=tmp_path, bootstrap=False, otel_telemetry=otel)) as served:
        looked.clear()
        for _ in range(3):
            assert (await served.client.get("/healthz")).status_code == 200
    assert bool(looked) is otel


# ---------------------------------------------------------------------------- str-id variants
_ID = st.one_of(
    st.text(min_size=0, max_size=3),
    st.just("x" * 256),
    st.just("x" * 257),
    st.integers(-(2**54), 2**54),
    st.sampled_from([5.0, 5.5, True, None, [], {}]),
)
_EVENT = st.dictionaries(
    st.sampled_from(["item_id", "surface", "ts", "extra"]),
    st.one_of(_ID, st.floats(allow_nan=False), st.just(1)),
    max_size=4,
)
_BODY = st.fixed_dictionaries(
    {},
    optional={
        "user_id": _ID,
        "events": st.lists(_EVENT, max_size=4),
        "k": st.sampled_from([1, 5, 5.0, 0, "5", True]),
        "surfaces": st.lists(_ID, max_size=3),
        "exclude": st.lists(_ID, max_size=3),
        "candidates": st.lists(_ID, max_size=3),
        "exclude_seen": st.sampled_from([True, "yes"]),
        "multi": st.sampled_from([False, 1]),
        "bogus": st.just(1),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_BODY)
def test_a_str_id_variant_accepts_only_what_its_model_accepts_with_equal_values(
    body: dict[str, Any],
) -> None:
    for model, variant in STR_ID_MODELS.items():
        assert issubclass(variant, model)  # the endpoint gets an instance of its own model
        try:
            fast = variant.model_validate(body)
        except ValidationError:
            continue
        assert model.model_validate(body).model_dump() == fast.model_dump(), (model, body)


def test_a_str_id_variant_accepts_a_typical_body() -> None:
    events = [{"item_id": f"i{i}", "surface": "feed"} for i in range(50)] + [{"item_id": "j"}]
    bodies = {
        RetrieveRequest: {"events": events, "k": 10, "exclude": ["a"], "surfaces": ["feed"]},
        RankRequest: {"user_id": "u", "events": events, "candidates": ["a", "b"]},
        UserEmbedRequest: {"events": events, "multi": True},
        EventsRequest: {"user_id": "u", "events": events},
    }
    assert set(bodies) == set(STR_ID_MODELS)
    for model, body in bodies.items():
        fast = STR_ID_MODELS[model].model_validate(body)
        assert fast.model_dump() == model.model_validate(body).model_dump()
