"""`Delta`'s search structures against a brute-force reference.

Random change sequences (upserts of new and main-index ids, the same ids upserted again with
other vectors, retirements, enough of them that dead rows pile up and get compacted) are applied
one at a time; after each, the delta is checked against the catalogue folded here from the
changes alone: its search equals NumPy's exact top-k over the live upserted items under
surface and exclusion filters, for single queries and batches, with k above and below the
number eligible; the hidden and retired main-index rows, and the model-row lookup the blend
uses, equal what the fold gives.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from service.core.delta import Delta
from service.core.filters import Filters
from service.store.changelog import CatalogueItem, Change

DIM = 8
SURFACES = ["a", "b", "c", None]
POOL = [f"d{i}" for i in range(30)] + [f"m{i}" for i in range(0, 40, 3)]  # m*: in the main index
MAIN = {f"m{i}": i for i in range(40)}  # main-index rows
MODEL = [f"m{i}" for i in range(40)] + [f"d{i}" for i in range(0, 30, 4)]  # the model's ids
FILTERS = [
    Filters(),
    Filters.of(surfaces=["a"]),
    Filters.of(surfaces=["b", "c", "nowhere"]),
    Filters.of(surfaces=[""]),  # items upserted without a surface
    Filters.of(exclude=["d1", "d2", "m3", "unknown"]),
    Filters.of(surfaces=["a", "c"], exclude=[f"d{i}" for i in range(0, 30, 2)]),
]


def _rows(table: dict[str, int]) -> Callable[[Sequence[str]], np.ndarray]:
    return lambda ids: np.asarray([table.get(i, -1) for i in ids], np.int64)


def _vector(item: tuple[str, str | None, dict[str, str]]) -> np.ndarray:
    """A vector per (id, version): upserting an id again changes its vector."""
    seed = zlib.crc32(f"{item[0]}/{item[2].get('v')}".encode())
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def _encode(items: Sequence[tuple[str, str | None, dict[str, str]]]) -> np.ndarray:
    return np.stack([_vector(i) for i in items]) if items else np.zeros((0, DIM), np.float32)


def _changes(seed: int, n: int) -> list[Change]:
    rng = np.random.default_rng(seed)
    out = []
    for seq in range(1, n + 1):
        ids = [str(i) for i in rng.choice(POOL, int(rng.integers(1, 8)), replace=False)]
        if rng.random() < 0.3:
            out.append(Change(seq, "retire", item_ids=tuple(ids)))
        else:
            items = [
                CatalogueItem(i, SURFACES[int(rng.integers(len(SURFACES)))], {"v": str(seq)})
                for i in ids
            ]
            out.append(Change(seq, "upsert", tuple(items)))
    return out


class Folded:
    """The catalogue the changes describe, kept here without the delta's code."""

    def __init__(self) -> None:
        self.upserted: dict[str, tuple[np.ndarray, str]] = {}  # id -> vector, surface
        self.retired: set[str] = set()

    def apply(self, change: Change) -> None:
        for item in change.items:
            spec = (item.item_id, item.surface, dict(item.features))
            self.upserted[item.item_id] = (_vector(spec), item.surface or "")
            self.retired.discard(item.item_id)
        for item_id in change.item_ids:
            self.upserted.pop(item_id, None)
            self.retired.add(item_id)

    def top(self, queries: np.ndarray, k: int, filters: Filters) -> list[list[tuple[str, float]]]:
        """Each query's (B, d) exact top-k (id, score) among the eligible upserted items."""
        eligible = [
            (item_id, vector)
            for item_id, (vector, surface) in self.upserted.items()
            if (filters.surfaces is None or surface in filters.surfaces)
            and item_id not in filters.exclude
        ]
        if not eligible:
            return [[] for _ in queries]
        scores = queries @ np.stack([v for _, v in eligible]).T  # (B, m)
        order = np.argsort(-scores, axis=1)[:, :k]  # (B, min(k, m))
        return [
            [(eligible[j][0], float(s[j])) for j in o] for s, o in zip(scores, order, strict=True)
        ]


@pytest.mark.parametrize("seed", range(4))
def test_delta_search_equals_brute_force_after_every_change(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    folded = Folded()
    delta = Delta.empty(0)
    compacted = dead = 0  # how often each case was met: both must be
    for change in _changes(seed, 80):
        before = len(delta.ids)
        delta = delta.applied([change], _encode, lambda v: v, _rows(MAIN), _rows({}))
        folded.apply(change)
        compacted += len(delta.ids) < before
        dead += delta.live is not None
        assert sorted(delta.row) == sorted(folded.upserted)
        assert (delta.live is None) == bool(delta.alive.all())

        touched = set(folded.upserted) | folded.retired
        assert delta.hidden_rows.tolist() == sorted(MAIN[i] for i in touched if i in MAIN)
        assert delta.retired_rows.tolist() == sorted(MAIN[i] for i in folded.retired if i in MAIN)

        for batch in (1, 3, 25):  # 25: FAISS's batched path
            queries = rng.standard_normal((batch, DIM)).astype(np.float32)
            for filters in FILTERS:
                for k in (1, 5, 40):
                    best = folded.top(queries, k, filters)
                    if not delta.count:
                        assert best == [[]] * batch
                        continue
                    for (ids, scores), expected in zip(
                        delta.search(queries, k, filters), best, strict=True
                    ):
                        assert ids == [i for i, _ in expected], (filters, k)
                        assert np.allclose(scores, [s for _, s in expected], atol=1e-5)
    assert compacted and dead


def test_rows_of_model_finds_the_live_rows_of_the_models_ids() -> None:
    model = {item_id: row for row, item_id in enumerate(MODEL)}
    delta = Delta.empty(0)
    for change in _changes(7, 60):
        delta = delta.applied([change], _encode, lambda v: v, _rows(MAIN), _rows(model))
        rows = np.asarray([*range(len(MODEL)), *range(len(MODEL))[::-1], 3, 3], np.int64)  # (P,)
        expected = [delta.row.get(MODEL[r], -1) for r in rows]
        assert delta.rows_of_model(rows).tolist() == expected
    assert max(expected) >= 0  # some of the model's ids are held
    assert delta.rows_of_model(np.empty(0, np.int64)).tolist() == []
    assert Delta.empty(0).rows_of_model(np.arange(3)).tolist() == [-1, -1, -1]
