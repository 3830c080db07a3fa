"""The live catalogue's change log and delta as plain objects, without the app: real files,
real concurrent writer processes, and the delta's exact search against brute force."""

from __future__ import annotations

import subprocess
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from service.core.delta import Delta, merge
from service.core.filters import Filters
from service.errors import ErrorType, ServiceError
from service.store.changelog import (
    CatalogueItem,
    Change,
    ChangeLog,
    fold,
    log_path,
    read_changes,
)
from tests.helpers import REPO

WRITER = """
import sys
from pathlib import Path
from service.store.changelog import CatalogueItem, ChangeLog
log = ChangeLog(Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    log.append("upsert", items=[CatalogueItem(f"{sys.argv[2]}-{i}", None, {})])
"""


def test_concurrent_writers_get_dense_sequence_numbers(tmp_path: Path) -> None:
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name, "40"], cwd=REPO)
        for name in ("a", "b", "c")
    ]
    for proc in writers:
        assert proc.wait(120) == 0
    changes = read_changes(tmp_path)
    assert [c.seq for c in changes] == list(range(1, 121))
    ids = [c.items[0].item_id for c in changes]
    assert sorted(ids) == sorted(f"{n}-{i}" for n in "abc" for i in range(40))
    for name in "abc":  # each writer's own records in its order
        mine = [int(i.split("-")[1]) for i in ids if i.startswith(name)]
        assert mine == sorted(mine)


def test_readers_tail_complete_lines_and_a_torn_line_is_cut_by_the_next_writer(
    tmp_path: Path,
) -> None:
    writer, reader = ChangeLog(tmp_path), ChangeLog(tmp_path)
    assert reader.refresh() == [] and reader.last_seq == 0  # no log yet
    writer.append("upsert", items=[CatalogueItem("x", "0", {"title": "a"})], index_version="v1")
    first = reader.refresh()
    assert [(c.seq, c.op, c.ids, c.index_version) for c in first] == [(1, "upsert", ("x",), "v1")]
    assert first[0].items[0] == CatalogueItem("x", "0", {"title": "a"})
    with open(log_path(tmp_path), "ab") as f:  # a writer killed mid-line: never acknowledged
        f.write(b'{"seq":2,"op":"ret')
    assert reader.refresh() == []  # the torn line is not read
    change, others = ChangeLog(tmp_path).append("retire", item_ids=["x"])
    assert change.seq == 2 and [c.seq for c in others] == [1]
    assert [c.seq for c in reader.refresh()] == [2]
    assert log_path(tmp_path).read_bytes().count(b"\n") == 2  # the torn bytes are gone


def test_a_refused_check_writes_nothing(tmp_path: Path) -> None:
    log = ChangeLog(tmp_path)
    log.append("retire", item_ids=["1"])
    before = log_path(tmp_path).read_bytes()

    def refuse(others: list[Change]) -> None:
        raise ServiceError(ErrorType.DELTA_FULL, "full")

    with pytest.raises(ServiceError):
        log.append("retire", item_ids=["2"], check=refuse)
    assert log_path(tmp_path).read_bytes() == before and log.last_seq == 1


def test_fold_keeps_the_last_word_on_each_id() -> None:
    item = CatalogueItem("a", "0", {})
    changes = [
        Change(3, "upsert", (item,)),
        Change(1, "upsert", (CatalogueItem("b", None, {}),)),
        Change(2, "retire", item_ids=("a", "b")),
        Change(4, "retire", item_ids=("c",)),
    ]
    state = fold(changes)  # by sequence number, whatever order they come in
    assert state.upserts == {"a": item} and state.retired == {"b", "c"} and state.size == 3


# ---------------------------------------------------------------------------- the delta
def _vector(item_id: str, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(item_id.encode())).standard_normal(dim).astype("f4")


def _encode(items: list[tuple[str, str | None, dict[str, str]]]) -> np.ndarray:
    return np.stack([_vector(i) for i, _, _ in items]) if items else np.zeros((0, 8), "f4")


def _unknown(item_ids: Sequence[str]) -> np.ndarray:
    """Rows of ids in a model that knows none of them."""
    return np.full(len(item_ids), -1, np.int64)


def test_delta_search_equals_brute_force_under_filters_and_merges_by_score() -> None:
    main = {f"m{i}": i for i in range(50)}  # main-index rows
    rows = lambda ids: np.asarray([main.get(i, -1) for i in ids], np.int64)  # noqa: E731
    upserts = [CatalogueItem(f"d{i}", str(i % 3), {}) for i in range(30)]
    changes = [
        Change(1, "upsert", tuple(upserts[:20])),
        Change(2, "retire", item_ids=("d3", "m7", "zz")),
        Change(3, "upsert", (*upserts[20:], CatalogueItem("m9", "2", {}))),
    ]
    delta = Delta.empty(0).applied(changes, _encode, lambda v: v, rows, _unknown)
    assert delta.seq == 3 and delta.retired == {"d3", "m7", "zz"}
    assert delta.count == 30 and "d3" not in delta.row  # 29 upserts + m9
    assert sorted(delta.hidden_rows.tolist()) == [7, 9] and delta.retired_rows.tolist() == [7]
    assert delta.applied(changes, _encode, lambda v: v, rows, _unknown) is delta  # already applied

    queries = np.random.default_rng(1).standard_normal((4, 8)).astype("f4")
    filters = Filters.of(surfaces=["0", "2"], exclude=["d6", "m1"])
    got = delta.search(queries, 5, filters)
    for q, (ids, scores) in zip(queries, got, strict=True):
        eligible = {
            i: float(delta.vectors[r] @ q)
            for i, r in delta.row.items()
            if delta.surfaces[r] in ("0", "2") and i not in ("d6", "m1")
        }
        best = sorted(eligible.items(), key=lambda p: -p[1])[:5]
        assert ids == [i for i, _ in best]
        np.testing.assert_allclose(scores, [s for _, s in best], atol=1e-5)
    main_hits = (["m1", "m2"], np.asarray([9.0, -9.0], "f4"))
    ids, scores = merge(main_hits, got[0], 3)
    assert ids[0] == "m1" and len(ids) == 3 and list(scores) == sorted(scores, reverse=True)

    sizes = delta.size_after([Change(4, "upsert", (CatalogueItem("d3", None, {}),))])
    assert sizes == delta.size  # d3 moves from retired to upserted


def test_upserting_the_same_ids_again_and_again_keeps_the_delta_compact() -> None:
    rows = lambda ids: np.full(len(ids), -1, np.int64)  # noqa: E731  nothing in the main index
    delta = Delta.empty(0)
    for seq in range(1, 301):
        item = CatalogueItem(f"d{seq % 7}", "0", {})
        delta = delta.applied([Change(seq, "upsert", (item,))], _encode, lambda v: v, rows, rows)
    assert delta.count == 7 and len(delta.ids) <= 2 * 64 + 1
    assert sorted(delta.ids[delta.alive].tolist()) == sorted(delta.row)
    query = np.ones((1, 8), "f4")
    ids, scores = delta.search(query, 10, Filters())[0]
    assert sorted(ids) == sorted(f"d{i}" for i in range(7))
    expected = sorted((_vector(i) @ query[0] for i in ids), reverse=True)
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_an_emptied_log_never_reuses_numbers_a_version_holds(tmp_path: Path) -> None:
    """After a rebuild through change 7, someone deletes the log: the next change is 8, so a
    replica serving that version (changes_through 7) still applies it."""
    change, _ = ChangeLog(tmp_path).append("retire", item_ids=["1"], after=7)
    assert change.seq == 8 and [c.seq for c in read_changes(tmp_path)] == [8]
