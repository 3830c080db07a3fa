"""Index rebuild and hot swap: the real app, real artifacts, real FAISS, real files on disk.

The session model (tests/conftest.py) is indexed twice over disjoint halves of its catalogue,
versions A (even rows) and B (odd rows), so every response shows which version served it.
Swaps go through POST /admin/reload and /admin/rollback, or the CURRENT watcher; bad artifacts
are made by damaging real published versions; half-published versions by SIGKILLing a real
publisher at chosen points.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from weakref import ref

import anyio
import anyio.to_thread
import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from index import (
    ItemIndex,
    current_version,
    list_versions,
    load_current,
    publish,
    republish,
    set_current,
)
from models.data import load_corpus
from models.embedder import Embedder
from models.train import TrainConfig
from service.api.schemas import IndexInfo, RankResponse, RetrieveResponse, SwapResponse
from service.cli import EXIT_ERROR, EXIT_REFUSED, main
from service.jobs.catalog import encode_catalogue
from service.jobs.pipeline import build_and_publish, train_to_dir
from service.settings import Settings
from tests.helpers import REPO, copy_data, publish_halves

if TYPE_CHECKING:
    from tests.conftest import Served, ServeFn

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
K = 10


def hot_settings(data_dir: Path, **overrides: Any) -> Settings:
    """No cache (every request computes), no polling (swaps happen when a test says so)."""
    base: dict[str, Any] = {
        "data_dir": data_dir,
        "bootstrap": False,
        "admin_key": TOKEN,
        "cache_ttl_seconds": 0,
        "index_poll_seconds": 0,
    }
    return Settings(**(base | overrides))


@dataclass
class Hot:
    served: Served
    root: Path  # the index root
    a: str  # version over the even catalogue rows
    b: str  # version over the odd catalogue rows
    items: dict[str, set[str]]  # version -> its item ids
    embedder: Embedder

    @property
    def engine_version(self) -> str:
        engine = self.served.state.engine
        assert engine is not None
        return engine.index_version

    def failures(self, reason: str) -> float:
        counter = self.served.state.metrics.index_reload_failures
        return float(counter.labels(reason)._value.get())

    async def make_live(self, version: str) -> None:
        set_current(self.root, version)
        resp = await self.served.client.post("/admin/reload", headers=AUTH)
        assert resp.status_code == 200, resp.text
        assert self.engine_version == version


def _republish_plain(root: Path) -> str:
    """Publish the live index again as a new version (not CURRENT); returns its name."""
    live = current_version(root)
    new = republish(root, keep=100)
    assert live is not None
    set_current(root, live)
    return new.version


@pytest.fixture(scope="module")
async def hot(
    uniserve_data_dir: Path, tmp_path_factory: pytest.TempPathFactory, serve: ServeFn
) -> AsyncIterator[Hot]:
    data = copy_data(uniserve_data_dir, tmp_path_factory.mktemp("hot") / "data")
    embedder = Embedder.from_dir(data / "model")
    a, b, items = publish_halves(data / "indexes", embedder)
    set_current(data / "indexes", a)
    async with serve(hot_settings(data)) as served:
        yield Hot(served, data / "indexes", a, b, items, embedder)


def histories(embedder: Embedder, n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """n histories of 3..12 real catalogue events."""
    rng = np.random.default_rng(seed)
    ids, surfaces = embedder.item_ids, embedder.item_surfaces
    out = []
    for _ in range(n):
        rows = rng.choice(len(ids), size=int(rng.integers(3, 13)), replace=False)
        out.append([{"item_id": str(ids[r]), "surface": str(surfaces[r]) or "0"} for r in rows])
    return out


def assert_error(resp: Any, status: int, error_type: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type, body
    return str(body["error"])


async def retrieve(served: Served, events: list[dict[str, str]]) -> RetrieveResponse:
    resp = await served.client.post("/v1/retrieve", json={"events": events, "k": K})
    assert resp.status_code == 200, resp.text
    return RetrieveResponse.model_validate(resp.json())


# ---------------------------------------------------------------------------- swap under load
@pytest.mark.anyio
async def test_swap_under_load_every_response_comes_from_the_version_it_names(hot: Hot) -> None:
    await hot.make_live(hot.a)
    n_requests, concurrency, n_swaps = 2_000, 32, 8
    bodies = histories(hot.embedder, n_requests, seed=1)
    statuses: Counter[int] = Counter()
    served_by: Counter[str] = Counter()
    strays: list[tuple[str, list[str]]] = []
    swapped: list[SwapResponse] = []
    slots = anyio.Semaphore(concurrency)
    # the swaps are spread through the load: swap j waits for (j + 1) / (n_swaps + 1) of it
    marks = [anyio.Event() for _ in range(n_swaps)]
    done = 0
    failures_before = sum(hot.failures(r) for r in ("integrity", "internal", "io", "not_found"))

    async def one(i: int) -> None:
        nonlocal done
        async with slots:
            resp = await hot.served.client.post("/v1/retrieve", json={"events": bodies[i], "k": K})
        statuses[resp.status_code] += 1
        if resp.status_code == 200:
            body = RetrieveResponse.model_validate(resp.json())
            ids = [it.item_id for it in body.items]
            served_by[body.index_version] += 1
            if len(ids) != K or not set(ids) <= hot.items[body.index_version]:
                strays.append((body.index_version, ids))
        done += 1
        for j, mark in enumerate(marks):
            if done >= (j + 1) * n_requests // (n_swaps + 1):
                mark.set()

    async def swapper() -> None:
        for j, mark in enumerate(marks):
            await mark.wait()
            target = hot.b if j % 2 == 0 else hot.a
            await anyio.to_thread.run_sync(set_current, hot.root, target)
            resp = await hot.served.client.post("/admin/reload", headers=AUTH)
            assert resp.status_code == 200, resp.text
            swapped.append(SwapResponse.model_validate(resp.json()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(swapper)
        for i in range(n_requests):
            tg.start_soon(one, i)

    assert statuses == {200: n_requests}  # zero non-2xx
    assert strays == []  # every item of every response belongs to the version it names
    assert len(swapped) == n_swaps >= 5 and all(s.changed for s in swapped)
    assert [s.index_version for s in swapped] == [hot.b, hot.a] * (n_swaps // 2)
    assert set(served_by) == {hot.a, hot.b} and min(served_by.values()) > n_requests // 10
    assert sum(hot.failures(r) for r in ("integrity", "internal", "io", "not_found")) == (
        failures_before
    )
    rank = await hot.served.client.post(
        "/v1/rank", json={"events": bodies[0], "candidates": sorted(hot.items[hot.a])[:5]}
    )
    assert RankResponse.model_validate(rank.json()).index_version == hot.engine_version


# ---------------------------------------------------------------------------- bad artifacts
def _republish(hot: Hot, version: str, **kwargs: Any) -> Path:
    """A new version holding `version`'s index; returns its directory."""
    new = republish(hot.root, version, keep=100, extra={}, **kwargs)
    return hot.root / "versions" / new.version


