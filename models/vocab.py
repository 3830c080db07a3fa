"""String ids -> model indices, and left-padded history batches.

Item ids map to id-table rows (catalogue row + 2; UNK = 1 for ids the model never saw); surfaces
map to 1.. (0 = unknown surface). Unknown values are never an error here: the service must keep
answering when a brand-new item or surface shows up in a user's events.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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
        get = self._items.get
        return np.fromiter((get(str(x), -1) for x in ids), dtype=np.int64)

    def item_tokens(self, ids: Iterable[str]) -> np.ndarray:
        """Id-table rows (M,) int64; UNK for unknown ids."""
        rows = self.item_rows(ids)
        return np.where(rows >= 0, rows + FIRST_ITEM_ID, UNK_ID)

    def surface_tokens(self, surfaces: Iterable[str]) -> np.ndarray:
        get = self._surfaces.get
        return np.fromiter((get(str(s), 0) for s in surfaces), dtype=np.int64)

    def batch(
        self, histories: Sequence[History], max_len: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded (ids, surfaces, mask), each (B, T), keeping the last ``max_len`` events."""
        encoded = [
            (self.item_tokens(items[-max_len:]), self.surface_tokens(surfs[-max_len:]))
            for items, surfs in histories
        ]
        return pad_left(encoded, max_len)


def pad_left(
    encoded: Sequence[tuple[np.ndarray, np.ndarray]], max_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Already-encoded (ids, surfaces) pairs -> left-padded tensors (B, T), T = longest (>= 1)."""
    t = max(1, min(max_len, max((len(ids) for ids, _ in encoded), default=1)))
    ids = np.full((len(encoded), t), PAD_ID, dtype=np.int64)  # (B, T)
    surfaces = np.zeros((len(encoded), t), dtype=np.int64)  # (B, T)
    for b, (item_ids, surf) in enumerate(encoded):
        n = min(len(item_ids), t)
        if n:
            ids[b, t - n :] = item_ids[-n:]
            surfaces[b, t - n :] = surf[-n:]
    ids_t = torch.from_numpy(ids)
    return ids_t, torch.from_numpy(surfaces), ids_t != PAD_ID
