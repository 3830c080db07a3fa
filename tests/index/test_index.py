"""Tests of the index package: real FAISS on seeded clustered data, checked against exact search."""

from __future__ import annotations

import itertools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import index.item_index as item_index_module
import index.recall as recall_module
from index import (
    FORMAT_VERSION,
    IndexIntegrityError,
    IndexRejectedError,
    ItemIndex,
    Manifest,
    NoIndexError,
    RejectReason,
    build_index,
    check_servable,
    check_vectors_finite,
    current_version,
    exact_topk,
    faiss_gpus,
    gate_build,
    list_versions,
    load_current,
    load_version,
    previous_version,
    prune_versions,
    publish,
    recall_at_k,
    republish,
    rollback,
    set_current,
    sha256_file,
    tune_search_params,
    verify_version,
)
from index.item_index import Eligible
from index.recall import overlap_recall, tied_recall
from index.tune import candidate_params

N, DIM, N_CLUSTERS, NOISE, N_QUERIES = 10_000, 32, 256, 1.0, 200
K = 10
SURFACE_NAMES = ("feed", "search", "stories")

# Recall@10 bounds against exact search on the data below, with their measured values: the
# bounds leave room for BLAS / platform differences, never for a broken index.
HNSW_MIN_RECALL = 0.95  # HNSW32, efSearch 128 (default): measured 1.000
IVFPQ_MIN_RECALL = 0.60  # IVF64,PQ16 trained on 2048 points, nprobe 32 (default): measured 0.847
IVFPQ_TRAIN_SIZE = 2048  # small training sample keeps PQ k-means to ~1 s on 2 cores
# IVF-PQ scores are approximate, so more probes can let a far item outrank a true neighbour:
# recall may dip by a hair as nprobe grows (measured: none). IVF-Flat has no such slack.
IVFPQ_NPROBE_SLACK = 0.02


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """n unit vectors (n, dim) around N_CLUSTERS seeded Gaussian centres."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((N_CLUSTERS, dim))  # (C, D)
    x = centres[rng.integers(0, N_CLUSTERS, n)] + NOISE * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # (n, D)


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    """One OpenMP thread: on a shared 2-core box, spinning FAISS threads only slow k-means."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return _clustered(N, DIM, seed=0)  # (N, D)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return _clustered(N_QUERIES, DIM, seed=1)  # (B, D)


@pytest.fixture(scope="module")
def item_ids() -> list[str]:
    return [f"item-{i}" for i in range(N)]


@pytest.fixture(scope="module")
def surfaces() -> list[str]:
    rng = np.random.default_rng(2)
    return [SURFACE_NAMES[s] for s in rng.integers(0, len(SURFACE_NAMES), N)]


@pytest.fixture(scope="module")
def flat(vectors, item_ids, surfaces) -> ItemIndex:
    return build_index(vectors, item_ids, surfaces, index_type="Flat")


@pytest.fixture(scope="module")
def hnsw(vectors, item_ids, surfaces) -> ItemIndex:
    return build_index(vectors, item_ids, surfaces, index_type="HNSW32")


@pytest.fixture(scope="module")
def ivfpq(vectors, item_ids, surfaces) -> ItemIndex:
    return build_index(
        vectors, item_ids, surfaces, index_type="IVF64,PQ16", train_size=IVFPQ_TRAIN_SIZE
    )


@pytest.fixture(scope="module")
def ivfflat(vectors, item_ids, surfaces) -> ItemIndex:
    return build_index(vectors, item_ids, surfaces, index_type="IVF64,Flat")


@pytest.fixture()
def small() -> ItemIndex:
    """A small IVF index (exercises the direct map on load) for persistence tests."""
    x = _clustered(2_000, 16, seed=3)  # (2000, 16)
    ids = [f"s{i}" for i in range(2_000)]
    return build_index(x, ids, ["feed"] * 1_000 + ["search"] * 1_000, index_type="IVF16,Flat")


def _allowed(n_allowed: int, seed: int = 5) -> np.ndarray:
    mask = np.zeros(N, dtype=bool)  # (N,)
    mask[np.random.default_rng(seed).choice(N, n_allowed, replace=False)] = True
    return mask


