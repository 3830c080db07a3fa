"""The live catalogue (issue 19): upserts and retirements through the real app.

The app runs through its lifespan over a private copy of the session artifacts, its live index
republished as an exact (Flat) index of the model's vocabulary, so every retrieve can be
checked against the top-k computed here with NumPy over the catalogue as it should now be: the
model's item vectors, the upserted items' vectors (checked equal to what `POST
/v1/items/embed` computes for the same item), the retired ids left out. The change log is the
real file under the copy's index root.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from index import current_version, list_versions, load_version, set_current
from models.embedder import Embedder
from service.api.schemas import (
    CatalogueChangeResponse,
    ItemEmbedResponse,
    RankResponse,
    RetrieveResponse,
    UserEmbedResponse,
)
from service.jobs.pipeline import build_and_publish
from service.settings import Settings
from service.store.changelog import CHANGES_THROUGH, log_path, read_changes
from tests.helpers import (
    REDIS_SERVER,
    RedisServer,
    blend_term,
    copy_data,
    free_port,
    publish_rows,
    start_serve,
    wait_until_ok,
)

if TYPE_CHECKING:
    from tests.conftest import Served, ServeFn

ADMIN_KEY = "catalogue-admin-key-8d7c6b5a4f"
API_KEY = "catalogue-api-key-1f2e3d4c5b6a"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def catalogue_settings(data: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "data_dir": data,
        "bootstrap": False,
        "admin_key": ADMIN_KEY,
        "index_poll_seconds": 0,
    }
    return Settings(**(base | overrides))


def publish_flat(root: Path, embedder: Embedder) -> str:
    """An exact index of the model's vocabulary, made CURRENT; returns its version."""
    version = publish_rows(root, embedder, None, "Flat")
    set_current(root, version)
    return version


@dataclass
class Live:
    served: Served
    root: Path
    embedder: Embedder
    flat: str  # the exact version the app started on
    # what the catalogue should be now, beside the model's vocabulary
    upserted: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)  # id -> vec, surf
    retired: set[str] = field(default_factory=set)

    @property
    def client(self) -> Any:
        return self.served.client

    async def upsert(self, *items: dict[str, Any]) -> CatalogueChangeResponse:
        resp = await self.client.post(
            "/admin/items/upsert", json={"items": list(items)}, headers=ADMIN
        )
        assert resp.status_code == 200, resp.text
        for item in items:
            vector = await item_vector(self.served, item)
            self.upserted[str(item["item_id"])] = (vector, str(item.get("surface") or ""))
            self.retired.discard(str(item["item_id"]))
        return CatalogueChangeResponse.model_validate(resp.json())

    async def retire(self, *item_ids: str) -> CatalogueChangeResponse:
        resp = await self.client.post(
            "/admin/items/retire", json={"item_ids": list(item_ids)}, headers=ADMIN
        )
        assert resp.status_code == 200, resp.text
        for item_id in item_ids:
            self.upserted.pop(item_id, None)
            self.retired.add(item_id)
        return CatalogueChangeResponse.model_validate(resp.json())

    def scores(self, user: User, surfaces: set[str] | None = None) -> dict[str, float]:
        """Every eligible item's exact served score for `user`, the catalogue as it should be
        now: its vector's inner product with the user's, plus the blend's term of the user's
        history for the item's id (`tests.helpers.blend_term`)."""
        vectors = self.embedder.item_vectors()
        out: dict[str, float] = {}
        for item_id, surface, vector in zip(
            self.embedder.item_ids, self.embedder.item_surfaces, vectors, strict=True
        ):
            if surfaces is None or surface in surfaces:
                out[str(item_id)] = float(vector @ user.vector)
        for item_id, (vector, surface) in self.upserted.items():
            out.pop(item_id, None)
            if surfaces is None or surface in surfaces:
                out[item_id] = float(vector @ user.vector)
        for item_id in self.retired:
            out.pop(item_id, None)
        ids = list(out)
        term = blend_term(self.embedder, ids, user.items)
        return {i: s + float(t) for i, s, t in zip(ids, out.values(), term, strict=True)}


