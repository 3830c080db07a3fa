"""Online quality through the real app: served lists remembered, later events counted as hits per
version and surface (Prometheus counters against a hand-worked reference, no ids in any label),
the shadow model (loaded by setting and admin route into a worker process, never changing or
failing a live answer, also when its worker is killed mid-stream, its overflow dropped and
counted, no worker process left after a replace or an unload) and the gated promotion (refused
below N events, refused when not significant, promoted otherwise: CURRENT and the live engine
move).

Live and shadow are two published versions of the session model over disjoint halves of its
catalogue (`publish_halves`), so each list shows who served it and a test can post events that
one version served and the other did not.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import httpx
import pytest

from index import current_version, set_current
from models.embedder import Embedder
from service.cli.common import EXIT_ERROR, EXIT_REFUSED
from service.core.engine import Admission
from service.core.reloader import open_engine
from service.core.shadow_worker import ShadowWorkerError
from service.settings import Settings
from tests.helpers import (
    copy_data,
    free_port,
    publish_halves,
    start_serve,
    stop,
    wait_until_ok,
)

if TYPE_CHECKING:
    from tests.conftest import Served, ServeFn

ADMIN = "online-admin-key-5d1c9e7a3b"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
K = 10


@dataclass
class Halves:
    data: Path
    live: str  # version over the even catalogue rows (CURRENT)
    shadow: str  # version over the odd rows
    items: dict[str, set[str]]
    surfaces: dict[str, str]  # item id -> surface

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": self.data,
            "bootstrap": False,
            "admin_key": ADMIN,
            "index_poll_seconds": 0,
            **overrides,
        }
        return Settings(**values)


@pytest.fixture(scope="module")
def halves(uniserve_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Halves:
    data = copy_data(uniserve_data_dir, tmp_path_factory.mktemp("online") / "data")
    embedder = Embedder.from_dir(data / "model")
    live, shadow, items = publish_halves(data / "indexes", embedder)
    set_current(data / "indexes", live)
    surfaces = dict(zip(map(str, embedder.item_ids), map(str, embedder.item_surfaces), strict=True))
    return Halves(data, live, shadow, items, surfaces)


def exited(pid: int | None) -> bool:
    """The process is gone (exited and reaped)."""
    return pid is not None and not Path(f"/proc/{pid}").exists()


async def post(served: Served, path: str, body: Any = None, status: int = 200) -> Any:
    resp = await served.client.post(path, json=body, headers=AUTH)
    assert resp.status_code == status, resp.text
    return resp.json()


def value(served: Served, name: str, **labels: str) -> float:
    return served.state.metrics.registry.get_sample_value(name, labels) or 0.0


def history(halves: Halves, n: int, offset: int) -> list[dict[str, str]]:
    ids = sorted(halves.items[halves.live])
    return [{"item_id": i, "surface": halves.surfaces[i]} for i in ids[offset * 3 : offset * 3 + n]]


def tally(served: Served, role: str, version: str, surface: str) -> tuple[float, list[float]]:
    """(events, hits at k 1, 5, 10, served) of a version and surface, from the counters."""
    engine_model = served.state.engine.model_version if served.state.engine else ""
    labels = {
        "role": role,
        "model_version": engine_model,
        "index_version": version,
        "surface": surface,
    }
    hits = [
        value(served, "uniserve_online_hits_total", **labels, k=k)
        for k in ("1", "5", "10", "served")
    ]
    return value(served, "uniserve_online_events_total", **labels), hits


async def drain(served: Served) -> None:
    """Wait for the online-quality work queued so far (remembering, shadow answers, matching)."""
    assert served.state.online is not None
    await served.state.online.drain()


async def lists_by_role(served: Served, user: str) -> dict[str, Any]:
    """The user's latest list per role, from the served-list store."""
    online = served.state.online
    assert online is not None
    await drain(served)
    return {s.role: s for s in await online.store.lists(user, online.clock())}