def _publish_vectors(hot: Hot, vectors: np.ndarray) -> Path:
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    index = ItemIndex(flat, [f"x{i}" for i in range(len(vectors))], index_type="Flat")
    new = publish(
        index,
        hot.root,
        model_fingerprint=hot.embedder.fingerprint,
        model_version=hot.embedder.version,
        keep=100,
    )
    return hot.root / "versions" / new.version


def truncated(hot: Hot) -> Path:
    directory = _republish(hot, hot.b)
    path = directory / "index.faiss"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return directory


def flipped_byte(hot: Hot) -> Path:
    directory = _republish(hot, hot.b)
    path = directory / "index.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x40
    path.write_bytes(bytes(data))
    return directory


def wrong_dimension(hot: Hot) -> Path:
    rng = np.random.default_rng(3)
    return _publish_vectors(hot, rng.standard_normal((50, hot.embedder.dim + 8), np.float32))


def nan_vectors(hot: Hot) -> Path:
    x = np.random.default_rng(4).standard_normal((50, hot.embedder.dim), np.float32)
    x[[5, 9]] = np.nan
    return _publish_vectors(hot, x)


def missing_manifest(hot: Hot) -> Path:
    directory = _republish(hot, hot.b)
    (directory / "manifest.json").unlink()
    return directory


def empty_directory(hot: Hot) -> Path:
    directory = hot.root / "versions" / "29991231T235959999999Z-e0e0e0"
    directory.mkdir()
    return directory


def other_model(hot: Hot) -> Path:
    return _republish(hot, hot.b, model_fingerprint="f" * 64)


def no_such_version(hot: Hot) -> Path:
    return hot.root / "versions" / "29991231T235959999999Z-0a0a0a"


