"""Early load shedding through the real app (real model, real FAISS index) with compute requests
held in progress: the fixed limit, and the adaptive one applied and moved by what it measures
(its control law alone: tests/core/test_limit.py). No timing assertions: requests are held by a
blocked encoder and released by the test, never by sleeping a duration."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from service.api.shedding import COMPUTE_ROUTES
from service.core.engine import EncodeJob
from service.core.limit import AdaptiveLimit, PendingLimit
from service.settings import Settings
from tests.helpers import BlockedEmbedder

if TYPE_CHECKING:
    from tests.conftest import ServeFn

pytestmark = pytest.mark.anyio


def test_admission_settings_are_validated() -> None:
    settings = Settings()
    assert settings.admission == "adaptive" and settings.max_pending_requests == 40
    assert settings.pending_ceiling == settings.admission_max_limit == 1024
    assert Settings(admission="fixed").pending_ceiling == 40
    with pytest.raises(ValueError):
        Settings(max_pending_requests=0)
    with pytest.raises(ValueError):
        Settings(admission="lifo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got 2 and \\[4, 1024\\]"):
        Settings(max_pending_requests=2)  # the adaptive limit would start below its floor
    Settings(admission="fixed", max_pending_requests=2)  # a fixed limit has no such bounds


async def wait_until(condition: Any) -> None:
    for _ in range(10_000):  # bounded: a bug fails the test instead of hanging it
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


async def test_requests_beyond_the_limit_are_shed_before_their_body_is_read(
    serve: ServeFn, uniserve_data_dir: Path
) -> None:
    settings = Settings(
        data_dir=uniserve_data_dir, bootstrap=False, admission="fixed", max_pending_requests=1
    )
    async with serve(settings) as served:
        assert isinstance(served.state.pending, PendingLimit)
        engine = served.state.engine
        assert engine is not None
        item_ids = engine.embedder.item_ids
        events = [{"item_id": str(i)} for i in item_ids[:5]]
        encoder = served.state.reloader.admission.encoder  # type: ignore[union-attr]
        blocked = BlockedEmbedder()
        holder = asyncio.ensure_future(
            encoder.submit(EncodeJob(blocked, ([], [])))  # type: ignore[arg-type]
        )
        await wait_until(lambda: encoder.running == 1)
        # the one admitted compute request: in progress, waiting for the blocked encoder
        admitted = asyncio.ensure_future(
            served.client.post("/v1/users/embed", json={"events": events})
        )
        await wait_until(lambda: served.state.pending.pending == 1)
        try:
            shed = await served.client.post("/v1/retrieve", json={"events": events, "k": 3})
            # not valid JSON: a 429 rather than a 422 shows the body was never parsed
            unread = await served.client.post(
                "/v1/rank", content=b"{not json", headers={"Content-Type": "application/json"}
            )
            # routes that do not compute are never shed
            health = await served.client.get("/healthz")
            ingest = await served.client.post(
                "/v1/events", json={"user_id": "shed-user", "events": events[:1]}
            )
        finally:
            blocked.release.set()
            await holder
        assert (await admitted).status_code == 200  # the admitted request completes
        for resp in (shed, unread):
            assert resp.status_code == 429, resp.text
            body = resp.json()
            assert body["error_type"] == "overloaded"
            assert "UNISERVE_MAX_PENDING_REQUESTS=1" in body["error"]
            assert resp.headers["Retry-After"] == "1"
        assert health.status_code == 200 and ingest.status_code == 200
        assert served.state.pending.pending == 0
        again = await served.client.post("/v1/retrieve", json={"events": events, "k": 3})
        assert again.status_code == 200  # admitted again as soon as the load drops
        assert len(again.json()["items"]) == 3
        metrics = (await served.client.get("/metrics")).text
        # shed requests are labelled by their route template, not "unmatched"
        assert 'uniserve_requests_total{route="/v1/rank",status="4xx"} 1.0' in metrics
        assert 'uniserve_requests_total{route="/v1/retrieve",status="4xx"} 1.0' in metrics


def test_compute_routes_exist_in_the_app() -> None:
    """The shed list names real routes: a renamed route must not silently escape shedding."""
    from service.api.app import create_app

    paths = create_app(Settings(bootstrap=False)).openapi()["paths"]
    assert all("post" in paths[route] for route in COMPUTE_ROUTES)


async def test_the_adaptive_limit_is_applied_and_moves_with_what_it_measures(
    serve: ServeFn, uniserve_data_dir: Path
) -> None:
    """The default limit starts at max_pending_requests (here 1): a second compute request in
    progress gets the usual 429. An answer ends a measurement window (shortened to one answer
    here) in which the limit was reached at a latency under the target, so the limit grows (to
    its ceiling, 2): now two are admitted and the third is shed. /metrics shows the limit."""
    settings = Settings(
        data_dir=uniserve_data_dir,
        bootstrap=False,
        max_pending_requests=1,
        admission_min_limit=1,
        admission_max_limit=2,
        admission_target_ms=10_000,  # every latency here is well under it
        cache_max_entries=0,  # held requests, not answers from the cache
    )
    async with serve(settings) as served:
        limit = served.state.pending
        assert isinstance(limit, AdaptiveLimit) and limit.limit == 1
        limit.window, limit.min_answers = 0.0, 1  # a window per answer
        engine = served.state.engine
        assert engine is not None
        events = [{"item_id": str(i)} for i in engine.embedder.item_ids[:5]]
        encoder = served.state.reloader.admission.encoder  # type: ignore[union-attr]

        async def held_then_shed(admitted: int) -> tuple[list[int], Any, str]:
            """`admitted` requests held in progress, one more shed: (the held ones' statuses
            once released, the shed answer, /metrics read while they were held)."""
            blocked = BlockedEmbedder()
            holder = asyncio.ensure_future(
                encoder.submit(EncodeJob(blocked, ([], [])))  # type: ignore[arg-type]
            )
            await wait_until(lambda: encoder.running == 1)
            held = [
                asyncio.ensure_future(
                    served.client.post("/v1/users/embed", json={"events": events})
                )
                for _ in range(admitted)
            ]
            await wait_until(lambda: limit.pending == admitted)
            try:
                shed = await served.client.post("/v1/retrieve", json={"events": events, "k": 3})
                metrics = (await served.client.get("/metrics")).text
            finally:
                blocked.release.set()
                await holder
            return [(await r).status_code for r in held], shed, metrics

        statuses, shed, metrics = await held_then_shed(1)
        assert statuses == [200]
        assert "uniserve_admission_limit 1.0" in metrics
        assert "uniserve_admission_pending 1.0" in metrics
        assert shed.status_code == 429 and shed.headers["Retry-After"] == "1"
        assert shed.json()["error_type"] == "overloaded"
        assert "UNISERVE_ADMISSION=adaptive, the limit now 1 " in shed.json()["error"]
        assert limit.limit == 2  # reached, answered well under the target: raised

        statuses, shed, metrics = await held_then_shed(2)
        assert statuses == [200, 200]
        assert "uniserve_admission_limit 2.0" in metrics
        assert shed.status_code == 429
        assert "the limit now 2 " in shed.json()["error"]
        assert limit.pending == 0


async def test_the_loop_watcher_reports_a_late_loop_to_the_limit_and_metrics(
    serve: ServeFn, uniserve_data_dir: Path
) -> None:
    """The lifespan ticks on the event loop: a tick held up 50 ms (the loop blocked on purpose)
    reaches the adaptive limit as a late tick and `uniserve_event_loop_lag_seconds` as one
    over 10 ms."""
    settings = Settings(data_dir=uniserve_data_dir, bootstrap=False)
    async with serve(settings) as served:
        limit = served.state.pending
        assert isinstance(limit, AdaptiveLimit) and limit.lag_budget == 0.003

        def over_10ms(metrics: str) -> float:
            samples = {
                line.split(" ")[0]: float(line.split(" ")[1])
                for line in metrics.splitlines()
                if line.startswith("uniserve_event_loop_lag_seconds_")
            }
            bucket = 'uniserve_event_loop_lag_seconds_bucket{le="0.01"}'
            return samples["uniserve_event_loop_lag_seconds_count"] - samples[bucket]

        await wait_until(lambda: limit._ticks > 0)  # the watcher is ticking
        before = over_10ms((await served.client.get("/metrics")).text)
        late = limit._late
        time.sleep(0.05)  # blocks the loop: the tick due meanwhile runs ~50 ms late
        await wait_until(lambda: limit._late > late)
        text = (await served.client.get("/metrics")).text
        assert over_10ms(text) >= before + 1