def _assert_valid(scores: np.ndarray, rows: np.ndarray, k: int, allowed: np.ndarray) -> None:
    """Each query has exactly min(k, #allowed) distinct allowed rows first, then -1 / -inf."""
    want = min(k, int(allowed.sum()))
    assert scores.shape == rows.shape == (len(rows), k)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    for s, r in zip(scores, rows, strict=True):
        assert (r[:want] >= 0).all() and (r[want:] == -1).all()
        assert np.isneginf(s[want:]).all()
        assert allowed[r[:want]].all()
        assert len(set(r[:want].tolist())) == want
        assert (np.diff(s[:want]) <= 0).all()


# ----------------------------------------------------------------------------- accuracy
def test_flat_equals_exact_topk(flat, vectors, queries):
    scores, rows = flat.search(queries, K)
    expected = exact_topk(vectors, queries, K)  # (B, K)
    np.testing.assert_array_equal(rows, expected)
    exact_scores = np.take_along_axis(queries @ vectors.T, expected, axis=1)  # (B, K)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-6)


def test_recall_counts_items_tied_with_the_kth_as_found() -> None:
    """Equal vectors (cold items with the same metadata): any K of the tied items are an exact
    top-K, so an index naming other tied items than the brute force did has recall 1; an item
    scoring below the K-th does not count, nor does a missing result."""
    rng = np.random.default_rng(0)
    twins = np.repeat(rng.standard_normal((1, 16)).astype(np.float32), 3 * K, axis=0)
    others = rng.standard_normal((200, 16)).astype(np.float32) * 0.1
    vecs = np.concatenate([others, twins])  # (200 + 3K, 16): rows 200.. are one vector
    query = twins[:1] * 2.0
    exact = exact_topk(vecs, query, K)  # K of the 3K twins
    assert set(exact[0]) <= set(range(200, 200 + 3 * K))
    other_twins = np.setdiff1d(np.arange(200, 200 + 3 * K), exact[0])[None, :K]
    assert tied_recall(other_twins, exact, vecs, query) == 1.0
    assert overlap_recall(other_twins, exact) == 0.0  # what counting ids alone would say
    worse = other_twins.copy()
    worse[0, :3] = [0, 1, 2]  # three far items instead of three twins
    worse[0, 3] = -1  # and one missing result
    assert tied_recall(worse, exact, vecs, query) == pytest.approx((K - 4) / K)
    plain = rng.standard_normal((300, 16)).astype(np.float32)  # no ties: ids decide alone
    untied = exact_topk(plain, query, K)
    beyond = exact_topk(plain, query, K + 1)[:, 1:]  # drops the best, adds the (K+1)-th
    assert tied_recall(beyond, untied, plain, query) == overlap_recall(beyond, untied)
    assert tied_recall(beyond, untied, plain, query) == (K - 1) / K
    # a real exhaustive index over them is exact, whichever twins it returns
    flat = build_index(vecs, np.arange(len(vecs)).astype(str), index_type="Flat")
    assert recall_at_k(flat, vecs, query, K) == 1.0


def test_hnsw_recall_against_exact(hnsw, vectors, queries):
    assert hnsw.search_params == {"efSearch": 128}
    assert recall_at_k(hnsw, vectors, queries, K) >= HNSW_MIN_RECALL


def test_ivfpq_recall_against_exact(ivfpq, vectors, queries):
    assert ivfpq.search_params == {"nprobe": 32}
    assert recall_at_k(ivfpq, vectors, queries, K) >= IVFPQ_MIN_RECALL


@pytest.mark.parametrize("name", ["flat", "hnsw", "ivfpq", "ivfflat"])
def test_results_sorted_distinct_and_complete(name, request, queries):
    index: ItemIndex = request.getfixturevalue(name)
    scores, rows = index.search(queries, K)
    _assert_valid(scores, rows, K, np.ones(N, dtype=bool))