@pytest.fixture(scope="module")
async def live(
    uniserve_data_dir: Path, tmp_path_factory: pytest.TempPathFactory, serve: ServeFn
) -> AsyncIterator[Live]:
    data = copy_data(uniserve_data_dir, tmp_path_factory.mktemp("catalogue") / "data")
    embedder = Embedder.from_dir(data / "model")
    flat = publish_flat(data / "indexes", embedder)
    async with serve(catalogue_settings(data)) as served:
        yield Live(served, data / "indexes", embedder, flat)


def events(ids: list[str]) -> list[dict[str, str]]:
    return [{"item_id": i} for i in ids]


@dataclass(frozen=True)
class User:
    vector: np.ndarray  # (D,) the served user vector
    items: list[str]  # the history's item ids, oldest first (the blend's recent items)


async def user_vector(served: Served, history: list[dict[str, str]]) -> User:
    resp = await served.client.post("/v1/users/embed", json={"events": history})
    assert resp.status_code == 200, resp.text
    vector = np.asarray(UserEmbedResponse.model_validate(resp.json()).embedding, np.float32)
    return User(vector, [e["item_id"] for e in history])


async def item_vector(served: Served, item: dict[str, Any]) -> np.ndarray:
    """What POST /v1/items/embed computes for the item (the reference for its delta vector)."""
    resp = await served.client.post("/v1/items/embed", json={"items": [item]})
    assert resp.status_code == 200, resp.text
    return np.asarray(ItemEmbedResponse.model_validate(resp.json()).embeddings[0], np.float32)


async def retrieve(served: Served, **body: Any) -> RetrieveResponse:
    resp = await served.client.post("/v1/retrieve", json=body)
    assert resp.status_code == 200, resp.text
    return RetrieveResponse.model_validate(resp.json())


def assert_exact_top_k(got: RetrieveResponse, expected: dict[str, float], k: int) -> None:
    """k items (or all eligible), each with its exact score, and no better eligible item left
    out (ties may come in either order)."""
    ids = [it.item_id for it in got.items]
    assert len(ids) == min(k, len(expected)) and len(set(ids)) == len(ids)
    for it in got.items:
        assert it.item_id in expected, f"{it.item_id} is not eligible"
        assert it.score == pytest.approx(expected[it.item_id], abs=1e-4)
    best = sorted(expected.values(), reverse=True)[: len(ids)]
    np.testing.assert_allclose([it.score for it in got.items], best, atol=1e-4)


def rank_of(scores: dict[str, float], item_id: str) -> int:
    """0-based position of `item_id` in the exact ranking (ties: ahead)."""
    return sum(1 for s in scores.values() if s > scores[item_id])


# ---------------------------------------------------------------------------- upsert
@pytest.mark.anyio
async def test_upsert_then_retrieve_and_rank(live: Live) -> None:
    history = events([str(i) for i in live.embedder.item_ids[:8]])
    user = await user_vector(live.served, history)
    before = await retrieve(live.served, events=history, k=10)  # cached: must not stay stale
    surface = str(live.embedder.item_surfaces[0])
    answer = await live.upsert({"item_id": "new-a", "surface": surface})
    assert (answer.upserted, answer.retired) == (1, 0)
    assert answer.index_version == live.flat and answer.delta_size >= 1 and answer.seq >= 1

    engine = live.served.state.engine
    assert engine is not None
    held = engine.delta.vectors[engine.delta.row["new-a"]]
    np.testing.assert_allclose(held, live.upserted["new-a"][0], atol=1e-5)  # one encoding

    scores = live.scores(user)
    k = min(rank_of(scores, "new-a") + 3, 1000)  # deep enough to hold the new item
    got = await retrieve(live.served, events=history, k=k)
    assert_exact_top_k(got, scores, k)
    assert "new-a" in [it.item_id for it in got.items]
    again = await retrieve(live.served, events=history, k=10)
    assert_exact_top_k(again, scores, 10)
    assert before.index_version == again.index_version == live.flat

    resp = await live.client.post(
        "/v1/rank", json={"events": history, "candidates": ["new-a", "1", "no-such-item"]}
    )
    ranked = RankResponse.model_validate(resp.json())
    assert ranked.unknown == ["no-such-item"]
    by_id = {it.item_id: it.score for it in ranked.items}
    assert by_id["new-a"] == pytest.approx(scores["new-a"], abs=1e-4)


