"""Early load shedding: the pending-request limit alone, then through the real app (real model,
real FAISS index) with a compute request held in progress. No timing assertions: requests are
held by a blocked encoder and released by the test, never by sleeping a duration."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from service.api.shedding import COMPUTE_ROUTES, PendingLimit
from service.core.engine import EncodeJob
from service.settings import Settings
from tests.helpers import BlockedEmbedder

if TYPE_CHECKING:
    from tests.conftest import ServeFn

pytestmark = pytest.mark.anyio


def test_pending_limit_admits_up_to_its_limit() -> None:
    limit = PendingLimit(2)
    assert limit.try_enter() and limit.try_enter()
    assert not limit.try_enter()  # a refused request is not counted
    assert limit.pending == 2
    limit.leave()
    assert limit.try_enter()
    with pytest.raises(ValueError, match="got 0"):
        PendingLimit(0)


def test_max_pending_requests_setting_is_validated() -> None:
    assert Settings().max_pending_requests == 40
    with pytest.raises(ValueError):
        Settings(max_pending_requests=0)


async def wait_until(condition: Any) -> None:
    for _ in range(10_000):  # bounded: a bug fails the test instead of hanging it
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


async def test_requests_beyond_the_limit_are_shed_before_their_body_is_read(
    serve: ServeFn, uniserve_data_dir: Path
) -> None:
    settings = Settings(data_dir=uniserve_data_dir, bootstrap=False, max_pending_requests=1)
    async with serve(settings) as served:
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