# ----------------------------------------------------------------------------- search params
def test_per_call_params_leave_the_index_untouched(hnsw, ivfpq, queries):
    ef_before = faiss.downcast_index(hnsw.faiss_index).hnsw.efSearch
    nprobe_before = faiss.extract_index_ivf(ivfpq.faiss_index).nprobe
    calls = [(hnsw, {"efSearch": 16}), (hnsw, {"efSearch": 256}), (ivfpq, {"nprobe": 2})]
    calls.append((ivfpq, {"nprobe": 64}))
    sequential = [index.search(queries, K, params=p) for index, p in calls]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(idx.search, queries, K, params=p) for idx, p in calls * 5]
        concurrent = [f.result() for f in futures]
    for i, (scores, rows) in enumerate(concurrent):
        np.testing.assert_array_equal(rows, sequential[i % len(calls)][1])
        np.testing.assert_array_equal(scores, sequential[i % len(calls)][0])
    assert faiss.downcast_index(hnsw.faiss_index).hnsw.efSearch == ef_before
    assert faiss.extract_index_ivf(ivfpq.faiss_index).nprobe == nprobe_before
    assert hnsw.search_params == {"efSearch": 128} and ivfpq.search_params == {"nprobe": 32}


@settings(max_examples=12, deadline=None)
@given(a=st.integers(1, 64), b=st.integers(1, 64))
def test_ivfflat_recall_does_not_fall_as_nprobe_grows(ivfflat, vectors, queries, a, b):
    # A law for IVF-Flat: a true top-k row found among fewer lists stays top-k among more.
    lo, hi = sorted((a, b))
    low = recall_at_k(ivfflat, vectors, queries, K, params={"nprobe": lo})
    high = recall_at_k(ivfflat, vectors, queries, K, params={"nprobe": hi})
    assert low <= high


def test_ivfpq_recall_grows_with_nprobe(ivfpq, vectors, queries):
    sweep = [recall_at_k(ivfpq, vectors, queries, K, params={"nprobe": p}) for p in (1, 4, 16, 64)]
    assert all(a <= b + IVFPQ_NPROBE_SLACK for a, b in itertools.pairwise(sweep))
    assert sweep[-1] > sweep[0]


# ----------------------------------------------------------------------------- filters
def test_lookups(flat, surfaces):
    np.testing.assert_array_equal(flat.row_of(["item-5", "nope", "item-0"]), [5, -1, 0])
    assert flat.row_of([]).shape == (0,)
    mask = flat.surface_mask(["search", "unknown"])
    np.testing.assert_array_equal(mask, np.array(surfaces) == "search")
    assert not flat.surface_mask([]).any()
    with pytest.raises(ValueError, match="'feed'"):
        flat.surface_mask("feed")


@pytest.mark.parametrize("name", ["hnsw", "ivfpq"])
def test_surface_filter_inside_search(name, request, queries):
    index: ItemIndex = request.getfixturevalue(name)
    allowed = index.surface_mask(["stories"])
    scores, rows = index.search(queries, K, allowed=allowed)
    _assert_valid(scores, rows, K, allowed)


@pytest.mark.parametrize("name", ["flat", "hnsw", "ivfpq", "ivfflat"])
@pytest.mark.parametrize("params", [None, "narrow"])
def test_restrictive_filter_still_returns_k(name, params, request, queries):
    index: ItemIndex = request.getfixturevalue(name)
    narrow = {"efSearch": 16} if name == "hnsw" else {"nprobe": 1} if "ivf" in name else {}
    allowed = _allowed(15)
    scores, rows = index.search(queries, K, allowed=allowed, params=narrow if params else None)
    _assert_valid(scores, rows, K, allowed)