@pytest.mark.anyio
async def test_upserting_a_known_id_replaces_its_vector(live: Live) -> None:
    """A trained id keeps its id embedding; the metadata sent replaces the stored one."""
    item_id = str(live.embedder.item_ids[20])
    surfaces = sorted(set(live.embedder.item_surfaces.tolist()) - {""})
    other = next(s for s in surfaces if s != live.embedder.item_surfaces[20])
    await live.upsert({"item_id": item_id, "surface": other})
    cold = await item_vector(live.served, {"surface": other})  # no id: metadata only
    assert not np.allclose(live.upserted[item_id][0], cold, atol=1e-4)
    history = events([str(i) for i in live.embedder.item_ids[30:38]])
    user = await user_vector(live.served, history)
    scores = live.scores(user, {other})
    k = min(rank_of(scores, item_id) + 2, len(scores))
    got = await retrieve(live.served, events=history, k=k, surfaces=[other])
    assert_exact_top_k(got, scores, k)  # its new vector, its new surface, listed once


# ---------------------------------------------------------------------------- retire
@pytest.mark.anyio
async def test_retire_then_retrieve_and_rank(live: Live) -> None:
    history = events([str(i) for i in live.embedder.item_ids[40:48]])
    user = await user_vector(live.served, history)
    top = [it.item_id for it in (await retrieve(live.served, events=history, k=5)).items]
    await live.upsert({"item_id": "new-r", "surface": str(live.embedder.item_surfaces[0])})
    answer = await live.retire(*top[:3], "new-r")
    assert (answer.upserted, answer.retired) == (0, 4)
    got = await retrieve(live.served, events=history, k=10)
    assert_exact_top_k(got, live.scores(user), 10)  # k still come back, none retired
    assert not set(top[:3]) & {it.item_id for it in got.items}
    everything = await retrieve(live.served, events=history, k=1000)
    assert not (live.retired & {it.item_id for it in everything.items})
    resp = await live.client.post(
        "/v1/rank", json={"events": history, "candidates": [*top[:4], "new-r"]}
    )
    ranked = RankResponse.model_validate(resp.json())
    assert ranked.unknown == [*top[:3], "new-r"]
    assert [it.item_id for it in ranked.items] == [top[3]]

    await live.upsert({"item_id": top[0]})  # upserting a retired id brings it back
    got = await retrieve(live.served, events=history, k=10)
    assert_exact_top_k(got, live.scores(user), 10)
    assert top[0] in {it.item_id for it in got.items}


# ---------------------------------------------------------------------------- filters
@pytest.mark.anyio
async def test_filters_apply_to_delta_items(live: Live) -> None:
    surfaces = sorted(set(live.embedder.item_surfaces.tolist()) - {""})
    here, there = surfaces[0], surfaces[1]
    await live.upsert(*({"item_id": f"new-f{i}", "surface": here} for i in range(3)))
    history = events([str(i) for i in live.embedder.item_ids[50:58]])
    user = await user_vector(live.served, history)
    on_here = live.scores(user, {here})
    k = min(rank_of(on_here, "new-f0") + 5, len(on_here))
    got = await retrieve(live.served, events=history, k=k, surfaces=[here])
    assert_exact_top_k(got, on_here, k)
    assert {"new-f0", "new-f1", "new-f2"} <= {it.item_id for it in got.items}

    on_there = await retrieve(live.served, events=history, k=1000, surfaces=[there])
    assert not any(it.item_id.startswith("new-f") for it in on_there.items)

    excluded = await retrieve(live.served, events=history, k=k, surfaces=[here], exclude=["new-f1"])
    assert_exact_top_k(excluded, {i: s for i, s in on_here.items() if i != "new-f1"}, k)
    assert "new-f1" not in {it.item_id for it in excluded.items}

    seen = [*history, {"item_id": "new-f2", "surface": here}]
    seen_user = await user_vector(live.served, seen)
    eligible = {i: s for i, s in live.scores(seen_user, {here}).items()}
    for e in seen:
        eligible.pop(e["item_id"], None)
    got = await retrieve(live.served, events=seen, k=k, surfaces=[here], exclude_seen=True)
    assert_exact_top_k(got, eligible, k)
    assert "new-f2" not in {it.item_id for it in got.items}


