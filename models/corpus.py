"""In-memory dataset containers shared by the loaders, training and evaluation.

Every external id (user, item, surface) is a string: datasets with integer ids are converted
once at load time, so the model vocabulary, the index id map and the HTTP API all speak one type.
Sequences use a CSR layout (``offsets`` into flat event arrays) so a 2.5M-event dataset is a few
NumPy arrays rather than millions of Python lists.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ItemTable:
    """The item catalogue: one row per item, with the metadata the item encoder reads.

    ``categorical`` fields hold one value per item ("" when missing); ``text`` fields hold a
    whitespace-separated bag of tokens per item ("" when missing).
    """

    item_id: np.ndarray  # (N,) str, unique
    surface: np.ndarray  # (N,) str, "" when unknown
    categorical: dict[str, np.ndarray] = field(default_factory=dict)  # field -> (N,) str
    text: dict[str, np.ndarray] = field(default_factory=dict)  # field -> (N,) str

    def __post_init__(self) -> None:
        n = len(self.item_id)
        for name, col in [("surface", self.surface), *self.categorical.items(), *self.text.items()]:
            if len(col) != n:
                raise ValueError(f"item column {name!r} has {len(col)} rows, expected {n}")
        if len(np.unique(self.item_id)) != n:
            raise ValueError("item_id values in the item table are not unique")

    def __len__(self) -> int:
        return len(self.item_id)


@dataclass
class Sequences:
    """Chronological event sequences (oldest first), one per user, in CSR layout."""

    user_id: np.ndarray  # (U,) str
    offsets: np.ndarray  # (U + 1,) int64, offsets[0] == 0
    item_id: np.ndarray  # (E,) str
    surface: np.ndarray  # (E,) str

    def __post_init__(self) -> None:
        if len(self.offsets) != len(self.user_id) + 1:
            raise ValueError(
                f"offsets has {len(self.offsets)} entries for {len(self.user_id)} users"
            )
        if len(self.item_id) != len(self.surface) or int(self.offsets[-1]) != len(self.item_id):
            raise ValueError("offsets, item_id and surface disagree on the number of events")

    def __len__(self) -> int:
        return len(self.user_id)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Items and surfaces of user ``i``."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.item_id[lo:hi], self.surface[lo:hi]

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for i in range(len(self)):
            items, surfaces = self.sequence(i)
            yield str(self.user_id[i]), items, surfaces

    @staticmethod
    def from_lists(
        user_ids: list[str], items: list[list[str]], surfaces: list[list[str]]
    ) -> Sequences:
        lengths = [len(s) for s in items]
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat_items = np.array([x for s in items for x in s], dtype=object)
        flat_surfaces = np.array([x for s in surfaces for x in s], dtype=object)
        return Sequences(np.array(user_ids, dtype=object), offsets, flat_items, flat_surfaces)


@dataclass
class EvalSet:
    """Leave-last-out examples: a history and the next item to predict."""

    history: Sequences
    target_item: np.ndarray  # (U,) str
    target_surface: np.ndarray  # (U,) str
    group: np.ndarray  # (U,) str: reporting group (e.g. target domain); "all" when unused

    def __post_init__(self) -> None:
        u = len(self.history)
        for name, col in [
            ("target_item", self.target_item),
            ("target_surface", self.target_surface),
            ("group", self.group),
        ]:
            if len(col) != u:
                raise ValueError(f"{name} has {len(col)} rows for {u} histories")

    def __len__(self) -> int:
        return len(self.history)


@dataclass
class Corpus:
    """A dataset ready for training and evaluation."""

    name: str
    items: ItemTable
    train: Sequences
    valid: EvalSet
    test: EvalSet
    info: dict[str, object] = field(default_factory=dict)  # source, license, counts
