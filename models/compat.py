"""Backward-compatible training: new user vectors that still work against an old item index.

Shen et al., CVPR 2020, "Towards Backward-Compatible Representation Learning" (BCT): train the
new embedding with an extra *influence loss*, the task loss computed with the OLD model's frozen
classifier, here the old model's item vectors. A user vector of the new model can then query an
index built by the old one, so a model rollout need not wait for the index rebuild.

Departure: the influence loss is taken relative to the old model's own loss on the same
examples and hinged at zero, per example::

    relu(CE(new user, old items) - CE(old user, old items))

so it is exactly zero when the new model equals the old one, and only pushes on examples where
the new user vector serves the old index worse than the old user vector did (the compatibility
criterion is new/old >= old/old). Where it is active its gradient is BCT's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.artifacts import load_model, model_fingerprint
from models.item_encoder import FIRST_ITEM_ID, PAD_ID, UNK_ID
from models.recommender import Recommender
from models.vocab import Vocab


class OldModel:
    """A frozen old model and the map from the new model's id-table rows to its own."""

    def __init__(self, model: Recommender, old_vocab: Vocab, new_vocab: Vocab, fingerprint: str):
        if old_vocab.surfaces != new_vocab.surfaces:
            raise ValueError(
                f"old model surfaces {old_vocab.surfaces} differ from the new "
                f"{new_vocab.surfaces}: cannot train a compatible model"
            )
        self.model = model.eval().requires_grad_(False)
        self.fingerprint = fingerprint
        old_rows = old_vocab.item_rows(new_vocab.item_ids)  # (N,) -1 = unknown to the old
        rows = np.concatenate(
            [[PAD_ID, UNK_ID], np.where(old_rows >= 0, old_rows + FIRST_ITEM_ID, UNK_ID)]
        )
        self.rows = torch.from_numpy(rows.astype(np.int64))  # (N + 2,) new row -> old row

    @classmethod
    def load(cls, directory: Path | str, new_vocab: Vocab) -> OldModel:
        model, _, vocab, _ = load_model(Path(directory))
        return cls(model, vocab, new_vocab, model_fingerprint(Path(directory)))

    @property
    def dim(self) -> int:
        return self.model.dim

    def to(self, device: torch.device) -> OldModel:
        """Move the frozen model and the row map to ``device`` (training's), in place."""
        self.model.to(device)
        self.rows = self.rows.to(device)
        return self

    @torch.no_grad()
    def queries(
        self, ids: torch.Tensor, surfaces: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The old model's served user vectors at every position: (B, T) -> (B, T, dim)."""
        old_ids = self.rows[ids]  # (B, T)
        hidden = self.model.hidden(old_ids, surfaces, mask)  # (B, T, D)
        content = self.model.user_content(old_ids, mask) if self.model.has_content else None
        return self.model.query_vectors(hidden, content)

    @torch.no_grad()
    def item_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """The old model's served item vectors for new id-table rows (*S) -> (*S, dim)."""
        return self.model.item_vectors(self.rows[rows])


def _softmax_ce(
    queries: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Per-row cross-entropy of the target among target + shared negatives: (M,)."""
    pos_logit = (queries * pos).sum(-1, keepdim=True) / temperature - log_q[targets, None]
    neg_logit = queries @ neg.T / temperature - log_q[negatives]  # (M, K)
    neg_logit = neg_logit.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1)  # (M, 1 + K)
    zero = torch.zeros(len(targets), dtype=torch.long, device=logits.device)  # (M,)
    return F.cross_entropy(logits, zero, reduction="none")


def compatibility_loss(
    new_queries: torch.Tensor,
    old_queries: torch.Tensor,
    old: OldModel,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Hinged influence loss (see module docstring): scalar, >= 0.

    new_queries / old_queries (M, dim) served user vectors of the new / old model on the same
    positions, targets (M,) and negatives (K,) new id-table rows, log_q (N + 2,) as in training.
    """
    pos = old.item_vectors(targets)  # (M, dim)
    neg = old.item_vectors(negatives)  # (K, dim)
    ce_new = _softmax_ce(new_queries, pos, neg, targets, negatives, log_q, temperature)
    with torch.no_grad():
        ce_old = _softmax_ce(old_queries, pos, neg, targets, negatives, log_q, temperature)
    return F.relu(ce_new - ce_old).mean()


def compatible_fingerprints(config: dict[str, Any]) -> set[str]:
    """Fingerprints of the old models a model's ``config.json`` says it was trained to be
    compatible with (its user vectors may query their indexes)."""
    entry = config.get("compatible_with")
    if isinstance(entry, dict) and isinstance(entry.get("fingerprint"), str):
        return {entry["fingerprint"]}
    return set()


def serves_index_of(config: dict[str, Any], own: str, index_fingerprint: str) -> bool:
    """True when a model (its config and fingerprint ``own``) may query an index built for
    ``index_fingerprint``: its own index, or one of a model it is compatible with."""
    return index_fingerprint == own or index_fingerprint in compatible_fingerprints(config)