BAD_ARTIFACTS: list[tuple[Callable[[Hot], Path], str]] = [
    (truncated, "integrity"),
    (flipped_byte, "integrity"),
    (wrong_dimension, "dimension"),
    (nan_vectors, "nan"),
    (missing_manifest, "missing_manifest"),
    (empty_directory, "empty"),
    (other_model, "model_mismatch"),
    (no_such_version, "not_found"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("make_bad", "reason"), BAD_ARTIFACTS, ids=lambda v: getattr(v, "__name__", v)
)
async def test_bad_artifacts_are_refused_and_the_old_version_keeps_serving(
    hot: Hot, make_bad: Callable[[Hot], Path], reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await hot.make_live(hot.a)
    reads: list[str] = []
    read_index = faiss.read_index

    def spy(path: str, *args: Any) -> Any:
        reads.append(path)
        return read_index(path, *args)

    monkeypatch.setattr(faiss, "read_index", spy)
    bad = make_bad(hot)
    (hot.root / "CURRENT").write_text(bad.name + "\n")  # by hand: set_current refuses these
    before = hot.failures(reason)

    message = assert_error(
        await hot.served.client.post("/admin/reload", headers=AUTH), 409, "index_rejected"
    )
    assert f"({reason})" in message and bad.name in message
    assert f"still serving {hot.a!r}" in message
    assert hot.failures(reason) == before + 1
    assert hot.engine_version == hot.a
    out = await retrieve(hot.served, histories(hot.embedder, 1, seed=2)[0])
    assert out.index_version == hot.a and {it.item_id for it in out.items} <= hot.items[hot.a]
    if reason == "integrity":
        assert not [p for p in reads if bad.name in p]  # sha256 refused it before faiss read it
    # the watcher leaves a refused version alone
    reloader = hot.served.state.reloader
    assert reloader is not None
    assert await reloader.poll_once() is None
    assert hot.failures(reason) == before + 1
    set_current(hot.root, hot.a)


# ---------------------------------------------------------------------------- watcher + admin
@pytest.mark.anyio
async def test_a_swapped_in_engine_is_kept_out_of_collections_and_the_old_one_is_freed(
    hot: Hot,
) -> None:
    def collectable(obj: object) -> bool:  # seen by the collector's passes (not frozen)
        return any(o is obj for o in gc.get_objects())

    await hot.make_live(hot.a)
    engine = hot.served.state.engine
    assert engine is not None and not collectable(engine)
    old = ref(engine)
    del engine
    await hot.make_live(hot.b)
    new = hot.served.state.engine
    assert new is not None and not collectable(new) and not collectable(new.index)
    assert old() is None  # nothing in flight held it: freed at the swap


@pytest.mark.anyio
async def test_watcher_follows_current(hot: Hot) -> None:
    await hot.make_live(hot.a)
    reloader = hot.served.state.reloader
    assert reloader is not None
    assert await reloader.poll_once() is None  # CURRENT names the live version
    set_current(hot.root, hot.b)
    outcome = await reloader.poll_once()
    assert outcome is not None and outcome.changed
    assert (outcome.previous_index_version, outcome.index_version) == (hot.a, hot.b)
    info = IndexInfo.model_validate((await hot.served.client.get("/v1/index")).json())
    assert (info.index_version, info.count) == (hot.b, len(hot.items[hot.b]))
    assert info.search_params == {"efSearch": 128} and info.age_seconds >= 0
    assert info.loaded_at.endswith("Z")
    metrics = (await hot.served.client.get("/metrics")).text
    assert f"uniserve_index_items {float(len(hot.items[hot.b]))}" in metrics
    assert 'uniserve_index_reload_failures_total{reason="nan"}' in metrics


@pytest.mark.anyio
async def test_the_background_watcher_swaps_without_being_asked(
    uniserve_data_dir: Path, tmp_path: Path, serve: ServeFn
) -> None:
    data = copy_data(uniserve_data_dir, tmp_path / "data")
    new = _republish_plain(data / "indexes")
    async with serve(hot_settings(data, index_poll_seconds=0.1)) as served:
        set_current(data / "indexes", new)
        with anyio.fail_after(30):  # a bound, not a timing assertion: the poll is every 0.1 s
            while (await served.client.get("/readyz")).json()["index_version"] != new:
                await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_admin_routes_need_the_bearer_token(hot: Hot, serve: ServeFn, tmp_path: Path) -> None:
    async with serve(Settings(data_dir=tmp_path, bootstrap=False)) as served:
        message = assert_error(await served.client.post("/admin/reload"), 403, "forbidden")
        assert "UNISERVE_ADMIN_KEY" in message
    client = hot.served.client
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": TOKEN},
    ):
        resp = await client.post("/admin/rollback", headers=headers)
        assert_error(resp, 401, "unauthorized")
        assert resp.headers["www-authenticate"] == "Bearer"
    await hot.make_live(hot.a)
    resp = await client.post("/admin/reload", headers=AUTH)
    assert SwapResponse.model_validate(resp.json()).changed is False
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(admin_key="short-key-0123")


# ---------------------------------------------------------------------------- rollback + pairs
@pytest.mark.anyio
async def test_rollback_skips_a_damaged_version_and_points_current_back(
    uniserve_data_dir: Path, tmp_path: Path, serve: ServeFn
) -> None:
    data = copy_data(uniserve_data_dir, tmp_path / "data")
    root = data / "indexes"
    first = current_version(root)
    damaged = _republish_plain(root)
    latest = _republish_plain(root)
    path = root / "versions" / damaged / "items.parquet"
    path.write_bytes(path.read_bytes()[:-7])
    set_current(root, latest)
    async with serve(hot_settings(data)) as served:
        failures = served.state.metrics.index_reload_failures.labels("integrity")
        resp = await served.client.post("/admin/rollback", headers=AUTH)
        assert resp.status_code == 200, resp.text
        out = SwapResponse.model_validate(resp.json())
        assert (out.previous_index_version, out.index_version) == (latest, first)
        assert current_version(root) == first and failures._value.get() == 1
        message = assert_error(
            await served.client.post("/admin/rollback", headers=AUTH), 409, "index_rejected"
        )
        assert "no index version older than" in message
        assert (await served.client.get("/readyz")).json()["index_version"] == first
    assert main(["rollback", "--index-root", str(root), "--to", latest]) == 0
    assert current_version(root) == latest
    assert main(["rollback", "--index-root", str(root)]) == 0  # skips the damaged one
    assert current_version(root) == first
    assert main(["rollback", "--index-root", str(root)]) == EXIT_ERROR


@pytest.mark.anyio
async def test_a_model_and_the_index_built_for_it_swap_as_one_unit(
    uniserve_data_dir: Path, tmp_path: Path, serve: ServeFn
) -> None:
    data = copy_data(uniserve_data_dir, tmp_path / "data")
    other = tmp_path / "other-model"  # another architecture: the old index cannot serve it
    cfg = TrainConfig(dim=32, num_layers=1, max_len=20, epochs=1, max_steps=2, seed=7)
    train_to_dir(load_corpus("sample"), cfg, other, evaluate=False)
    async with serve(hot_settings(data)) as served:
        engine = served.state.engine
        assert engine is not None
        old_model, old_index = engine.model_version, engine.index_version
        manifest = build_and_publish(other, data / "indexes", index_type="Flat")
        assert manifest.extra["model_dir"] == str(other.resolve())
        resp = await served.client.post("/admin/reload", headers=AUTH)
        assert resp.status_code == 200, resp.text
        swap = SwapResponse.model_validate(resp.json())
        assert swap.index_version == manifest.version and swap.model_version != old_model
        assert swap.previous_model_version == old_model
        events = histories(Embedder.from_dir(other), 1)[0]
        out = await retrieve(served, events)
        assert (out.model_version, out.index_version) == (swap.model_version, manifest.version)
        user = (await served.client.post("/v1/users/embed", json={"events": events})).json()
        assert len(user["embedding"]) == 32
        resp = await served.client.post("/admin/rollback", headers=AUTH)
        back = SwapResponse.model_validate(resp.json())
        assert (back.model_version, back.index_version) == (old_model, old_index)


# ---------------------------------------------------------------------------- half-published
PUBLISHER = """
import importlib, os, signal, sys
from pathlib import Path
from index import load_current, publish

publish_module = importlib.import_module("index.publish")  # `index.publish` is the function

root, point = Path(sys.argv[1]), sys.argv[2]
index, manifest = load_current(root)

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if point == "before_manifest":
    write = publish_module._write_durably
    publish_module._write_durably = lambda path, text: (
        die() if path.name == "manifest.json" else write(path, text)
    )
elif point == "before_version_rename":
    publish_module.os.rename = die
elif point == "before_current_rename":
    publish_module.os.replace = die
publish(index, root, model_fingerprint=manifest.model_fingerprint, model_version="half", keep=9)
"""


@pytest.mark.anyio
@pytest.mark.parametrize(
    "point", ["before_manifest", "before_version_rename", "before_current_rename"]
)
async def test_a_publisher_killed_half_way_never_gets_its_version_loaded(
    point: str, uniserve_data_dir: Path, tmp_path: Path, serve: ServeFn
) -> None:
    data = copy_data(uniserve_data_dir, tmp_path / "data")
    root = data / "indexes"
    complete = current_version(root)
    async with serve(hot_settings(data)) as served:
        killed = subprocess.run(
            [sys.executable, "-c", PUBLISHER, str(root), point],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        leftovers = [p for p in (root / "versions").iterdir() if p.name.startswith(".tmp-")]
        orphans = [v for v in list_versions(root) if v != complete]
        if point == "before_current_rename":
            assert len(orphans) == 1 and not leftovers  # complete, but CURRENT never named it
        else:
            assert len(leftovers) == 1 and not orphans
            has_manifest = (leftovers[0] / "manifest.json").exists()
            assert has_manifest == (point == "before_version_rename")
        assert current_version(root) == complete
        reloader = served.state.reloader
        assert reloader is not None
        assert await reloader.poll_once() is None
        resp = await served.client.post("/admin/reload", headers=AUTH)
        assert SwapResponse.model_validate(resp.json()).changed is False
    async with serve(hot_settings(data)) as restarted:  # a restart serves the last complete one
        info = IndexInfo.model_validate((await restarted.client.get("/v1/index")).json())
        assert info.index_version == complete


# ---------------------------------------------------------------------------- the build job
def test_build_index_gate_refuses_a_degraded_index_and_publishes_nothing(
    uniserve_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = copy_data(uniserve_data_dir, tmp_path / "data")
    root = data / "indexes"
    before = (current_version(root), list_versions(root))
    args = ["build-index", "--model", str(data / "model"), "--index-root", str(root), "--quiet"]
    code = main([*args, "--type", "IVF16,Flat", "--nprobe", "1"])
    err = capsys.readouterr().err
    assert code == EXIT_REFUSED, err
    assert "refused (recall): recall@10" in err and "nothing was published" in err
    assert (current_version(root), list_versions(root)) == before
    assert not [p for p in (root / "versions").iterdir() if p.name.startswith(".")]
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"item_id": pa.array([], pa.string())}), empty)
    assert main([*args, "--catalog", str(empty)]) == EXIT_REFUSED
    assert "refused (empty)" in capsys.readouterr().err
    assert (current_version(root), list_versions(root)) == before