@pytest.mark.parametrize("name", ["flat", "hnsw", "ivfpq"])
def test_a_prepared_mask_searches_like_the_mask(name, request, queries):
    index: ItemIndex = request.getfixturevalue(name)
    allowed = _allowed(15)
    prepared = Eligible(allowed)
    assert prepared.count == 15 and prepared.selector is not None
    np.testing.assert_array_equal(
        index.search(queries, K, allowed=prepared)[1], index.search(queries, K, allowed=allowed)[1]
    )
    everything = Eligible(np.ones(N, dtype=bool))
    assert everything.selector is None
    np.testing.assert_array_equal(
        index.search(queries, K, allowed=everything)[1], index.search(queries, K)[1]
    )
    with pytest.raises(ValueError, match="allowed must be a bool array"):
        index.search(queries, K, allowed=Eligible(np.ones(N + 1, dtype=bool)))


def test_exact_fallback_is_exact_over_allowed_rows(hnsw, vectors, queries, monkeypatch):
    monkeypatch.setattr(item_index_module, "MAX_WIDEN_STEPS", 0)  # go straight to the fallback
    allowed = _allowed(15)
    allowed_rows = np.flatnonzero(allowed)  # (15,)
    _, rows = hnsw.search(queries, K, allowed=allowed, params={"efSearch": 16})
    expected = allowed_rows[exact_topk(vectors[allowed_rows], queries, K)]  # (B, K)
    np.testing.assert_array_equal(rows, expected)


@pytest.mark.parametrize("name", ["flat", "hnsw", "ivfpq"])
def test_fewer_allowed_than_k_pads(name, request, queries):
    index: ItemIndex = request.getfixturevalue(name)
    allowed = _allowed(4)
    scores, rows = index.search(queries[:20], K, allowed=allowed)
    _assert_valid(scores, rows, K, allowed)
    assert all(set(r[:4].tolist()) == set(np.flatnonzero(allowed).tolist()) for r in rows)
    scores, rows = index.search(queries[:3], K, allowed=np.zeros(N, dtype=bool))
    assert (rows == -1).all() and np.isneginf(scores).all()


def test_k_larger_than_count_pads(small):
    q = _clustered(3, 16, seed=9)  # (3, 16)
    scores, rows = small.search(q, small.count + 5)
    _assert_valid(scores, rows, small.count + 5, np.ones(small.count, dtype=bool))


# ----------------------------------------------------------------------------- validation
def test_build_refuses_bad_input(vectors, item_ids):
    x = vectors[:300].copy()  # (300, D)
    ids = item_ids[:300]
    x[7, 3] = np.nan
    x[9, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 rows with NaN or inf.*\[7, 9\]"):
        build_index(x, ids, index_type="Flat")
    with pytest.raises(ValueError, match="non-empty"):
        build_index(np.zeros((0, DIM), np.float32), [], index_type="Flat")
    with pytest.raises(ValueError, match=r"shape \(32,\)"):
        build_index(vectors[0], ["a"], index_type="Flat")
    with pytest.raises(ValueError, match="'item-1'"):
        build_index(vectors[:3], ["item-1", "item-2", "item-1"], index_type="Flat")
    with pytest.raises(ValueError, match="2 item ids for 3 vectors"):
        build_index(vectors[:3], ["a", "b"], index_type="Flat")
    with pytest.raises(ValueError, match="2 surfaces for 3 items"):
        build_index(vectors[:3], ["a", "b", "c"], ["feed", "feed"], index_type="Flat")
    with pytest.raises(ValueError, match="'l2'"):
        build_index(vectors[:3], ["a", "b", "c"], index_type="Flat", metric="l2")
    with pytest.raises(ValueError, match=r"16 IVF lists but only 300 vectors.*at most 7 lists"):
        build_index(vectors[:300], ids, index_type="IVF16,Flat")
    with pytest.raises(ValueError, match="'NoSuchIndex'"):
        build_index(vectors[:3], ["a", "b", "c"], index_type="NoSuchIndex")


def test_search_refuses_bad_input(hnsw, queries):
    with pytest.raises(ValueError, match=r"shape \(4, 16\).*dim 32"):
        hnsw.search(queries[:4, :16], K)
    with pytest.raises(ValueError, match=r"2-D.*\(32,\)"):
        hnsw.search(queries[0], K)
    bad = queries[:4].copy()
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match=r"1 rows with NaN or inf.*\[2\]"):
        hnsw.search(bad, K)
    with pytest.raises(ValueError, match="k must be a positive int, got 0"):
        hnsw.search(queries[:4], 0)
    with pytest.raises(ValueError, match=r"\['nprobe'\]"):
        hnsw.search(queries[:4], K, params={"nprobe": 4})
    with pytest.raises(ValueError, match="got -1"):
        hnsw.search(queries[:4], K, params={"efSearch": -1})
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        hnsw.search(queries[:4], K, allowed=np.ones(10, dtype=bool))
    assert hnsw.search(queries[:0], K)[1].shape == (0, K)


