"""The Ray Data rebuild (`build-index --engine ray`, `service/jobs/ray_build.py`) against the local one.

On a local Ray instance with 2 CPUs (started once for the module), over the session model
(trained on the shipped sample, tests/conftest.py) and a catalogue split into several parquet
files that also holds items the model never saw: the Ray path must encode exactly what the
local path encodes (same ids in the same order, vectors allclose), and the indexes both publish
must hold the same items and reach the same recall@10 against exact search on the same queries.
Needs the `ray` extra (`pip install .[ray]`, installed by `make test`); without it only the
test of the missing-extra message runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index import exact_topk, load_current, recall_at_k
from models.embedder import Embedder
from service.cli import EXIT_ERROR, main
from service.jobs.catalog import encode_catalogue
from service.jobs.pipeline import build_and_publish

PARTS = 3  # parquet files the catalogue is split into
NEW_ITEMS = 40  # catalogue items the model has never seen (cold-start vectors)
IVF_TYPE = "IVF8,Flat"  # 8 lists need 312+ vectors; the sample model knows ~700 items
RECALL_TOLERANCE = 0.01  # the same training rows and seed: the IVF indexes should be identical


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(uniserve_data_dir: Path) -> Path:
    return uniserve_data_dir / "model"


@pytest.fixture(scope="module")
def catalogue(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of PARTS parquet files: the model's items, then NEW_ITEMS unknown ones,
    with a column the model does not read."""
    embedder = Embedder.from_dir(model_dir)
    ids = [*map(str, embedder.item_ids), *(f"new-{i}" for i in range(NEW_ITEMS))]
    surfaces = [*map(str, embedder.item_surfaces), *(str(i % 3) for i in range(NEW_ITEMS))]
    out = tmp_path_factory.mktemp("catalogue")
    size = -(-len(ids) // PARTS)  # ceil
    for part, lo in enumerate(range(0, len(ids), size)):
        rows = slice(lo, lo + size)
        table = {
            "item_id": ids[rows],
            "surface": surfaces[rows],
            "colour": ["red"] * len(ids[rows]),
        }
        pq.write_table(pa.table(table), out / f"part-{part}.parquet")
    return out


def test_ray_encodes_a_multi_file_catalogue_like_the_local_path(
    ray_cluster: Any, model_dir: Path, catalogue: Path, tmp_path: Path
) -> None:
    from service.jobs.ray_build import ray_build_and_publish

    local = encode_catalogue(Embedder.from_dir(model_dir), catalogue, device="cpu", batch_size=64)
    manifest = ray_build_and_publish(
        model_dir, tmp_path, index_type="Flat", catalog=catalogue, batch_size=64, actors=2
    )
    index, loaded = load_current(tmp_path)  # sha256 of every file checked against the manifest
    assert loaded.version == manifest.version and index.count == len(local.item_ids)
    assert list(index.item_ids) == list(local.item_ids)  # catalogue order, file after file
    assert list(index.surfaces) == list(local.surfaces)
    stored = index.faiss_index.reconstruct_n(0, index.count)  # (N, D): Flat keeps them exactly
    np.testing.assert_allclose(stored, local.vectors, rtol=1e-5, atol=1e-6)
    extra = manifest.extra
    assert extra["engine"] == "ray" and extra["catalog"] == str(catalogue)
    assert extra["cold_start_items"] == local.cold_start == NEW_ITEMS
    assert extra["ray"]["actors"] == 2 and extra["ray"]["resources"]["CPU"] == 2
    assert extra["ray"]["actor_resources"] == {"num_cpus": 0.5}  # one CPU left for reading
    assert extra["encode_device"] == "cpu" and extra["encode_seconds"] >= 0


@pytest.mark.parametrize("index_type", ["Flat", IVF_TYPE])
def test_ray_and_local_indexes_hold_the_same_items_at_the_same_recall(
    ray_cluster: Any, model_dir: Path, tmp_path: Path, index_type: str
) -> None:
    from service.jobs.ray_build import ray_build_and_publish

    embedder = Embedder.from_dir(model_dir)
    built = {
        "local": build_and_publish(
            model_dir, tmp_path / "local", index_type=index_type, device="cpu", batch_size=100
        ),
        "ray": ray_build_and_publish(
            model_dir, tmp_path / "ray", index_type=index_type, batch_size=100
        ),
    }
    vectors = embedder.item_vectors()  # (N, D) the vocabulary, as the service ranks with it
    queries = vectors[np.random.default_rng(0).choice(len(vectors), 200, replace=False)]
    exact = exact_topk(vectors, queries, 10)  # (Q, 10)
    recall = {}
    for engine, manifest in built.items():
        index, loaded = load_current(tmp_path / engine)
        assert loaded.version == manifest.version and loaded.index_type == index_type
        assert list(index.item_ids) == list(map(str, embedder.item_ids))
        stored = index.faiss_index.reconstruct_n(0, index.count)  # (N, D)
        np.testing.assert_allclose(stored, vectors, rtol=1e-5, atol=1e-6)
        params = {"nprobe": 2} if index_type == IVF_TYPE else {}  # a low nprobe: recall < 1
        recall[engine] = recall_at_k(index, vectors, queries, 10, params=params, exact=exact)
    assert recall["ray"] == pytest.approx(recall["local"], abs=RECALL_TOLERANCE)
    assert built["ray"].recall_at_10 == pytest.approx(
        built["local"].recall_at_10, abs=RECALL_TOLERANCE
    )
    assert built["ray"].search_params == built["local"].search_params


def test_cli_engine_ray_publishes_a_verified_version(
    ray_cluster: Any,
    model_dir: Path,
    catalogue: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "indexes"
    code = main(
        [
            "build-index", "--engine", "ray", "--ray-actors", "1", "--model", str(model_dir),
            "--index-root", str(root), "--catalog", str(catalogue), "--type", IVF_TYPE,
            "--data", "sample", "--target-recall", "0.9", "--quiet",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    index, manifest = load_current(root)
    assert printed["version"] == manifest.version and printed["engine"] == "ray"
    assert printed["ray_actors"] == manifest.extra["ray"]["actors"] == 1
    assert manifest.count == index.count and manifest.recall_at_10 is not None
    assert manifest.recall_at_10 >= 0.9 and index.search_params == manifest.search_params
    assert manifest.extra["query_source"] == "validation users of sample"


def test_engine_ray_without_ray_installed_is_a_one_line_error(
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    args = ["build-index", "--engine", "ray", "--model", str(model_dir)]
    assert main([*args, "--index-root", str(tmp_path), "--quiet"]) == EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["uniserve build-index: error: the ray engine needs `pip install uniserve[ray]`"]
    assert not (tmp_path / "CURRENT").exists()