# ---------------------------------------------------------------------------- bad input + auth
BAD_BODIES: list[tuple[str, Any, str]] = [
    ("/admin/items/upsert", {}, "items"),
    ("/admin/items/upsert", {"items": []}, "items"),
    ("/admin/items/upsert", {"items": [{"surface": "0"}]}, "items[0].item_id"),
    ("/admin/items/upsert", {"items": [{"item_id": ""}]}, "items[0].item_id"),
    ("/admin/items/upsert", {"items": [{"item_id": "x", "features": {"colour": "red"}}]}, "colour"),
    ("/admin/items/upsert", {"items": [{"item_id": "x", "features": {"surface": "0"}}]}, "surface"),
    ("/admin/items/upsert", {"items": [{"item_id": "x", "price": 3}]}, "price"),
    ("/admin/items/upsert", {"items": [{"item_id": True}]}, "items[0].item_id"),
    ("/admin/items/retire", {}, "item_ids"),
    ("/admin/items/retire", {"item_ids": []}, "item_ids"),
    ("/admin/items/retire", {"item_ids": ["ok", None]}, "item_ids[1]"),
    ("/admin/items/retire", {"item_ids": "42"}, "item_ids"),
]


@pytest.mark.anyio
async def test_bad_bodies_are_422_and_change_nothing(live: Live) -> None:
    before = log_path(live.root).read_bytes() if log_path(live.root).exists() else b""
    for path, body, field_name in BAD_BODIES:
        resp = await live.client.post(path, json=body, headers=ADMIN)
        assert resp.status_code == 422, (path, body, resp.text)
        answer = resp.json()
        assert answer["error_type"] == "invalid_input" and field_name in answer["error"], answer
    limit = live.served.state.settings.max_items
    too_many = {"items": [{"item_id": f"x{i}"} for i in range(limit + 1)]}
    resp = await live.client.post("/admin/items/upsert", json=too_many, headers=ADMIN)
    assert resp.status_code == 422 and "max_items" in resp.json()["error"].lower()
    after = log_path(live.root).read_bytes() if log_path(live.root).exists() else b""
    assert after == before


@pytest.mark.anyio
async def test_catalogue_routes_need_the_admin_key(
    live: Live, serve: ServeFn, tmp_path: Path, uniserve_data_dir: Path
) -> None:
    body = {"items": [{"item_id": "new-auth"}]}
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
        for path, payload in (
            ("/admin/items/upsert", body),
            ("/admin/items/retire", {"item_ids": ["1"]}),
        ):
            resp = await live.client.post(path, json=payload, headers=headers)
            assert resp.status_code == 401 and resp.json()["error_type"] == "unauthorized"
    data = copy_data(uniserve_data_dir, tmp_path / "data")
    async with serve(catalogue_settings(data, admin_key=None, api_key=API_KEY)) as served:
        resp = await served.client.post("/admin/items/upsert", json=body)
        assert resp.status_code == 403 and "UNISERVE_ADMIN_KEY" in resp.json()["error"]
    async with serve(catalogue_settings(data, api_key=API_KEY)) as served:
        api = {"Authorization": f"Bearer {API_KEY}"}
        resp = await served.client.post("/admin/items/upsert", json=body, headers=api)
        assert resp.status_code == 403 and resp.json()["error_type"] == "forbidden"
        resp = await served.client.post("/admin/items/upsert", json=body, headers=ADMIN)
        assert resp.status_code == 200, resp.text


