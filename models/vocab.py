"""String ids -> model indices, and left-padded history batches.

Item ids map to id-table rows (catalogue row + 2; UNK = 1 for ids the model never saw); surfaces
map to 1.. (0 = unknown surface). Unknown values are never an error here: the service must keep
answering when a brand-new item or surface shows up in a user's events.

Ids are looked up by their ``str()``. ``batch`` runs in the service's encode thread for every
request, so it looks up all histories' ids in one pass of C-level dict lookups and places them
with NumPy rather than looping in Python per history or per id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat

import numpy as np
import torch

from models.item_encoder import FIRST_ITEM_ID, PAD_ID, UNK_ID

Ids = Sequence[str] | np.ndarray  # string ids, as a list or an object array
History = tuple[Ids, Ids]  # (item ids, surfaces), oldest first


class Vocab:
    def __init__(self, item_ids: Ids, surfaces: Sequence[str]) -> None:
        self.item_ids = np.asarray(item_ids, dtype=object)  # (N,) catalogue order
        self.surfaces = list(surfaces)
        self._items = {str(x): i for i, x in enumerate(self.item_ids)}
        self._surfaces = {s: i + 1 for i, s in enumerate(self.surfaces)}

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def num_surfaces(self) -> int:
        return len(self.surfaces) + 1

    def item_rows(self, ids: Iterable[str]) -> np.ndarray:
        """Catalogue rows (M,) int64; -1 for unknown ids."""
        return _lookup(self._items, _keys(ids), -1)

    def item_tokens(self, ids: Iterable[str]) -> np.ndarray:
        """Id-table rows (M,) int64; UNK for unknown ids."""
        rows = self.item_rows(ids)
        return np.where(rows >= 0, rows + FIRST_ITEM_ID, UNK_ID)

    def surface_tokens(self, surfaces: Iterable[str]) -> np.ndarray:
        return _lookup(self._surfaces, _keys(surfaces), 0)

    def batch(
        self, histories: Sequence[History], max_len: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded (ids, surfaces, mask), each (B, T), keeping the last ``max_len`` events.

        T is the longest kept history (>= 1). A history's surfaces align with its items from
        the right: those of its kept items are used, and having fewer is a ValueError.
        """
        items: list[str] = []  # every kept event of every history, in order
        surfaces: list[str] = []
        lengths = []  # (B,) kept events per history
        for b, (item_ids, surfs) in enumerate(histories):
            n = min(len(item_ids), max_len)
            lengths.append(n)
            if not n:
                continue
            if len(surfs) < n:
                raise ValueError(f"history {b} has {len(item_ids)} items but {len(surfs)} surfaces")
            items.extend(_keys(item_ids[-n:]))
            surfaces.extend(_keys(surfs[-n:]))
        return _pad(self.item_tokens(items), self.surface_tokens(surfaces), lengths)


def pad_left(
    encoded: Sequence[tuple[np.ndarray, np.ndarray]], max_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Already-encoded (ids, surfaces) pairs -> left-padded tensors (B, T), T = longest (>= 1)."""
    t = max(1, min(max_len, max((len(ids) for ids, _ in encoded), default=1)))
    lengths = [min(len(ids), t) for ids, _ in encoded]  # (B,)
    ids = [np.asarray(i)[len(i) - n :] for (i, _), n in zip(encoded, lengths, strict=True)]
    surfs = [np.asarray(s)[len(s) - n :] for (_, s), n in zip(encoded, lengths, strict=True)]
    return _pad(_concat(ids), _concat(surfs), lengths, t)


def _pad(
    ids: np.ndarray, surfaces: np.ndarray, lengths: list[int], t: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat tokens (sum(lengths),) of consecutive histories -> left-padded (ids, surfaces, mask),
    each (B, T), T = max(t, longest history)."""
    t = max(t, *lengths) if lengths else t
    if all(n == t for n in lengths):  # every history fills the window (the usual request)
        padded_ids = ids.reshape(len(lengths), t)  # (B, T)
        padded_surfaces = surfaces.reshape(len(lengths), t)  # (B, T)
    else:
        real = np.arange(t) >= t - np.array(lengths)[:, None]  # (B, T): last lengths[b] of row b
        padded_ids = np.full(real.shape, PAD_ID, dtype=np.int64)
        padded_surfaces = np.zeros(real.shape, dtype=np.int64)
        padded_ids[real] = ids  # row-major: row b's positions in order
        padded_surfaces[real] = surfaces
    ids_t = torch.from_numpy(padded_ids)
    return ids_t, torch.from_numpy(padded_surfaces), ids_t != PAD_ID


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, np.int64)


def _keys(values: Iterable[str]) -> Ids:
    """The values as a sequence, copied only where that is faster to look up: a list, tuple or
    object array as it is, a NumPy str array as a list of str, any other iterable as a list."""
    if isinstance(values, np.ndarray):
        return values.tolist() if values.dtype.kind == "U" else values
    return values if isinstance(values, (list, tuple)) else list(values)


def _lookup(table: dict[str, int], keys: Ids, missing: int) -> np.ndarray:
    """``table[str(key)]`` for each key, ``missing`` where absent: (M,) int64.

    The keys are first looked up as they are, which is exact for str keys (what the service
    passes) and costs no ``str()`` call each; only the misses that are not str are retried by
    their ``str()`` (a non-str key can't equal a str one).
    """
    get = table.get
    try:
        found = np.fromiter(map(get, keys, repeat(missing)), dtype=np.int64, count=len(keys))
    except TypeError:  # an unhashable key: only its str() can be looked up
        return np.fromiter((get(str(k), missing) for k in keys), dtype=np.int64, count=len(keys))
    if missing in found:
        for i in np.flatnonzero(found == missing).tolist():
            if type(keys[i]) is not str:
                found[i] = get(str(keys[i]), missing)
    return found
