"""Sharded retrieval: the hash partition, the sharded build, shard replicas and the router.

The reference is one unsharded Flat index of the same model: a router over three shard replicas
(real `uniserve serve` subprocesses on loopback, each over one shard of a `build-index --shards
3 --type Flat` build) must return exactly its top-k, scores within float tolerance, with and
without filters. Then shards are taken away: a killed shard (connection refused) and a stopped
one (no answer: the per-shard timeout) give 200 answers flagged partial, naming the missing
shards, holding the top-k of the others, counted in the metrics and never cached; with every
shard gone the router answers 503 `backend_unavailable`. The tests of this module run in order
and share the fleet; the failure tests come last.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from index.shard import PARTITION, ShardSpec, shard_of
from tests.helpers import REPO, free_port, start_serve, wait_until_ok

if TYPE_CHECKING:
    from tests.conftest import Served, ServeFn

SHARDS = 3


# ---------------------------------------------------------------------------- the partition
def _reference_shard(item_id: str, count: int) -> int:
    """The documented partition, written out: BLAKE2b-64 of the UTF-8 id, little-endian, mod S."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % count


def test_shard_of_follows_the_documented_hash() -> None:
    ids = [f"item-{i}" for i in range(500)] + ["", "é", "42", "a/b"]
    for count in (1, 2, 3, 7):
        got = shard_of(ids, count)
        assert got.dtype == np.int64
        assert got.tolist() == [_reference_shard(i, count) for i in ids]


def test_shard_of_is_the_same_in_every_process() -> None:
    """No salted `hash()`: another interpreter with another hash seed agrees."""
    ids = [f"id{i}" for i in range(200)]
    code = (
        "import json, sys; from index.shard import shard_of; "
        "print(json.dumps(shard_of(json.loads(sys.argv[1]), 5).tolist()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(ids)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == shard_of(ids, 5).tolist()


def test_shard_of_spreads_ids_evenly() -> None:
    counts = np.bincount(shard_of((str(i) for i in range(20_000)), 4), minlength=4)
    assert counts.sum() == 20_000
    assert (np.abs(counts - 5000) < 500).all(), counts  # a binomial's sd here is ~61


@pytest.mark.parametrize(
    ("index", "count", "build_id", "quoted"),
    [(3, 3, "", "3"), (-1, 2, "", "-1"), (0, 0, "", "0"), (0, 2, "../x", "'../x'")],
)
def test_shard_spec_refuses_bad_values(index: int, count: int, build_id: str, quoted: str) -> None:
    with pytest.raises(ValueError, match="got " + quoted.replace(".", r"\.")):
        ShardSpec(index, count, build_id)


def test_shard_spec_owns_its_part() -> None:
    ids = [str(i) for i in range(100)]
    owned = [ShardSpec(i, 3).owns(ids) for i in range(3)]
    assert (np.sum(owned, axis=0) == 1).all()  # every id in exactly one shard


def test_merge_topk_orders_by_score_then_id_and_counts_an_id_once() -> None:
    from service.core.fanout import merge_topk

    answers = [[("b", 0.9), ("d", 0.5)], [("a", 0.9), ("c", 0.7)], [("b", 0.9), ("e", 0.1)]]
    want = [("a", 0.9), ("b", 0.9), ("c", 0.7), ("d", 0.5)]
    assert merge_topk(answers, 4) == want
    assert merge_topk(reversed(answers), 4) == want  # whatever order the shards answered in
    assert merge_topk(answers, 10) == [*want, ("e", 0.1)]


@pytest.mark.parametrize(
    ("urls", "problem"),
    [
        ("127.0.0.1:8100", "http:// or https://"),
        ("http://a:1,http://a:1/", "distinct"),
        ("http://a:1,http://b :2", "http:// or https://"),
    ],
)
def test_bad_shard_urls_fail_at_startup(urls: str, problem: str) -> None:
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match=problem):
        Settings(shard_urls=urls)
    assert Settings(shard_urls=" http://a:1/ , https://b:2 ").shards == (
        "http://a:1",
        "https://b:2",
    )


# ---------------------------------------------------------------------------- the fleet
@dataclass
class Fleet:
    model: Path
    roots: list[Path]  # one index root per shard
    flat_root: Path  # the unsharded reference
    procs: list[subprocess.Popen[bytes]]
    urls: list[str]
    logs: list[Path]