# ---------------------------------------------------------------------------- hit counting
@pytest.mark.anyio
async def test_later_events_are_counted_as_hits_by_version_and_surface(
    serve: ServeFn, halves: Halves
) -> None:
    async with serve(halves.settings()) as served:
        online = served.state.online
        assert online is not None
        user = "online-hits-1"
        await post(served, "/v1/events", {"user_id": user, "events": history(halves, 4, 0)})
        answer = await post(served, "/v1/retrieve", {"user_id": user, "k": 20})
        items = [i["item_id"] for i in answer["items"]]
        assert answer["index_version"] == halves.live and len(items) == 20
        unserved = next(i for i in sorted(halves.items[halves.live]) if i not in items)
        real = halves.surfaces[items[15]]
        assert real  # the sample's items all have a surface
        # neither an anonymous retrieve nor another user's is this user's list
        await post(served, "/v1/retrieve", {"events": history(halves, 3, 5), "k": 20})
        await post(served, "/v1/retrieve", {"user_id": "someone-else", "events": [], "k": 5}, 422)
        events = [
            {"item_id": items[0], "surface": "made-up-surface"},  # rank 0, a surface not in
            {"item_id": items[7]},  # the catalogue: "other"; rank 7 with no surface: "unknown"
            {"item_id": items[15], "surface": real},  # rank 15: a hit at the served k only
            {"item_id": unserved, "surface": real},  # not served: an event without a hit
        ]
        await post(served, "/v1/events", {"user_id": user, "events": events})
        await online.drain()

        #                 events, hits at 1, 5, 10, served (worked out from the ranks above)
        expected = {
            "other": (1, [1, 1, 1, 1]),
            "unknown": (1, [0, 0, 1, 1]),
            real: (2, [0, 0, 0, 1]),
        }
        for surface, counts in expected.items():
            assert tally(served, "live", halves.live, surface) == counts, surface
        resp = await served.client.get("/admin/online", headers=AUTH)
        assert resp.json()["versions"] == [
            {
                "role": "live",
                "model_version": answer["model_version"],
                "index_version": halves.live,
                "events": 4,
                "hits": {"1": 1, "5": 1, "10": 2, "served": 3},
            }
        ]
        # no user id, item id or caller-chosen surface in any label
        # (k, le and shard are closed sets of numbers, surfaces the catalogue's: item ids may
        # equal some of them)
        registry = served.state.metrics.registry
        labels = [
            (key, v) for f in registry.collect() for x in f.samples for key, v in x.labels.items()
        ]
        surfaces = {v for key, v in labels if key == "surface"}
        assert surfaces <= {*halves.surfaces.values(), "unknown", "other"}
        assert {"other", "unknown", real} <= surfaces
        others = {v for key, v in labels if key not in ("k", "le", "shard", "surface")}
        assert not others & {*items, unserved, user, "made-up-surface"}


# ---------------------------------------------------------------------------- the shadow
@pytest.mark.anyio
async def test_a_shadow_answers_the_same_request_and_is_scored_on_the_same_events(
    serve: ServeFn, halves: Halves
) -> None:
    settings = halves.settings(shadow_version=halves.shadow, shadow_sample=1.0)
    async with serve(settings) as served:
        slot, engine = served.state.shadow, served.state.engine
        assert slot is not None and slot.shadow is not None and engine is not None
        shadow = slot.shadow
        assert shadow.index_version == halves.shadow
        model = engine.model_version
        assert value(served, "uniserve_shadow_info", version=halves.shadow, model_version=model)
        user = "online-shadow-1"
        events = history(halves, 5, 1)
        await post(served, "/v1/events", {"user_id": user, "events": events})
        answer = await post(served, "/v1/retrieve", {"user_id": user, "k": K})
        assert answer["index_version"] == halves.live  # the live answer, from the live version
        assert {i["item_id"] for i in answer["items"]} <= halves.items[halves.live]
        lists = await lists_by_role(served, user)
        assert list(lists["live"].items) == [i["item_id"] for i in answer["items"]]
        # the shadow's list: what its version answers for the same history, k and filters,
        # computed in its worker process
        assert shadow.worker.pid != os.getpid()
        reference = await anyio.to_thread.run_sync(
            lambda: open_engine(settings, Admission(), version=halves.shadow)
        )
        history_in = ([e["item_id"] for e in events], [e["surface"] for e in events])
        vector = (await reference.user_vectors([history_in]))[0]
        ids, _ = await reference.retrieve(vector, K, history=history_in[0])
        await reference.admission.aclose()
        assert lists["shadow"].items == tuple(ids) and set(ids) <= halves.items[halves.shadow]
        assert lists["shadow"].index_version == halves.shadow
        assert lists["shadow"].served_at == lists["live"].served_at
        # one event each list served at rank 0 (live) and rank 2 (shadow)
        surface = halves.surfaces[ids[2]]
        later = [{"item_id": lists["live"].items[0], "surface": surface}, {"item_id": ids[2]}]
        await post(served, "/v1/events", {"user_id": user, "events": later})
        await drain(served)
        live_tally = [tally(served, "live", halves.live, s) for s in (surface, "unknown")]
        shadow_tally = [tally(served, "shadow", halves.shadow, s) for s in (surface, "unknown")]
        assert live_tally == [(1, [1, 1, 1, 1]), (1, [0, 0, 0, 0])]
        assert shadow_tally == [(1, [0, 0, 0, 0]), (1, [0, 1, 1, 1])]
        assert value(served, "uniserve_shadow_requests_total", outcome="answered") == 1


