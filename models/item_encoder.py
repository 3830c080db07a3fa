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

import numpy as np
import torch
import torch.nn.functional as F
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
    ids: bool = True  # use per-item id embeddings; False: id-free (M2TRec proper), every item
    # is its metadata plus the shared UNK row, so seen and unseen items are encoded alike;
    # absent from old configs: on
    content_dim: int = 0  # K > 0: append a fixed lexical channel of K dims (see ``content``)
    content_decay: float = 0.8  # user side of the channel: weight of an event one step older
    content_seed: int = 0  # seed of the channel's fixed random projection
    content_cold_boost: float = 1.0  # served items without a trained id (new or held out) get
    # their channel times this: > 1 trades some warm-item quality for new-item exposure

    def __post_init__(self) -> None:
        if self.num_items < 1 or self.dim < 1:
            raise ValueError(
                f"num_items and dim must be positive, got {self.num_items}, {self.dim}"
            )
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {self.id_dropout}")
        if not (self.ids or self.metadata):
            raise ValueError("an item encoder needs ids, metadata or both")
        if self.content_dim < 0 or not 0.0 <= self.content_decay <= 1.0:
            raise ValueError(
                f"content_dim must be >= 0 and content_decay in [0, 1], got "
                f"{self.content_dim}, {self.content_decay}"
            )
        if self.content_cold_boost <= 0:
            raise ValueError(f"content_cold_boost must be > 0, got {self.content_cold_boost}")
        if self.content_dim and not (self.metadata and self.num_text_fields):
            raise ValueError("a content channel needs item text fields (and metadata on)")


class ItemEncoder(nn.Module):
    content_proj: torch.Tensor  # (buckets, K) fixed projection, with content_dim
    content_idf: torch.Tensor  # (buckets,) inverse document frequencies, with content_dim
    metadata_only: torch.Tensor  # (N + 2,) bool: rows served without a trained id

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
        if config.content_dim:  # fixed, not learnt: rebuilt from the config on load
            rng = np.random.default_rng(config.content_seed)
            proj = rng.standard_normal((config.text_buckets, config.content_dim), np.float32)
            self.register_buffer("content_proj", torch.from_numpy(proj), persistent=False)
            self.register_buffer("content_idf", torch.zeros(config.text_buckets), persistent=False)
            # catalogue rows served from metadata alone (held out of training): saved with the
            # weights, so they get the cold boost like unknown ids
            self.register_buffer(
                "metadata_only", torch.zeros(config.num_items + 2, dtype=torch.bool)
            )

    def set_content_idf(self, tokens: torch.Tensor) -> None:
        """Inverse document frequencies of the text buckets over a catalogue's tokens
        (N, F, L): ``log((1 + N) / (1 + df)) + 1``, 0 for padding. Called by the model with its
        own catalogue, so a loaded model rebuilds exactly the weights it was trained with."""
        n = tokens.shape[0]
        flat = tokens.reshape(n, -1)  # (N, F * L)
        rows = torch.arange(n).unsqueeze(1).expand_as(flat)
        keys = torch.unique((rows * self.config.text_buckets + flat)[flat > 0])  # item x bucket
        df = torch.bincount(keys % self.config.text_buckets, minlength=self.config.text_buckets)
        idf = torch.log((1.0 + n) / (1.0 + df.float())) + 1.0  # (buckets,)
        idf[0] = 0.0
        self.content_idf.copy_(idf)

    def content(self, tokens: torch.Tensor) -> torch.Tensor:
        """The lexical channel: tokens (*S, F, L) -> (*S, K), unit norm (0 without text).

        A TF-IDF bag of the item's text tokens, randomly projected to K dims (a fixed Gaussian
        matrix: inner products approximate TF-IDF cosines). It is not trained: a new item with
        words seen before lands next to the items that share them, whatever the training
        interactions were, which is what carries metadata-only (cold-start) items.
        """
        shape = tokens.shape[:-2]
        flat = tokens.reshape(-1, tokens.shape[-2] * tokens.shape[-1])  # (M, F * L)
        weights = self.content_idf[flat]  # (M, F * L), 0 for padding
        bag = F.embedding_bag(flat, self.content_proj, per_sample_weights=weights, mode="sum")
        return F.normalize(bag, dim=-1).reshape(*shape, -1)  # (*S, K)

    def forward(self, ids: torch.Tensor, cat: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """ids (*S) int64, cat (*S, C) int64, tokens (*S, F, L) int64 -> (*S, D), then the
        bias column (with ``bias``), then the K content columns (with ``content_dim``)."""
        if not self.config.ids:  # id-free: every catalogue item reads the shared UNK row
            ids = torch.where(ids >= FIRST_ITEM_ID, torch.full_like(ids, UNK_ID), ids)
        elif self.training and self.config.id_dropout > 0:
            drop = torch.rand(ids.shape, device=ids.device) < self.config.id_dropout
            ids = torch.where(drop & (ids >= FIRST_ITEM_ID), torch.full_like(ids, UNK_ID), ids)
        meta = torch.zeros((*ids.shape, self.config.dim), device=ids.device)  # (*S, D)
        for c, emb in enumerate(self.categorical if self.config.metadata else ()):
            meta = meta + emb(cat[..., c])
        if tokens.shape[-2] > 0 and self.config.metadata:
            # each field's mean over its tokens, padding excluded (0 for a field without any),
            # in one fused gather-and-reduce: no (*S, F, L, D) tensor, five times faster
            bags = tokens.reshape(-1, tokens.shape[-1])  # (S * F, L)
            pooled = F.embedding_bag(bags, self.text.weight, mode="mean", padding_idx=0)
            meta = meta + pooled.view(*tokens.shape[:-1], self.config.dim).sum(-2)  # (*S, D)
        vecs = self.id_embedding(ids) + meta  # (*S, D)
        if self.config.bias:
            vecs = torch.cat([vecs, self.bias(ids)], dim=-1)  # (*S, D + 1)
        if self.config.content_dim:
            content = self.content(tokens)  # (*S, K)
            boost = self.config.content_cold_boost
            if boost != 1.0 and not self.training:  # a serving choice, not trained
                cold = (ids == UNK_ID) | self.metadata_only[ids]  # (*S,) metadata-only items
                content = torch.where(cold.unsqueeze(-1), boost * content, content)
            vecs = torch.cat([vecs, content], dim=-1)  # (*S, ... + K)
        return vecs