def _build(*args: str) -> None:
    from service.cli import main

    assert main(["build-index", "--type", "Flat", "--device", "cpu", "--quiet", *args]) == 0


def _start_shard(root: Path, model: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {"UNISERVE_INDEX_ROOT": str(root), "UNISERVE_MODEL_DIR": str(model)}
    proc = start_serve(["--no-bootstrap", "--port", str(port)], log, env)
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(fleet: Fleet) -> None:
    """Every shard answers /readyz (they start together: the waits overlap)."""
    for proc, url, log in zip(fleet.procs, fleet.urls, fleet.logs, strict=True):
        wait_until_ok(f"{url}/readyz", proc, log, 180)


@pytest.fixture(scope="module")
def fleet(uniserve_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A 3-shard Flat build and an unsharded Flat build of the session model, and one running
    `uniserve serve` per shard."""
    tmp = tmp_path_factory.mktemp("sharding")
    model = uniserve_data_dir / "model"
    _build("--model", str(model), "--index-root", str(tmp / "sharded"), "--shards", str(SHARDS))
    _build("--model", str(model), "--index-root", str(tmp / "flat"))
    roots = [tmp / "sharded" / f"shard-{i}" for i in range(SHARDS)]
    fleet = Fleet(model, roots, tmp / "flat", [], [], [])
    try:
        for i, root in enumerate(roots):
            log = tmp / f"shard-{i}.log"
            proc, url = _start_shard(root, model, log)
            fleet.procs.append(proc)
            fleet.urls.append(url)
            fleet.logs.append(log)
        _wait_ready(fleet)
        yield fleet
    finally:
        for proc in fleet.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a stopped one must run to be killed cleanly
                proc.kill()
                proc.wait(30)


@dataclass
class Pair:
    router: Served
    reference: Served
    fast_router: Served  # a 0.5 s shard timeout, for the stopped-shard test


@pytest.fixture(scope="module")
async def pair(
    fleet: Fleet, serve: ServeFn, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Pair]:
    """A router over the fleet (in-process, through its lifespan) and a normal app over the
    unsharded reference index; a generous shard timeout, so a busy machine cannot make the
    comparison partial."""
    from service.settings import Settings

    data = tmp_path_factory.mktemp("router-data")  # holds nothing: a router needs no index
    common: dict[str, Any] = {"data_dir": data, "model_dir": fleet.model, "bootstrap": False}
    router = Settings(**common, shard_urls=",".join(fleet.urls), shard_timeout_seconds=30.0)
    fast = Settings(**common, shard_urls=",".join(fleet.urls), shard_timeout_seconds=0.5)
    reference = Settings(**common, index_root=fleet.flat_root, index_poll_seconds=0)
    async with serve(router) as r, serve(reference) as ref, serve(fast) as f:
        yield Pair(r, ref, f)


def _manifest(root: Path) -> dict[str, Any]:
    version = (root / "CURRENT").read_text().strip()
    manifest: dict[str, Any] = json.loads(
        (root / "versions" / version / "manifest.json").read_text()
    )
    return manifest


def _item_ids(root: Path) -> list[str]:
    from index import load_current

    index, _ = load_current(root)
    return [str(i) for i in index.item_ids]


def test_sharded_build_partitions_the_catalogue(fleet: Fleet) -> None:
    manifests = [_manifest(root) for root in fleet.roots]
    specs = [m["extra"]["shard"] for m in manifests]
    assert [(s["index"], s["count"], s["partition"]) for s in specs] == [
        (i, SHARDS, PARTITION) for i in range(SHARDS)
    ]
    assert len({s["build_id"] for s in specs}) == 1 and specs[0]["build_id"]
    parts = [_item_ids(root) for root in fleet.roots]
    catalogue = _item_ids(fleet.flat_root)
    assert sorted(i for part in parts for i in part) == sorted(catalogue)  # union, no overlap
    for i, part in enumerate(parts):
        assert part and (shard_of(part, SHARDS) == i).all()
    assert "shard" not in _manifest(fleet.flat_root)["extra"]


def test_all_shards_of_a_build_share_one_encoding(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--shards S` without `--shard` encodes the catalogue once, not once per shard."""
    import service.jobs.catalog
    import service.jobs.pipeline
    from service.cli import main

    calls = []
    real = service.jobs.catalog.encode_catalogue

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(service.jobs.catalog, "encode_catalogue", counting)
    monkeypatch.setattr(service.jobs.pipeline, "encode_catalogue", counting)
    args = ["build-index", "--model", str(fleet.model), "--index-root", str(tmp_path)]
    assert main([*args, "--shards", "2", "--type", "Flat", "--quiet"]) == 0
    assert len(calls) == 1
    assert all((tmp_path / f"shard-{i}" / "CURRENT").exists() for i in range(2))


def test_build_index_refuses_a_shard_outside_the_count(fleet: Fleet, tmp_path: Path) -> None:
    from service.cli import EXIT_ERROR, main

    args = ["build-index", "--model", str(fleet.model), "--index-root", str(tmp_path), "--quiet"]
    assert main([*args, "--shards", "2", "--shard", "2"]) == EXIT_ERROR
    assert main([*args, "--shards", "0"]) == EXIT_ERROR
    assert main([*args, "--shards", "2", "--build-id", "../up"]) == EXIT_ERROR
    assert main([*args, "--shard", "0"]) == EXIT_ERROR  # --shard without --shards
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------- router == Flat
def _users(model: Path, n: int) -> list[dict[str, Any]]:
    """`n` users given by events over real catalogue items (seeded), on several surfaces."""
    from models.embedder import Embedder

    embedder = Embedder.from_dir(model)
    ids, surfaces = list(embedder.item_ids), list(embedder.item_surfaces)
    rng = np.random.default_rng(7)
    users = []
    for _ in range(n):
        picks = rng.choice(len(ids), size=int(rng.integers(1, 12)), replace=False)
        users.append(
            {"events": [{"item_id": ids[p], "surface": surfaces[p] or "feed"} for p in picks]}
        )
    return users


async def _retrieve(served: Served, body: dict[str, Any]) -> dict[str, Any]:
    response = await served.client.post("/v1/retrieve", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in want["items"]]
    np.testing.assert_allclose(
        [i["score"] for i in got["items"]], [i["score"] for i in want["items"]], atol=1e-5
    )


@pytest.mark.anyio
async def test_router_returns_the_unsharded_flat_top_k(pair: Pair, fleet: Fleet) -> None:
    from models.embedder import Embedder

    by_size = Counter(s for s in Embedder.from_dir(fleet.model).item_surfaces if s)
    surfaces = [s for s, _ in by_size.most_common(2)]  # the largest: k items each
    for n, user in enumerate(_users(fleet.model, 6)):
        want = await _retrieve(pair.reference, {**user, "k": 20})
        variants = [
            {"k": 20},
            {"k": 5},
            {"k": 60},
            {"k": 10, "surfaces": surfaces[n % 2 : n % 2 + 1]},
            {"k": 10, "exclude": [i["item_id"] for i in want["items"][:7]]},
            {"k": 10, "exclude_seen": True},
            {"k": 10, "surfaces": surfaces[:1], "exclude_seen": True},
        ]
        for variant in variants:
            body = {**user, **variant}
            got, expected = (
                await _retrieve(pair.router, body),
                await _retrieve(pair.reference, body),
            )
            _assert_same(got, expected)
            assert len(got["items"]) == variant["k"]
            assert got["partial"] is False and got["missing_shards"] == []
            assert "partial" not in expected  # a normal replica's answer is unchanged
            versions = [_manifest(root)["version"] for root in fleet.roots]
            assert got["index_version"] == "+".join(versions)


@pytest.mark.anyio
async def test_router_serves_model_routes_and_reports_its_shards(pair: Pair, fleet: Fleet) -> None:
    router, reference = pair.router, pair.reference
    ready = await router.client.get("/readyz")
    assert ready.status_code == 200
    info = (await router.client.get("/v1/index")).json()
    assert info["mode"] == "router" and [s["url"] for s in info["shards"]] == fleet.urls
    assert [s["spec"]["index"] for s in info["shards"]] == list(range(SHARDS))
    assert all(s["outcome"] == "ok" and s["index_version"] for s in info["shards"])

    user = _users(fleet.model, 1)[0]
    candidates = [e["item_id"] for e in user["events"]] + ["no-such-item"]
    ranked = [
        (await served.client.post("/v1/rank", json={**user, "candidates": candidates})).json()
        for served in (router, reference)
    ]
    assert ranked[0]["items"] == ranked[1]["items"] and ranked[0]["unknown"] == ["no-such-item"]

    multi = await router.client.post("/v1/retrieve", json={**user, "k": 5, "mode": "multi"})
    # valid requests a router cannot serve (no local index): 409 unservable, not 422
    assert multi.status_code == 409 and multi.json()["error_type"] == "unservable"
    shard_route = await router.client.post("/v1/shard/search", json={"vector": [0.0], "k": 1})
    assert shard_route.status_code == 409 and "router" in shard_route.json()["error"]


@pytest.mark.anyio
async def test_shard_search_checks_the_vector(pair: Pair, fleet: Fleet) -> None:
    dim = len(
        (
            await pair.reference.client.post("/v1/users/embed", json=_users(fleet.model, 1)[0])
        ).json()["embedding"]
    )
    async with httpx.AsyncClient(base_url=fleet.urls[0]) as client:
        wrong = await client.post("/v1/shard/search", json={"vector": [0.1] * (dim + 1), "k": 3})
        assert wrong.status_code == 422
        assert (
            wrong.json()["error_type"] == "invalid_input" and "dimensions" in wrong.json()["error"]
        )
        text = await client.post("/v1/shard/search", json={"vector": ["1"] * dim, "k": 3})
        assert text.status_code == 422 and text.json()["error_type"] == "invalid_input"
        ok = await client.post("/v1/shard/search", json={"vector": [0.1] * dim, "k": 3})
        assert ok.status_code == 200 and len(ok.json()["items"]) == 3
        assert ok.json()["shard"]["index"] == 0


# ---------------------------------------------------------------------------- shards go away
def _metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels}")


async def _metrics(served: Served) -> str:
    return (await served.client.get("/metrics")).text


@pytest.mark.anyio
async def test_missing_shards_give_flagged_partial_results_then_503(
    pair: Pair, fleet: Fleet
) -> None:
    users = _users(fleet.model, 12)[6:]  # not asked before: nothing cached for them
    shard_items = [_item_ids(root) for root in fleet.roots]

    # shard 1 killed: connection refused, counted as an error
    fleet.procs[1].kill()
    fleet.procs[1].wait(30)
    before = await _metrics(pair.router)
    misses = _metric(before, "uniserve_cache_requests_total", op="retrieve", result="miss")
    for user in users[:3]:
        got = await _retrieve(pair.router, {**user, "k": 15})
        assert got["partial"] is True and got["missing_shards"] == [1]
        # the top-k of the other shards = the unsharded top-k with shard 1's items excluded
        want = await _retrieve(pair.reference, {**user, "k": 15, "exclude": shard_items[1]})
        _assert_same(got, want)
        again = await _retrieve(pair.router, {**user, "k": 15})  # partial: never cached
        assert again["partial"] is True
    after = await _metrics(pair.router)
    assert _metric(after, "uniserve_shard_requests_total", shard="1", outcome="error") >= 6
    assert _metric(after, "uniserve_shard_requests_total", shard="1", outcome="ok") == _metric(
        before, "uniserve_shard_requests_total", shard="1", outcome="ok"
    )
    assert _metric(after, "uniserve_cache_requests_total", op="retrieve", result="miss") == (
        misses + 6
    )
    info = (await pair.router.client.get("/v1/index")).json()
    assert info["shards"][1]["outcome"] == "error" and info["shards"][1]["detail"]

    # shard 2 stopped too: it accepts the connection but never answers, the timeout cuts it
    fleet.procs[2].send_signal(signal.SIGSTOP)
    got = await _retrieve(pair.fast_router, {**users[3], "k": 8})
    assert got["partial"] is True and got["missing_shards"] == [1, 2]
    want = await _retrieve(
        pair.reference, {**users[3], "k": 8, "exclude": shard_items[1] + shard_items[2]}
    )
    _assert_same(got, want)
    text = await _metrics(pair.fast_router)
    assert _metric(text, "uniserve_shard_requests_total", shard="2", outcome="timeout") == 1

    # every shard gone: 503 backend_unavailable in the one error shape
    fleet.procs[0].kill()
    fleet.procs[0].wait(30)
    gone = await pair.fast_router.client.post("/v1/retrieve", json={**users[4], "k": 5})
    assert gone.status_code == 503
    assert gone.json()["error_type"] == "backend_unavailable" and "shard" in gone.json()["error"]
    assert (await pair.fast_router.client.get("/readyz")).status_code == 200  # the model is