@pytest.mark.anyio
async def test_a_failing_shadow_never_reaches_a_live_answer_and_its_overflow_is_counted(
    serve: ServeFn,
    halves: Halves,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = halves.settings(
        shadow_version=halves.shadow, shadow_sample=1.0, shadow_queue_size=1, cache_ttl_seconds=0
    )
    async with serve(settings) as served:
        slot, online = served.state.shadow, served.state.online
        assert slot is not None and slot.shadow is not None and online is not None
        shadow = slot.shadow

        def outcomes() -> list[float]:
            return [
                value(served, "uniserve_shadow_requests_total", outcome=outcome)
                for outcome in ("answered", "dropped", "failed")
            ]

        async def retrieve_as(user: str, n: int) -> None:
            """The live answer for a user's history, as an anonymous retrieve of it gets."""
            events = history(halves, 4, n)
            expected = await post(served, "/v1/retrieve", {"events": events, "k": K})
            await post(served, "/v1/events", {"user_id": user, "events": events})
            assert await post(served, "/v1/retrieve", {"user_id": user, "k": K}) == expected

        await retrieve_as("online-failing-0", 0)
        await online.drain()
        assert outcomes() == [1, 0, 0]

        gate = asyncio.Event()

        async def held(*args: Any, **kwargs: Any) -> Any:
            await gate.wait()
            raise ShadowWorkerError("the shadow failed late")

        monkeypatch.setattr(shadow.worker, "top_k", held)
        for n in range(3):  # the first holds the shadow's one place; the next two overflow
            await retrieve_as(f"online-held-{n}", 1 + n)
        assert shadow.pending == 1 and outcomes() == [1, 2, 0]
        gate.set()
        await online.drain()
        assert shadow.pending == 0 and outcomes() == [1, 2, 1]
        monkeypatch.undo()

        # the worker killed mid-stream: one call in flight (the worker stopped, so it stays
        # there), then SIGKILL while live retrieves go on
        worker = shadow.worker
        os.kill(worker.pid, signal.SIGSTOP)
        await retrieve_as("online-killed-0", 5)
        assert shadow.pending == 1
        os.kill(worker.pid, signal.SIGKILL)
        for n in range(1, 4):  # dropped while the call is in flight, failed once it has failed
            await retrieve_as(f"online-killed-{n}", 5 + n)
        await online.drain()
        answered, dropped, failed = outcomes()
        assert answered == 1 and failed >= 1 + 1 and dropped + failed == 2 + 1 + 1 + 3
        assert not worker.alive
        for _ in range(300):  # logged once the reply reader has reaped it
            if "exited with code -9" in caplog.text:
                break
            await asyncio.sleep(0.1)
        assert "exited with code -9" in caplog.text
        for n in range(4):  # every later one: failed at once, never sent
            await retrieve_as(f"online-dead-{n}", 9 + n)
            assert shadow.pending == 0
        assert outcomes() == [1, dropped, failed + 4]
        assert served.state.shadow is not None and served.state.shadow.shadow is shadow


@pytest.mark.anyio
async def test_the_admin_route_loads_and_unloads_a_shadow_and_refuses_a_bad_version(
    serve: ServeFn, halves: Halves
) -> None:
    async with serve(halves.settings()) as served:
        assert served.state.shadow is not None and served.state.shadow.shadow is None
        body = {"version": halves.shadow, "sample": 0.5}
        resp = await served.client.post("/admin/shadow", json=body)
        assert resp.status_code in (401, 403)  # the admin key is needed
        loaded = await post(served, "/admin/shadow", body)
        assert loaded["index_version"] == halves.shadow and loaded["sample"] == 0.5
        first = served.state.shadow.shadow
        assert first is not None
        again = await post(served, "/admin/shadow", {"version": halves.live})  # replaced
        assert again["index_version"] == halves.live
        assert exited(first.worker.pid)  # the replaced worker is stopped
        loaded = await post(served, "/admin/shadow", body)
        online = (await served.client.get("/admin/online", headers=AUTH)).json()
        assert online["shadow"] == loaded
        refused = await post(
            served, "/admin/shadow", {"version": "20000101T000000000000Z-deadbe"}, 409
        )
        assert refused["error_type"] == "index_rejected" and "deadbe" in refused["error"]
        assert served.state.shadow.shadow is not None  # the loaded one stays
        await post(served, "/admin/shadow", {"version": "../etc"}, 422)
        last = served.state.shadow.shadow
        assert last is not None
        gone = await post(served, "/admin/shadow", {"version": None})
        assert gone == {"index_version": None, "model_version": None, "sample": None}
        assert exited(last.worker.pid)  # unloading leaves no process
        assert not [p for p in multiprocessing.active_children() if "shadow" in p.name]
        assert "uniserve_shadow_info{" not in (await served.client.get("/metrics")).text


# ---------------------------------------------------------------------------- promotion
@pytest.mark.anyio
async def test_promote_refuses_below_n_and_when_not_significant_and_promotes_otherwise(
    serve: ServeFn, halves: Halves, tmp_path: Path
) -> None:
    data = copy_data(halves.data, tmp_path / "data")  # this test moves CURRENT
    root = data / "indexes"
    settings = halves.settings(data_dir=data, shadow_version=halves.shadow, shadow_sample=1.0)
    ids = sorted(halves.items[halves.live])
    async with serve(settings) as served:
        gate = {"min_events": 20, "confidence": 0.95}
        few = await post(served, "/admin/promote", gate)
        assert not few["promoted"] and "too few matched events (0 < 20)" in few["reason"]

        async def round_trip(user: str, n: int, shadow_wins: bool) -> None:
            """A user's history, a retrieve, then their next event: an item only one of the
            two versions served (both at rank 0)."""
            events = [{"item_id": ids[(n * 7 + j * 13) % len(ids)]} for j in range(3)]
            await post(served, "/v1/events", {"user_id": user, "events": events})
            await post(served, "/v1/retrieve", {"user_id": user, "k": K})
            lists = await lists_by_role(served, user)
            item = lists["shadow" if shadow_wins else "live"].items[0]
            await post(served, "/v1/events", {"user_id": user, "events": [{"item_id": item}]})

        for n in range(30):  # as many hits for each: the same rate
            await round_trip(f"tie-{n:02d}", n, shadow_wins=n % 2 == 0)
        await drain(served)
        tie = await post(served, "/admin/promote", gate)
        assert not tie["promoted"] and "does not win" in tie["reason"]
        assert (tie["live"]["events"], tie["live"]["hits"]) == (30, 15)
        assert (tie["shadow"]["events"], tie["shadow"]["hits"]) == (30, 15)
        assert tie["p_value"] == 0.5
        assert current_version(root) == halves.live

        for n in range(30):  # then the shadow's list has every next event
            await round_trip(f"win-{n:02d}", 30 + n, shadow_wins=True)
        await drain(served)
        win = await post(served, "/admin/promote", gate)
        assert win["promoted"], win["reason"]
        assert (win["live"]["events"], win["live"]["hits"]) == (60, 15)
        assert (win["shadow"]["events"], win["shadow"]["hits"]) == (60, 45)
        assert win["p_value"] < 0.05 and win["shadow"]["hit_rate"] == 0.75
        assert current_version(root) == halves.shadow
        assert served.state.engine is not None
        assert served.state.engine.index_version == halves.shadow
        assert served.state.shadow is not None and served.state.shadow.shadow is None
        answer = await post(served, "/v1/retrieve", {"user_id": "win-00", "k": K})
        assert answer["index_version"] == halves.shadow
        decisions = "uniserve_promotion_decisions_total"
        assert value(served, decisions, decision="refused") == 2
        assert value(served, decisions, decision="promoted") == 1
        assert value(served, "uniserve_promotion_last_p_value") == win["p_value"]
        none = await post(served, "/admin/promote", gate, 409)
        assert none["error_type"] == "unservable" and "no shadow" in none["error"]


def test_uniserve_promote_prints_the_decision_and_its_numbers(
    halves: Halves,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The command against a real `uniserve serve` with a shadow: refused (exit 3) with both
    rates, the counts and the p-value printed; an error (exit 2) once no shadow is loaded."""
    from service.cli import main

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env: dict[str, str | None] = {
        "UNISERVE_ADMIN_KEY": ADMIN,
        "UNISERVE_API_KEY": None,
        "UNISERVE_SHADOW_VERSION": halves.shadow,
        "UNISERVE_SHADOW_SAMPLE": "1.0",
    }
    log = tmp_path / "serve.log"
    args = ["--no-bootstrap", "--data-dir", str(halves.data), "--port", str(port)]
    proc = start_serve([*args, "--log-level", "warning"], log, env)
    try:
        wait_until_ok(f"{url}/readyz", proc, log, 180)
        monkeypatch.setenv("UNISERVE_ADMIN_KEY", ADMIN)
        assert main(["promote", "--url", url, "--min-events", "5"]) == EXIT_REFUSED
        out = capsys.readouterr().out
        assert "REFUSED: too few matched events (0 < 5)" in out
        for text in (halves.live, halves.shadow, "one-sided p-value 1", "HR@10"):
            assert text in out
        unload = httpx.post(f"{url}/admin/shadow", json={"version": None}, headers=AUTH, timeout=30)
        assert unload.status_code == 200, unload.text
        assert main(["promote", "--url", url]) == EXIT_ERROR
        assert "no shadow is loaded" in capsys.readouterr().err
        monkeypatch.delenv("UNISERVE_ADMIN_KEY")
        assert main(["promote", "--url", url]) == EXIT_ERROR
    finally:
        stop(proc)