# ----------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("name", ["hnsw", "ivfpq"])
def test_save_load_round_trip(name, request, queries, tmp_path):
    index: ItemIndex = request.getfixturevalue(name)
    written = index.save(tmp_path)
    assert sorted(written) == sorted(p.name for p in tmp_path.iterdir())
    assert not any(p.suffix == ".pkl" for p in tmp_path.iterdir())
    loaded = ItemIndex.load(tmp_path)
    assert (loaded.index_type, loaded.metric, loaded.dim, loaded.count) == (
        index.index_type,
        index.metric,
        index.dim,
        index.count,
    )
    assert loaded.search_params == index.search_params
    np.testing.assert_array_equal(loaded.item_ids, index.item_ids)
    np.testing.assert_array_equal(loaded.surfaces, index.surfaces)
    allowed = _allowed(15)
    for kwargs in ({}, {"allowed": allowed}, {"params": {"efSearch": 16}}):
        if "params" in kwargs and name != "hnsw":
            kwargs = {"params": {"nprobe": 3}}
        for got, want in zip(
            loaded.search(queries, K, **kwargs), index.search(queries, K, **kwargs), strict=True
        ):
            np.testing.assert_array_equal(got, want)


def test_build_is_deterministic_for_a_seed():
    x = _clustered(3_000, 16, seed=4)  # (3000, 16)
    ids = [str(i) for i in range(3_000)]

    def build(seed: int) -> bytes:
        index = build_index(x, ids, index_type="IVF16,PQ4", seed=seed, train_size=1_024)
        return faiss.serialize_index(index.faiss_index).tobytes()

    assert build(0) == build(0)
    assert build(0) != build(1)


def test_publish_and_load_current_round_trip(small, tmp_path):
    q = _clustered(5, 16, seed=8)  # (5, 16)
    manifest = publish(
        small,
        tmp_path,
        model_fingerprint="fp",
        model_version="m1",
        recall_at_10=0.99,
        extra={"dataset": "synthetic"},
    )
    assert current_version(tmp_path) == manifest.version == list_versions(tmp_path)[-1]
    loaded, loaded_manifest = load_current(tmp_path)
    assert loaded_manifest == manifest
    assert (manifest.format_version, manifest.dim, manifest.count) == (FORMAT_VERSION, 16, 2_000)
    assert (manifest.metric, manifest.index_type) == ("ip", "IVF16,Flat")
    assert manifest.search_params == small.search_params and manifest.extra == {
        "dataset": "synthetic"
    }
    assert manifest.created_at.endswith("Z")
    for got, want in zip(loaded.search(q, K), small.search(q, K), strict=True):
        np.testing.assert_array_equal(got, want)
    version_dir = tmp_path / "versions" / manifest.version
    files = {p.name for p in version_dir.iterdir()}
    assert files == {*manifest.files, "manifest.json"}
    assert set(manifest.files) == {"index.faiss", "items.parquet", "index_meta.json"}
    for name, digest in manifest.files.items():
        assert sha256_file(version_dir / name) == digest
    assert not [p for p in (tmp_path / "versions").iterdir() if p.name.startswith(".tmp-")]
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["CURRENT"]


@pytest.mark.parametrize("name", ["index.faiss", "items.parquet", "index_meta.json"])
def test_tampering_is_detected(name, small, tmp_path):
    manifest = publish(small, tmp_path, model_fingerprint="fp", model_version="m1")
    path = tmp_path / "versions" / manifest.version / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IndexIntegrityError, match=name):
        load_current(tmp_path)
    path.unlink()
    with pytest.raises(IndexIntegrityError, match=f"{name}.*missing"):
        load_current(tmp_path)