# ---------------------------------------------------------------------------- the delta limit
@pytest.mark.anyio
async def test_the_delta_limit_gives_409_and_applies_nothing(
    serve: ServeFn, tmp_path: Path, uniserve_data_dir: Path
) -> None:
    data = copy_data(uniserve_data_dir, tmp_path / "data")
    async with serve(catalogue_settings(data, delta_max_items=3)) as served:
        client = served.client
        ok = await client.post(
            "/admin/items/upsert",
            json={"items": [{"item_id": "n1"}, {"item_id": "n2"}]},
            headers=ADMIN,
        )
        assert ok.status_code == 200 and ok.json()["delta_size"] == 2
        log = log_path(data / "indexes").read_bytes()
        for path, body in (
            ("/admin/items/upsert", {"items": [{"item_id": "n3"}, {"item_id": "n4"}]}),
            ("/admin/items/retire", {"item_ids": ["1", "2"]}),
        ):
            resp = await client.post(path, json=body, headers=ADMIN)
            assert resp.status_code == 409, resp.text
            answer = resp.json()
            assert answer["error_type"] == "delta_full"
            assert "3" in answer["error"] and "build-index" in answer["error"]
        assert log_path(data / "indexes").read_bytes() == log  # nothing written
        engine = served.state.engine
        assert engine is not None and engine.delta.size == 2 and "n3" not in engine.delta.row
        ranked = await client.post(
            "/v1/rank", json={"events": events(["1"]), "candidates": ["n3", "n4", "2"]}
        )
        assert ranked.json()["unknown"] == ["n3", "n4"]  # nothing half-applied
        again = await client.post(  # ids already in the delta do not grow it
            "/admin/items/upsert",
            json={"items": [{"item_id": "n1"}, {"item_id": "n3"}]},
            headers=ADMIN,
        )
        assert again.status_code == 200 and again.json()["delta_size"] == 3
        metrics = (await client.get("/metrics")).text
        assert "uniserve_catalogue_delta_items 3.0" in metrics
        assert "uniserve_catalogue_delta_limit 3.0" in metrics
        assert "uniserve_catalogue_upserts_total 4.0" in metrics


