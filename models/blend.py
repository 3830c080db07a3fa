"""The served score: the model's inner product plus a co-occurrence term over the user's recent
items, ``u . v_i + beta * log(1 + c_i)``.

``c_i`` is the item-to-item co-occurrence score of the model-free baseline
(`models.evaluate.Cooccurrence`: how often item i came within a few events after each of the
user's ``last`` newest items in the training sequences, weighted 1 / gap and decayed by the
recent item's age), without the baseline's popularity tie-break; or, when validation prefers
it, the same counts taken both ways (``two_way``: i also counts when it came a few events
*before*), which data whose order within a basket is arbitrary (items reviewed together,
bundles) rewards. A sequential model captures global taste; the co-occurrence counts remember
exact item-to-item transitions that a 64-dim vector blurs (the two are complementary, as in
the session-kNN hybrids of Ludewig & Jannach, 2018, and the "SASRec + item-kNN" ensembles of
the RecSys challenges). ``beta`` is chosen on the validation split (`choose_beta`); 0 means the
model alone is served.

One table (`ItemNeighbours`, CSR: row a lists the items b that followed a, with their weight)
serves both uses: offline, a batch of histories is scored against the whole catalogue
(`batch_scores`, a sparse matmul); online, one history gives the few items with ``c > 0``
(`sparse_scores`). Since the term is >= 0 and 0 for every other item, the exact top-k of the
blended score is the top-k of the model's top-k joined with those items, which is how the
serving engine searches (`service.core.engine`).

Saved beside the model as ``neighbours.safetensors`` (`save` / `load`: no pickle; the table's
parameters and beta in the safetensors metadata), part of the model fingerprint when present.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from models.corpus import Sequences
from models.vocab import Vocab

NEIGHBOURS_FILE = "neighbours.safetensors"
# tried on validation, doubling: 0 is the model alone, the largest nearly the co-occurrence
# ranking with the model breaking its ties (where the model adds little, as on Art-Office)
BETAS = (0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6)


class NeighbourTableError(Exception):
    """A neighbours file is unreadable or inconsistent with its model."""


@dataclass(frozen=True)
class ItemNeighbours:
    """Item-to-item co-occurrence counts over catalogue rows, and how a history reads them.

    indptr (N + 1,) int64, indices (P,) int32, weights (P,) float32: row a's neighbours are
    ``indices[indptr[a]:indptr[a + 1]]`` (sorted, never a itself) with their summed 1 / gap
    weights. A history's score for b: ``sum over its last events e (newest first, age 0, 1, ...)
    of decay ** age * weight(e, b)``.
    """

    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray
    window: int
    last: int
    decay: float
    two_way: bool = False

    def __post_init__(self) -> None:
        if self.window < 1 or self.last < 1 or not 0.0 < self.decay <= 1.0:
            raise ValueError(
                f"window and last must be >= 1 and decay in (0, 1], got {self.window}, "
                f"{self.last}, {self.decay}"
            )
        if len(self.indices) != len(self.weights) or int(self.indptr[-1]) != len(self.indices):
            raise ValueError(
                f"inconsistent table: indptr ends at {int(self.indptr[-1])}, "
                f"{len(self.indices)} indices, {len(self.weights)} weights"
            )

    @property
    def items(self) -> int:
        return len(self.indptr) - 1

    @staticmethod
    def fit(
        train: Sequences,
        vocab: Vocab,
        *,
        window: int = 3,
        last: int = 3,
        decay: float = 0.5,
        two_way: bool = False,
    ) -> ItemNeighbours:
        """Count, over ``train``'s sequences, each b within ``window`` events after a (and,
        ``two_way``, each a within ``window`` events before b as well)."""
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        n = len(vocab)
        rows = vocab.item_rows(train.item_id)  # (E,)
        user = np.repeat(np.arange(len(train)), train.lengths)  # (E,)
        keys, weight = [], []
        for gap in range(1, window + 1):
            same = user[gap:] == user[:-gap]
            a, b = rows[:-gap][same], rows[gap:][same]
            ok = (a >= 0) & (b >= 0) & (a != b)
            for src, dst in ((a, b), (b, a)) if two_way else ((a, b),):
                keys.append(src[ok] * n + dst[ok])
                weight.append(np.full(int(ok.sum()), 1.0 / gap))
        uniq, inverse = np.unique(np.concatenate(keys), return_inverse=True)  # sorted by (a, b)
        total = np.bincount(inverse, weights=np.concatenate(weight)).astype(np.float32)
        src = uniq // n
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
        return ItemNeighbours(
            indptr, (uniq % n).astype(np.int32), total, window, last, decay, two_way
        )

    # ------------------------------------------------------------------ offline: a batch
    def transposed(self) -> torch.Tensor:
        """(N, N) sparse CSR float32 of the counts transposed, [b, a]: ``batch_scores``'s
        operand, made once per caller (a few MB for 1M pairs)."""
        n = self.items
        src = np.repeat(np.arange(n), np.diff(self.indptr))  # (P,)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_coo_tensor(
                torch.from_numpy(np.stack([self.indices.astype(np.int64), src])),
                torch.from_numpy(self.weights),
                (n, n),
                check_invariants=False,
            ).to_sparse_csr()

    def batch_scores(
        self,
        histories: Sequences,
        vocab: Vocab,
        idx: np.ndarray,
        transposed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores c of every item for the histories ``idx``: (b, N) float32, 0 where none."""
        counts_t = self.transposed() if transposed is None else transposed
        starts, ends = histories.offsets[idx], histories.offsets[idx + 1]  # (b,), (b,)
        profile = torch.zeros(self.items, len(idx))  # (N, b): decayed one-hot of recent items
        for age in range(self.last):  # age 0 = the newest event
            pos = ends - 1 - age  # (b,)
            ok = pos >= starts
            rows = vocab.item_rows(histories.item_id[pos[ok]])  # (b',)
            cols = np.flatnonzero(ok)[rows >= 0]
            profile.index_put_(
                (torch.from_numpy(rows[rows >= 0]), torch.from_numpy(cols)),
                torch.full((len(cols),), self.decay**age),
                accumulate=True,
            )
        return (counts_t @ profile).T  # (b, N)

    # ------------------------------------------------------------------ online: one history
    def recent_rows(self, vocab: Vocab, item_ids: Sequence[str]) -> np.ndarray:
        """Catalogue rows of the newest ``last`` events of a history (oldest first in
        ``item_ids``), newest first: (<= last,) int64, -1 for unknown ids (they keep their age)."""
        return vocab.item_rows(list(item_ids[-self.last :])[::-1])

    def sparse_scores(self, recent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The items with c > 0 for a history's ``recent_rows``: (rows (M,) int64 sorted,
        c (M,) float32), as ``batch_scores`` gives them (same weights, same decay)."""
        cols, vals = [], []
        for age, row in enumerate(recent.tolist()):
            if row < 0:
                continue
            lo, hi = self.indptr[row], self.indptr[row + 1]
            cols.append(self.indices[lo:hi])
            vals.append(self.weights[lo:hi] * np.float32(self.decay**age))
        if not cols:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        uniq, inverse = np.unique(np.concatenate(cols), return_inverse=True)
        return uniq.astype(np.int64), np.bincount(inverse, np.concatenate(vals)).astype(np.float32)


@dataclass(frozen=True)
class Blend:
    """Served score = model score + beta * log(1 + c) (module docstring)."""

    neighbours: ItemNeighbours
    beta: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}")

    def bonus(self, c: torch.Tensor) -> torch.Tensor:
        """beta * log(1 + c), elementwise: what is added to the model's scores."""
        return self.beta * torch.log1p(c)

    def sparse_bonus(self, vocab: Vocab, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(catalogue rows (M,) sorted, bonus (M,) float32 > 0) for a history (oldest first):
        `bonus` of the items with c > 0, every other item's is 0."""
        rows, c = self.neighbours.sparse_scores(self.neighbours.recent_rows(vocab, item_ids))
        return rows, (np.float32(self.beta) * np.log1p(c)).astype(np.float32)

    def row_bonus(self, vocab: Vocab, item_ids: Sequence[str], rows: np.ndarray) -> np.ndarray:
        """(M,) float32 `bonus` of the catalogue `rows` (M,) (-1: none, 0) for a history."""
        return lookup(*self.sparse_bonus(vocab, item_ids), rows)

    def to_json(self) -> dict[str, float | int]:
        nb = self.neighbours
        return {
            "beta": self.beta,
            "window": nb.window,
            "last": nb.last,
            "decay": nb.decay,
            "two_way": nb.two_way,
            "pairs": len(nb.indices),
        }

    # ------------------------------------------------------------------ file
    def save(self, directory: Path) -> Path:
        path = Path(directory) / NEIGHBOURS_FILE
        nb = self.neighbours
        meta = {
            "beta": self.beta,
            "window": nb.window,
            "last": nb.last,
            "decay": nb.decay,
            "two_way": nb.two_way,
        }
        save_file(
            {"indptr": nb.indptr, "indices": nb.indices, "weights": nb.weights},
            str(path),
            metadata={"blend": json.dumps(meta)},
        )
        return path

    @staticmethod
    def load(path: Path, items: int) -> Blend:
        """The blend saved at ``path`` for a model of ``items`` catalogue rows."""
        try:
            with safe_open(str(path), framework="numpy") as fh:  # type: ignore[no-untyped-call]
                meta = json.loads((fh.metadata() or {})["blend"])
                tensors = {name: fh.get_tensor(name) for name in ("indptr", "indices", "weights")}
            blend = Blend(
                ItemNeighbours(
                    tensors["indptr"].astype(np.int64),
                    tensors["indices"].astype(np.int32),
                    tensors["weights"].astype(np.float32),
                    int(meta["window"]),
                    int(meta["last"]),
                    float(meta["decay"]),
                    bool(meta.get("two_way", False)),  # files from before it: one way
                ),
                float(meta["beta"]),
            )
        except (SafetensorError, OSError, KeyError, TypeError, ValueError) as exc:
            raise NeighbourTableError(f"{path} is not a valid neighbours file: {exc}") from exc
        nb = blend.neighbours
        if nb.items != items or (len(nb.indices) and int(nb.indices.max()) >= items):
            raise NeighbourTableError(
                f"{path} has a table over {nb.items} items; the model has {items}"
            )
        return blend


def lookup(near: np.ndarray, bonus: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(M,) float32: `bonus` of each of `rows` (M,) among the sorted rows `near` (P,), 0 for
    rows not among them (and for -1)."""
    out = np.zeros(len(rows), np.float32)
    if near.size:
        at = np.minimum(np.searchsorted(near, rows), near.size - 1)  # (M,)
        hit = (rows >= 0) & (near[at] == rows)
        out[hit] = bonus[at[hit]]
    return out