def test_republish_makes_a_verified_copy_of_a_version_current(small, tmp_path):
    with pytest.raises(NoIndexError):
        republish(tmp_path)
    first = publish(
        small, tmp_path, model_fingerprint="fp", model_version="m1", extra={"catalog": "c"}
    )
    again = republish(tmp_path)
    assert again.version != first.version and current_version(tmp_path) == again.version
    assert (again.model_fingerprint, again.model_version, again.extra) == ("fp", "m1", first.extra)
    index, manifest = load_current(tmp_path)  # verified: every file hashed
    assert manifest == again and list(index.item_ids) == list(small.item_ids)
    stamped = republish(tmp_path, first.version, extra={}, model_fingerprint="other")
    assert (stamped.model_fingerprint, stamped.extra) == ("other", {})


def test_bad_manifest_is_refused(small, tmp_path):
    manifest = publish(small, tmp_path, model_fingerprint="fp", model_version="m1")
    assert Manifest.from_json(manifest.to_json()) == manifest
    data = json.loads(manifest.to_json())
    for broken, match in [
        ({**data, "surprise": 1}, "unknown \\['surprise'\\]"),
        ({k: v for k, v in data.items() if k != "dim"}, "missing \\['dim'\\]"),
        ({**data, "format_version": 99}, "format_version 99"),
        ({**data, "count": "many"}, "'count'"),
    ]:
        with pytest.raises(IndexIntegrityError, match=match):
            Manifest.from_json(json.dumps(broken))
    with pytest.raises(IndexIntegrityError, match="not valid JSON"):
        Manifest.from_json("{")


def test_current_points_to_newest_and_pruning_keeps_live(small, tmp_path):
    with pytest.raises(NoIndexError):
        load_current(tmp_path)
    assert current_version(tmp_path) is None and list_versions(tmp_path) == []
    published = [
        publish(small, tmp_path, model_fingerprint="fp", model_version=f"m{i}", keep=2).version
        for i in range(4)
    ]
    assert published == sorted(published)
    assert list_versions(tmp_path) == published[-2:]
    assert current_version(tmp_path) == published[-1]
    assert load_current(tmp_path)[1].model_version == "m3"

    # Roll back to the older survivor, then prune hard: the live version survives.
    set_current(tmp_path, published[-2])
    assert prune_versions(tmp_path, keep=1) == []
    assert list_versions(tmp_path) == published[-2:]
    assert load_current(tmp_path)[1].version == published[-2]
    newer = publish(small, tmp_path, model_fingerprint="fp", model_version="m4", keep=1)
    assert list_versions(tmp_path) == [newer.version] == [current_version(tmp_path)]


def test_set_current_refuses_unknown_versions(small, tmp_path):
    manifest = publish(small, tmp_path, model_fingerprint="fp", model_version="m1")
    for bad in ["20000101T000000000000Z-000000", "../versions", "", ".tmp-x"]:
        with pytest.raises(NoIndexError):
            set_current(tmp_path, bad)
        with pytest.raises(NoIndexError):
            load_version(tmp_path, bad)
    assert current_version(tmp_path) == manifest.version
    with pytest.raises(ValueError, match="keep must be an int >= 1, got 0"):
        publish(small, tmp_path, model_fingerprint="fp", model_version="m1", keep=0)