# ---------------------------------------------------------------------------- swaps + rebuild
@pytest.mark.anyio
async def test_upserts_during_a_hot_swap_and_a_rollback_stay_live(
    serve: ServeFn, tmp_path: Path, uniserve_data_dir: Path
) -> None:
    data = copy_data(uniserve_data_dir, tmp_path / "data")
    root = data / "indexes"
    embedder = Embedder.from_dir(data / "model")
    old = publish_flat(root, embedder)
    new = publish_flat(root, embedder)  # newer, built through no change: the log replays on it
    set_current(root, old)
    async with serve(catalogue_settings(data)) as served:
        client = served.client

        async def upsert(i: int) -> None:
            body = {"items": [{"item_id": f"s{i}", "surface": "0"}]}
            resp = await client.post("/admin/items/upsert", json=body, headers=ADMIN)
            assert resp.status_code == 200, resp.text

        async def swap() -> None:
            set_current(root, new)
            resp = await client.post("/admin/reload", headers=ADMIN)
            assert resp.status_code == 200, resp.text

        await asyncio.gather(
            *(upsert(i) for i in range(10)), swap(), *(upsert(i) for i in range(10, 20))
        )
        retire = await client.post(
            "/admin/items/retire", json={"item_ids": ["s0", "1"]}, headers=ADMIN
        )
        assert retire.status_code == 200
        wanted = [f"s{i}" for i in range(1, 20)]

        async def assert_live(version: str) -> None:
            engine = served.state.engine
            assert engine is not None and engine.index_version == version
            resp = await client.post(
                "/v1/rank", json={"events": events(["2"]), "candidates": [*wanted, "s0", "1"]}
            )
            ranked = RankResponse.model_validate(resp.json())
            assert ranked.unknown == ["s0", "1"] and len(ranked.items) == len(wanted)
            got = await retrieve(served, events=events(["2"]), k=1000)
            ids = {it.item_id for it in got.items}
            assert set(wanted) <= ids and not {"s0", "1"} & ids

        await assert_live(new)

        async def rollback() -> None:
            resp = await client.post("/admin/rollback", json={"to": old}, headers=ADMIN)
            assert resp.status_code == 200, resp.text

        await asyncio.gather(rollback(), upsert(20))
        wanted.append("s20")
        await assert_live(old)  # the older version re-applies the log

        # the rebuild folds the log in: upserted items in, retired ones out, the delta empty
        manifest = await asyncio.to_thread(
            build_and_publish, data / "model", root, index_type="Flat", keep=100
        )
        last = read_changes(root)[-1].seq
        assert manifest.extra[CHANGES_THROUGH] == last
        index, _ = load_version(root, manifest.version)
        folded = set(index.item_ids.tolist())
        assert set(wanted) <= folded and not {"s0", "1"} & folded
        assert len(folded) == len(embedder.item_ids) - 1 + len(wanted)
        resp = await client.post("/admin/reload", headers=ADMIN)
        assert resp.status_code == 200 and resp.json()["index_version"] == manifest.version
        engine = served.state.engine
        assert engine is not None and engine.delta.size == 0  # nothing left to add live
        got = await retrieve(served, events=events(["2"]), k=1000)
        ids = {it.item_id for it in got.items}
        assert set(wanted) <= ids and not {"s0", "1"} & ids
        resp = await client.post(  # folded items are scored from the index, as retrieve does
            "/v1/rank", json={"events": events(["2"]), "candidates": [*wanted, "s0", "1"]}
        )
        ranked = RankResponse.model_validate(resp.json())
        assert ranked.unknown == ["s0", "1"] and len(ranked.items) == len(wanted)
        scores = {it.item_id: it.score for it in got.items}
        for it in ranked.items:
            assert it.score == pytest.approx(scores[it.item_id], abs=1e-4)

        # and rolling back to a version built before the changes re-applies them
        resp = await client.post("/admin/rollback", json={"to": old}, headers=ADMIN)
        assert resp.status_code == 200
        await assert_live(old)
    assert current_version(root) == old and manifest.version in list_versions(root)


def test_change_log_lines_are_json_with_dense_sequence_numbers(live: Live) -> None:
    lines = log_path(live.root).read_bytes().splitlines()
    seqs = [json.loads(line)["seq"] for line in lines]
    assert seqs == list(range(1, len(seqs) + 1))


# ---------------------------------------------------------------------------- real replicas
class Replica:
    """A real `uniserve serve` process over a shared data dir, polling it every second unless
    `env` says otherwise."""

    def __init__(self, data: Path, name: str, **env: str) -> None:
        self.data, self.port, self.env = data, free_port(), env
        self.log = data.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Replica:
        args = ["--no-bootstrap", "--data-dir", str(self.data), "--port", str(self.port)]
        env = {
            "UNISERVE_ADMIN_KEY": ADMIN_KEY,
            "UNISERVE_INDEX_POLL_SECONDS": str(POLL_SECONDS),
            **self.env,
        }
        self.proc = start_serve(args, self.log, env)
        wait_until_ok(f"{self.url}/readyz", self.proc, self.log, 180)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def post(self, path: str, body: Any, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=30, **kwargs)

    def unknown(self, candidates: list[str]) -> list[str]:
        resp = self.post("/v1/rank", {"events": events(["2"]), "candidates": candidates})
        assert resp.status_code == 200, resp.text
        return list(RankResponse.model_validate(resp.json()).unknown)

    def retrieved(self) -> set[str]:
        resp = self.post("/v1/retrieve", {"events": events(["2"]), "k": 1000})
        assert resp.status_code == 200, resp.text
        return {it.item_id for it in RetrieveResponse.model_validate(resp.json()).items}