def test_build_index_encodes_a_catalogue_tunes_and_records_it(
    uniserve_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = uniserve_data_dir / "model"
    embedder = Embedder.from_dir(model_dir)
    # the model's own vocabulary encodes to exactly the vectors the service ranks with
    own = encode_catalogue(embedder, device="cpu", batch_size=100)
    np.testing.assert_array_equal(own.vectors, embedder.item_vectors())
    ids = [str(i) for i in embedder.item_ids[:300]]
    surfaces = [str(s) for s in embedder.item_surfaces[:300]]
    catalog = tmp_path / "items.parquet"
    table = {"item_id": [*ids, "brand-new"], "surface": [*surfaces, "4"]}
    pq.write_table(pa.table(table | {"colour": ["red"] * 301}), catalog)
    root = tmp_path / "indexes"
    code = main(
        [
            "build-index", "--model", str(model_dir), "--index-root", str(root),
            "--catalog", str(catalog), "--data", "sample", "--target-recall", "0.9", "--quiet",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    index, manifest = load_current(root)
    assert manifest.version == printed["version"] and manifest.count == index.count == 301
    assert manifest.search_params == printed["search_params"] == index.search_params
    assert manifest.recall_at_10 is not None and manifest.recall_at_10 >= 0.9
    extra = manifest.extra
    assert extra["model_dir"] == str(model_dir.resolve()) and extra["catalog"] == str(catalog)
    assert extra["cold_start_items"] == 1 and extra["encode_device"] == "cpu"
    assert extra["query_source"] == "validation users of sample"
    assert extra["tuning"]["met_target"] and extra["tuning"]["tried"][-1][0] == index.search_params
    for key in ("encode_seconds", "build_seconds", "tune_seconds", "total_seconds"):
        assert extra[key] >= 0
    stored = index.faiss_index.reconstruct_n(0, index.count)  # (301, D)
    np.testing.assert_allclose(stored[:300], embedder.item_vectors()[:300], atol=1e-6)
    cold = embedder.embed_items([("brand-new", "4", {})])  # (1, D)
    np.testing.assert_allclose(stored[300:], cold, atol=1e-6)
    assert index.item_ids[-1] == "brand-new" and index.surfaces[-1] == "4"
