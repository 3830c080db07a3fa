"""The index benchmark end to end on a tiny synthetic set: rows, files and recall bounds.

Checks behaviour only (recall against exact search, one row per (type, parameter), outputs
written); never wall-clock speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import pytest

from service.bench.ann import main

EF_SEARCH = (16, 64)
NPROBE = (1, 8)
TYPES = ("Flat", "HNSW32", "IVF64,Flat")


@pytest.fixture(autouse=True)
def _restore_faiss_threads():
    """The benchmark sets faiss's thread count; give other tests theirs back."""
    before = faiss.omp_get_max_threads()
    yield
    faiss.omp_set_num_threads(before)


def test_bench_index_tiny_run_writes_one_row_per_type_and_param(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    argv = [
        "--n", "5000", "--dim", "32", "--queries", "100", "--clusters", "64",
        "--types", *TYPES,
        "--ef-search", *map(str, EF_SEARCH),
        "--nprobe", *map(str, NPROBE),
        "--build-threads", "1",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0

    doc = json.loads((out / "results.json").read_text())
    rows = doc["rows"]
    got = [(r["index_type"], tuple(r["params"].items())) for r in rows]
    want = [
        ("Flat", ()),
        *(("HNSW32", (("efSearch", ef),)) for ef in EF_SEARCH),
        *(("IVF64,Flat", (("nprobe", p),)) for p in NPROBE),
    ]
    assert got == want
    assert doc["meta"]["n"] == 5000 and doc["meta"]["queries"] == 100
    for r in rows:
        assert 0.0 <= r["recall_at_10"] <= 1.0
        assert r["qps_batched"] > 0 and r["qps_single"] > 0 and r["qps_single_faiss"] > 0
        assert r["bytes_per_vector"] > 0 and r["build_seconds"] >= 0
    flat = next(r for r in rows if r["index_type"] == "Flat")
    assert flat["recall_at_10"] == 1.0  # exhaustive search agrees with numpy brute force
    assert flat["bytes_per_vector"] >= 32 * 4  # the float32 vectors themselves
    ivf = [r["recall_at_10"] for r in rows if r["index_type"] == "IVF64,Flat"]
    assert ivf == sorted(ivf)  # IVF-Flat recall does not fall as nprobe grows

    table = (out / "table.md").read_text().splitlines()
    assert sum(line.startswith("| `") for line in table) == len(want)
    pytest.importorskip("matplotlib")
    assert (out / "recall_vs_qps.png").stat().st_size > 0