POLL_SECONDS = 1.0


def eventually(check: Any, seconds: float = 60.0) -> None:
    """Wait (bounded) until `check()` is true; the bound is generous for a busy machine."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not applied within the bound"
        time.sleep(0.1)


def test_two_replicas_share_changes_through_the_log_and_a_restart_keeps_them(
    uniserve_data_dir: Path, tmp_path: Path
) -> None:
    data = copy_data(uniserve_data_dir, tmp_path / "data")
    a = Replica(data, "a").start()
    b = Replica(data, "b")
    try:
        b.start()
        taken = a.post(
            "/admin/items/upsert", {"items": [{"item_id": "r-new", "surface": "0"}]}, headers=ADMIN
        )
        assert taken.status_code == 200, taken.text
        assert a.unknown(["r-new", "1"]) == []  # on the replica that took it: at once
        assert "r-new" in a.retrieved()
        eventually(lambda: b.unknown(["r-new"]) == [])  # the other: from the log
        assert "r-new" in b.retrieved()

        retired = b.post("/admin/items/retire", {"item_ids": ["1"]}, headers=ADMIN)
        assert retired.status_code == 200, retired.text
        assert "1" not in b.retrieved()
        eventually(lambda: a.unknown(["1"]) == ["1"])
        assert "1" not in a.retrieved()
        metrics = httpx.get(f"{a.url}/metrics").text
        assert "uniserve_catalogue_applied_seq 2.0" in metrics
        assert "uniserve_catalogue_lag_seconds_count 2.0" in metrics

        a.kill()  # SIGKILL: only what was fsynced survives
        a.start()
        assert a.unknown(["r-new", "1"]) == ["1"]  # ready means the log is applied
        ids = a.retrieved()
        assert "r-new" in ids and "1" not in ids
    finally:
        a.kill()
        b.kill()


def applied_seq(replica: Replica) -> float:
    text = httpx.get(f"{replica.url}/metrics", timeout=30).text
    line = next(x for x in text.splitlines() if x.startswith("uniserve_catalogue_applied_seq "))
    return float(line.split()[1])


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_replicas_sharing_a_redis_hear_of_changes_at_once_and_the_log_covers_an_outage(
    uniserve_data_dir: Path, tmp_path: Path
) -> None:
    """The index root's log is never polled here (an hour apart): only the Redis nudge can
    bring a change to the other replica; with Redis killed the changes still succeed (the log
    is the source of truth) and arrive once Redis is back."""
    data = copy_data(uniserve_data_dir, tmp_path / "data")
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis").start()
    env = {"UNISERVE_REDIS_URL": server.url, "UNISERVE_INDEX_POLL_SECONDS": "3600"}
    a, b = Replica(data, "a", **env), Replica(data, "b", **env)
    try:
        a.start()
        b.start()
        upsert = {"items": [{"item_id": "redis-new", "surface": "0"}]}
        assert a.post("/admin/items/upsert", upsert, headers=ADMIN).status_code == 200
        eventually(lambda: b.unknown(["redis-new"]) == [])
        assert "redis-new" in b.retrieved()

        server.kill()  # Redis gone: changes still succeed, from the log
        retired = b.post("/admin/items/retire", {"item_ids": ["redis-new"]}, headers=ADMIN)
        assert retired.status_code == 200, retired.text
        assert b.unknown(["redis-new"]) == ["redis-new"]
        assert applied_seq(a) == 1  # not told: no poll, no Redis
        server.start()  # same port: the listeners reconnect and read the log
        eventually(lambda: a.unknown(["redis-new"]) == ["redis-new"])
        assert "redis-new" not in a.retrieved()
        assert applied_seq(a) == applied_seq(b) == 2
    finally:
        a.kill()
        b.kill()
        server.stop()