def test_stale_temp_dirs_are_removed(small, tmp_path):
    stale = tmp_path / "versions" / ".tmp-crashed"
    fresh = tmp_path / "versions" / ".tmp-in-progress"
    stale.mkdir(parents=True)
    fresh.mkdir()
    (stale / "index.faiss").write_bytes(b"partial")
    an_hour_ago = time.time() - 3_700
    os.utime(stale, (an_hour_ago, an_hour_ago))
    incomplete = tmp_path / "versions" / "20000101T000000000000Z-abcdef"
    incomplete.mkdir()
    manifest = publish(small, tmp_path, model_fingerprint="fp", model_version="m1")
    assert not stale.exists() and fresh.exists()
    assert list_versions(tmp_path) == [manifest.version]  # the incomplete dir is not a version
    assert Path(tmp_path / "CURRENT").read_text().strip() == manifest.version


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_sha256_is_checked_before_faiss_reads_the_index(small, tmp_path, monkeypatch):
    manifest = publish(small, tmp_path, model_fingerprint="fp", model_version="m1")
    reads: list[str] = []
    read_index = faiss.read_index

    def spy(path, *args):
        reads.append(path)
        return read_index(path, *args)

    monkeypatch.setattr(faiss, "read_index", spy)
    load_current(tmp_path)
    assert len(reads) == 1
    path = tmp_path / "versions" / manifest.version / "index.faiss"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    with pytest.raises(IndexIntegrityError, match=r"index\.faiss.*sha256") as refused:
        load_current(tmp_path)
    assert refused.value.reason is RejectReason.INTEGRITY
    assert len(reads) == 1  # faiss never saw the truncated file


def test_unfinished_versions_are_refused_with_a_reason(small, tmp_path):
    manifest = publish(small, tmp_path, model_fingerprint="fp", model_version="m1")
    versions = tmp_path / "versions"
    empty = versions / "20990101T000000000000Z-000000"
    empty.mkdir()
    with pytest.raises(IndexIntegrityError, match="empty directory") as refused:
        verify_version(tmp_path, empty.name)
    assert refused.value.reason is RejectReason.EMPTY
    (empty / "index.faiss").write_bytes(b"half a publish")
    with pytest.raises(IndexIntegrityError, match=r"no manifest\.json") as refused:
        verify_version(tmp_path, empty.name)
    assert refused.value.reason is RejectReason.MISSING_MANIFEST
    zero = json.loads(manifest.to_json()) | {"version": empty.name, "count": 0}
    (empty / "manifest.json").write_text(json.dumps(zero))
    with pytest.raises(IndexIntegrityError, match="holds no items") as refused:
        verify_version(tmp_path, empty.name)
    assert refused.value.reason is RejectReason.EMPTY
    assert list_versions(tmp_path) == [manifest.version, empty.name]  # listed, never loadable


def test_rollback_skips_damaged_versions_and_retention_keeps_the_live_one(small, tmp_path):
    v = [
        publish(small, tmp_path, model_fingerprint="fp", model_version=f"m{i}", keep=5).version
        for i in range(4)
    ]
    _flip_byte(tmp_path / "versions" / v[2] / "index.faiss")
    assert previous_version(tmp_path) == v[1]  # v[2] is damaged: skipped
    assert rollback(tmp_path) == v[1] == current_version(tmp_path)
    assert rollback(tmp_path) == v[0] == current_version(tmp_path)
    with pytest.raises(NoIndexError, match="no valid version older"):
        rollback(tmp_path)
    assert current_version(tmp_path) == v[0]
    with pytest.raises(IndexIntegrityError, match="sha256"):
        rollback(tmp_path, to=v[2])  # never points CURRENT at a damaged version
    assert rollback(tmp_path, to=v[3]) == v[3]
    # Retention: the newest `keep`, plus the live one whatever its age.
    set_current(tmp_path, v[0])
    assert prune_versions(tmp_path, keep=1) == [v[1], v[2]]
    assert list_versions(tmp_path) == [v[0], v[3]]
    newest = publish(small, tmp_path, model_fingerprint="fp", model_version="m4", keep=2).version
    assert list_versions(tmp_path) == [v[3], newest] and current_version(tmp_path) == newest


# ----------------------------------------------------------------------------- tuning + gate
@pytest.mark.parametrize(("name", "target"), [("hnsw", 0.99), ("ivfflat", 0.95)])
def test_tune_picks_the_cheapest_param_meeting_the_target(name, target, request, vectors, queries):
    index: ItemIndex = request.getfixturevalue(name)
    result = tune_search_params(index, vectors, queries, target_recall=target)
    grid = candidate_params(index)
    chosen = grid.index(result.params)
    assert chosen > 0  # a cheaper candidate exists, so "cheapest" is really tested
    assert [p for p, _ in result.tried] == grid[: chosen + 1]
    assert all(recall < target for _, recall in result.tried[:-1])
    assert result.met_target and result.recall >= target
    assert result.recall == recall_at_k(index, vectors, queries, K, params=result.params)
    assert index.search_params == (  # tuning measured, it changed nothing
        {"efSearch": 128} if name == "hnsw" else {"nprobe": 32}
    )


