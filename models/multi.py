"""Multi-vector users and items, for MUVERA retrieval (Chamfer / MaxSim scoring).

Users: K interest vectors, training-free. Every position of the user encoder is trained on
next-item prediction, so the hidden state at any position is already a query in item space:
the interests are the states at K positions of the history, chosen by `interest_positions`
(the last event, then the last event of each other surface, most recent first, then the ends of
equal segments of the history), each served like the single user vector (unit norm, plus the
constant 1 of the item-bias column). The first interest is always the single user vector.
Learned interest queries (attention pooling trained with the model) would need training changes
and are not done here.

Items: the served item vector plus one vector per part of the item encoder's sum: the id
embedding and one per metadata field (categorical fields, pooled text fields). Parts are scaled
by the same factor as the served vector (1 / norm of the sum, when items are normalised), so they
add up to it; each row carries the item's bias column when the model has one. Parts that are
absent (a missing categorical value, an empty text field) are masked out.

Tests: ``tests/index/test_muvera.py``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.item_encoder import PAD_ID
from models.recommender import Recommender


def interest_positions(
    surfaces: np.ndarray, mask: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """K positions per left-padded history: surfaces, mask (B, T) -> positions (B, K) int64
    and a (B, K) bool mask (False where the history has fewer than K distinct positions).

    Order: the last event; the last event of each other surface, most recent first; the ends of
    K equal segments of the real events, most recent first; duplicates skipped.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"the number of interests must be a positive int, got {k!r}")
    b, t = mask.shape
    positions = np.zeros((b, k), dtype=np.int64)
    valid = np.zeros((b, k), dtype=bool)
    for row in range(b):
        n = int(mask[row].sum())
        if n == 0:
            positions[row, 0], valid[row, 0] = t - 1, True  # the (padding) state the model serves
            continue
        chosen: dict[int, None] = {t - 1: None}
        seen = {int(surfaces[row, t - 1])}
        for pos in range(t - 2, t - n - 1, -1):
            s = int(surfaces[row, pos])
            if s not in seen:
                seen.add(s)
                chosen.setdefault(pos)
        for i in range(1, k):
            chosen.setdefault(t - 1 - (i * n) // k)
        picked = list(chosen)[:k]
        positions[row, : len(picked)] = picked
        valid[row, : len(picked)] = True
    return positions, valid


def user_interest_vectors(
    model: Recommender, ids: torch.Tensor, surfaces: torch.Tensor, mask: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interest vectors (B, K, dim) (served like user vectors) and their (B, K) bool mask."""
    _check_single_channel(model)
    hidden = model.hidden(ids, surfaces, mask)  # (B, T, D)
    pos, valid = interest_positions(surfaces.cpu().numpy(), mask.cpu().numpy(), k)
    index = torch.from_numpy(pos).to(hidden.device)  # (B, K)
    states = torch.gather(hidden, 1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    return model.query_vectors(states), torch.from_numpy(valid)  # (B, K, dim), (B, K)


def item_facet_vectors(model: Recommender, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Id-table rows (N,) -> facet vectors (N, F, dim) and their (N, F) bool mask, with
    F = 2 + categorical fields + text fields (served vector, id, metadata parts; with metadata
    off, F = 2)."""
    _check_single_channel(model)
    enc = model.item_encoder
    cfg = model.config.item
    cat, tokens = model.item_cat[ids], model.item_tokens[ids]  # (N, C), (N, F_t, L)
    parts = [enc.id_embedding(ids)]  # each (N, D)
    present = [ids != PAD_ID]
    if getattr(cfg, "metadata", True):
        for c, emb in enumerate(enc.categorical):
            parts.append(emb(cat[:, c]))
            present.append(cat[:, c] > 0)
        if tokens.shape[-2] > 0:
            tok = enc.text(tokens)  # (N, F_t, L, D)
            here = (tokens > 0).unsqueeze(-1).float()  # (N, F_t, L, 1)
            pooled = (tok * here).sum(-2) / here.sum(-2).clamp(min=1.0)  # (N, F_t, D)
            for f in range(pooled.shape[1]):
                parts.append(pooled[:, f])
                present.append((tokens[:, f] > 0).any(-1))
    stacked = torch.stack(parts, dim=1)  # (N, P, D)
    total = stacked.sum(dim=1)  # (N, D): the encoder's sum
    if cfg.normalize:
        scale = 1.0 / total.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # as F.normalize
        served = F.normalize(total, dim=-1)
    else:
        scale = torch.ones_like(total[:, :1])
        served = total
    vectors = torch.cat([served.unsqueeze(1), stacked * scale.unsqueeze(1)], dim=1)  # (N, F, D)
    if cfg.bias:
        bias = enc.bias(ids).unsqueeze(1).expand(-1, vectors.shape[1], -1)  # (N, F, 1)
        vectors = torch.cat([vectors, bias], dim=-1)  # (N, F, D + 1)
    facet_mask = torch.stack([torch.ones_like(present[0]), *present], dim=1)  # (N, F)
    return vectors, facet_mask


def _check_single_channel(model: Recommender) -> None:
    if model.has_content:
        raise ValueError(
            "MUVERA multi-vectors are not available for a model with a content channel "
            "(trained with --content-dim)"
        )
