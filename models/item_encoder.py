"""Item encoder: item-id embedding plus metadata, in the user encoder's space.

The metadata path follows the id-free item encoders of M2TRec (Shen et al., 2023): categorical
fields (surface, category, brand...) are looked up, text fields are hashed bags of tokens, mean
pooled. Departure: instead of dropping the id entirely we *add* an id embedding and train with
id dropout (the id is replaced by the shared UNK id with probability ``id_dropout``), so the
metadata path alone stays a good vector for cold-start items while warm items keep their
memorised id embedding. The item vector is the plain sum of the id embedding and the field
embeddings, all initialised at the same small scale, so neither path drowns the other at the
start of training (a normalising projection of the metadata made every item of a surface look
alike and stalled training).

With ``bias`` on, each id also has a learnt scalar bias (a popularity prior, as in the output
bias of a softmax recommender): the encoder output gets it as one extra, last column, in the
units of the served score (a cosine), so the softmax logit is ``(cos(u, v) + b) / temperature``.
Dropped and unknown ids get the UNK row's bias.

Row layout of the id table: 0 = padding, 1 = UNK (unknown / dropped id), 2.. = catalogue items.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

PAD_ID = 0
UNK_ID = 1
FIRST_ITEM_ID = 2


@dataclass
class ItemEncoderConfig:
    num_items: int  # catalogue size N; the id table has N + 2 rows
    dim: int = 64
    categorical_sizes: dict[str, int] = field(default_factory=dict)  # field -> vocab size incl. 0
    num_text_fields: int = 0
    text_buckets: int = 1 << 15
    id_dropout: float = 0.1  # probability of replacing an id by UNK while training
    normalize: bool = True  # unit-norm item vectors (cosine scores); False lets an item's norm
    # carry how broadly relevant it is (popularity), at the price of a less metric-like index
    bias: bool = False  # a learnt per-item score bias (popularity prior), served as a last
    # vector column (so inner-product search still ranks by it); absent from old configs: off
    metadata: bool = True  # add the metadata fields; False: an id-only item table (the id-only
    # baseline: a cold item is then the UNK vector); absent from old configs: on

    def __post_init__(self) -> None:
        if self.num_items < 1 or self.dim < 1:
            raise ValueError(
                f"num_items and dim must be positive, got {self.num_items}, {self.dim}"
            )
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {self.id_dropout}")


class ItemEncoder(nn.Module):
    def __init__(self, config: ItemEncoderConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        # sparse gradients: only the rows touched by a batch are updated (730k-row tables)
        self.id_embedding = nn.Embedding(config.num_items + 2, d, padding_idx=PAD_ID, sparse=True)
        self.categorical = nn.ModuleList(
            nn.Embedding(size, d, padding_idx=0) for size in config.categorical_sizes.values()
        )
        self.text = nn.Embedding(config.text_buckets, d, padding_idx=0)
        if config.bias:
            self.bias = nn.Embedding(config.num_items + 2, 1, padding_idx=PAD_ID, sparse=True)
            nn.init.zeros_(self.bias.weight)
        nn.init.normal_(self.id_embedding.weight, std=0.02)
        for emb in [*self.categorical, self.text]:
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.id_embedding.weight[PAD_ID].zero_()

    def forward(self, ids: torch.Tensor, cat: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """ids (*S) int64, cat (*S, C) int64, tokens (*S, F, L) int64 -> (*S, D), or (*S, D + 1)
        with the bias as the last column."""
        if self.training and self.config.id_dropout > 0:
            drop = torch.rand(ids.shape, device=ids.device) < self.config.id_dropout
            ids = torch.where(drop & (ids >= FIRST_ITEM_ID), torch.full_like(ids, UNK_ID), ids)
        meta = torch.zeros((*ids.shape, self.config.dim), device=ids.device)  # (*S, D)
        for c, emb in enumerate(self.categorical if self.config.metadata else ()):
            meta = meta + emb(cat[..., c])
        if tokens.shape[-2] > 0 and self.config.metadata:
            tok = self.text(tokens)  # (*S, F, L, D)
            present = (tokens > 0).unsqueeze(-1).float()  # (*S, F, L, 1)
            pooled = (tok * present).sum(-2) / present.sum(-2).clamp(min=1.0)  # (*S, F, D)
            meta = meta + pooled.sum(-2)
        vecs = self.id_embedding(ids) + meta  # (*S, D)
        if self.config.bias:
            vecs = torch.cat([vecs, self.bias(ids)], dim=-1)  # (*S, D + 1)
        return vecs