def test_gate_refuses_a_degraded_index_by_recall(ivfflat, vectors, queries):
    degraded = tune_search_params(ivfflat, vectors, queries, candidates=[{"nprobe": 1}])
    assert not degraded.met_target and degraded.params == {"nprobe": 1}
    with pytest.raises(IndexRejectedError, match=r"recall@10 0\.\d+ is below the target 0\.95"):
        gate_build(ivfflat, dim=DIM, recall=degraded.recall, target=0.95, params=degraded.params)
    good = tune_search_params(ivfflat, vectors, queries)
    gate_build(ivfflat, dim=DIM, recall=good.recall, target=0.95, params=good.params)


def test_gate_refuses_empty_nan_dimension_and_metric(small):
    def reason(fn, *args, **kwargs) -> RejectReason:
        with pytest.raises(IndexRejectedError) as refused:
            fn(*args, **kwargs)
        return refused.value.reason

    x = _clustered(50, 16, seed=6)  # (50, 16)
    assert reason(check_vectors_finite, np.zeros((0, 16), np.float32)) is RejectReason.EMPTY
    x[[3, 7], 2] = [np.nan, np.inf]
    assert reason(check_vectors_finite, x) is RejectReason.NAN
    assert reason(check_servable, small, dim=32) is RejectReason.DIMENSION
    flat = faiss.IndexFlatIP(16)
    flat.add(x)  # faiss stores NaN rows as given: only the gate stands in the way
    nan_index = ItemIndex(flat, [f"n{i}" for i in range(50)], index_type="Flat")
    with pytest.raises(IndexRejectedError, match=r"rows \[3, 7\].*'n3', 'n7'") as refused:
        check_servable(nan_index, dim=16)
    assert refused.value.reason is RejectReason.NAN
    check_servable(small, dim=16)
    small.metric = "l2"  # as if loaded from another build
    assert reason(check_servable, small, dim=16) is RejectReason.METRIC


def test_exact_topk_in_small_chunks_is_the_same(vectors, queries, monkeypatch):
    whole = exact_topk(vectors, queries, K)
    monkeypatch.setattr(recall_module, "SCORE_BUDGET", 3 * N)  # 3 queries per chunk
    np.testing.assert_array_equal(exact_topk(vectors, queries, K), whole)


def test_gpu_build_path_is_chosen_at_run_time(monkeypatch):
    # No GPU here: the GPU calls are faked (the "GPU" index is the CPU one), so this checks the
    # run-time selection and the wiring, and that the index comes back as a CPU index.
    x = _clustered(3_000, 16, seed=4)  # (3000, 16)
    ids = [str(i) for i in range(3_000)]
    cpu = build_index(x, ids, index_type="IVF16,Flat")
    assert faiss_gpus() == faiss.get_num_gpus() == 0
    moved: list[faiss.Index] = []

    def to_gpus(index: faiss.Index, **kwargs: object) -> faiss.Index:
        moved.append(index)
        return index

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpus)
    gpu = build_index(x, ids, index_type="IVF16,Flat")
    assert len(moved) == 1 and moved[0].metric_type == faiss.METRIC_INNER_PRODUCT
    assert faiss.extract_index_ivf(gpu.faiss_index).clustering_index is None  # not kept
    assert (
        faiss.serialize_index(gpu.faiss_index).tobytes()
        == faiss.serialize_index(cpu.faiss_index).tobytes()
    )
    build_index(x, ids, index_type="IVF16,Flat", use_gpu=False)
    build_index(x, ids, index_type="HNSW32")  # graphs are built on the CPU
    assert len(moved) == 1
