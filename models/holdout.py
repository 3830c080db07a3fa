"""Cold-start items held out of training (the M2TRec evaluation): never seen as ids.

A seeded fraction of the catalogue is removed from the training sequences entirely (as inputs,
targets and negatives). The model keeps them in its catalogue, but their id-table rows are set
to the UNK row after training, so each is served by its metadata alone: exactly the vector a
brand-new item gets from ``/v1/items/embed``. Validation and test examples are unchanged;
targets that are held-out items are the cold-start targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from models.corpus import Corpus, Sequences
from models.item_encoder import FIRST_ITEM_ID, UNK_ID
from models.recommender import Recommender


def hold_out_items(corpus: Corpus, fraction: float, seed: int) -> tuple[Corpus, np.ndarray]:
    """(corpus whose train split has no event of the held-out items, their ids (H,) str)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    n = len(corpus.items)
    picked = np.sort(rng.choice(n, size=max(1, round(fraction * n)), replace=False))
    held = corpus.items.item_id[picked].astype(str)
    info = {**corpus.info, "holdout_items": len(held), "holdout_fraction": fraction}
    return replace(corpus, train=drop_items(corpus.train, held), info=info), held


def drop_items(train: Sequences, item_ids: Sequence[str] | np.ndarray) -> Sequences:
    """The sequences without any event of ``item_ids`` (users keep their place, maybe empty)."""
    keep = ~np.isin(train.item_id.astype(str), np.asarray(item_ids, dtype=str))  # (E,)
    row = np.repeat(np.arange(len(train)), train.lengths)  # (E,) sequence of each event
    lengths = np.bincount(row[keep], minlength=len(train))  # (U,)
    offsets = np.zeros(len(train) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Sequences(train.user_id, offsets, train.item_id[keep], train.surface[keep])


def make_cold(model: Recommender, rows: np.ndarray) -> None:
    """Give catalogue rows (H,) the UNK id row (and bias), in place: metadata-only vectors."""
    if len(rows) == 0:
        return
    table = torch.from_numpy(np.asarray(rows, dtype=np.int64) + FIRST_ITEM_ID)
    with torch.no_grad():
        emb = model.item_encoder.id_embedding.weight
        table = table.to(emb.device)
        if model.config.item.content_dim:
            model.item_encoder.metadata_only[table] = True
        emb[table] = emb[UNK_ID].clone()
        if model.config.item.bias:
            bias = model.item_encoder.bias.weight
            bias[table] = bias[UNK_ID].clone()
