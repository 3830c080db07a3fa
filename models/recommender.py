"""The two-tower model: a shared ItemEncoder feeding the UserEncoder, scored by inner product.

User vectors are L2-normalised and so, by default, are item vectors: the served inner product is
then a cosine similarity in [-1, 1]; training divides it by a temperature. With
``ItemEncoderConfig.normalize`` off, item norms are free and can encode popularity. (Unit
vectors also make inner-product HNSW search behave like the metric search it was designed for.)

With ``ItemEncoderConfig.bias`` on, the served vectors have one more dimension: an item is
``[v, b]`` and a user ``[u, 1]``, so their inner product is ``cos(u, v) + b``, the training
logit times the temperature, and plain inner-product search ranks by it. ``dim`` is the served
dimension; training, evaluation and serving all score with these same vectors.

With ``ItemEncoderConfig.content_dim`` K > 0, both sides end with a fixed lexical channel of K
dims: an item's TF-IDF bag of text tokens, randomly projected (``ItemEncoder.content``), and for a
user the decayed sum of their history items' channels, unit norm, times a learnt weight ``w``.
The served score gains ``w x cos(history words, item words)``, trained jointly: the learnt part
fits what word overlap with the recent history does not explain, and an item never trained on
(cold start) still scores by its words. Served layout: user ``[u, (1), w c_u]``, item
``[v, (b), c_i]``; ``dim`` counts every column.

Item metadata features for the whole catalogue live in non-persistent buffers (they are derived
from ``items.parquet`` and the feature spec), as do the content channel's projection and IDF
(rebuilt from the config and catalogue); the weights file holds the learnt parameters and, for a
content model, which rows are served from metadata alone (``metadata_only``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.item_encoder import FIRST_ITEM_ID, ItemEncoder, ItemEncoderConfig
from models.user_encoder import UserEncoder, UserEncoderConfig


@dataclass
class RecommenderConfig:
    item: ItemEncoderConfig
    user: UserEncoderConfig

    def __post_init__(self) -> None:
        if self.item.dim != self.user.dim:
            raise ValueError(f"item dim {self.item.dim} != user dim {self.user.dim}")

    def to_dict(self) -> dict[str, object]:
        return {"item": asdict(self.item), "user": asdict(self.user)}

    @staticmethod
    def from_dict(raw: dict[str, dict[str, object]]) -> RecommenderConfig:
        return RecommenderConfig(ItemEncoderConfig(**raw["item"]), UserEncoderConfig(**raw["user"]))  # type: ignore[arg-type]


class Recommender(nn.Module):
    item_cat: torch.Tensor
    item_tokens: torch.Tensor

    def __init__(
        self, config: RecommenderConfig, item_cat: torch.Tensor, item_tokens: torch.Tensor
    ) -> None:
        """item_cat (N, C) and item_tokens (N, F, L): catalogue features in catalogue order."""
        super().__init__()
        n = config.item.num_items
        if item_cat.shape[0] != n or item_tokens.shape[0] != n:
            raise ValueError(
                f"feature rows {item_cat.shape[0]}/{item_tokens.shape[0]} != num_items {n}"
            )
        self.config = config
        self.item_encoder = ItemEncoder(config.item)
        self.user_encoder = UserEncoder(config.user)
        # rows 0 (pad) and 1 (UNK) carry no metadata
        pad_cat = torch.zeros((FIRST_ITEM_ID, item_cat.shape[1]), dtype=torch.long)
        pad_tok = torch.zeros((FIRST_ITEM_ID, *item_tokens.shape[1:]), dtype=torch.long)
        self.register_buffer("item_cat", torch.cat([pad_cat, item_cat]), persistent=False)
        self.register_buffer("item_tokens", torch.cat([pad_tok, item_tokens]), persistent=False)
        if config.item.content_dim:
            self.item_encoder.set_content_idf(item_tokens)
            self.content_weight = nn.Parameter(torch.tensor(1.0))  # learnt weight of the channel

    @property
    def dim(self) -> int:
        """Dimension of the served user and item vectors: D, + 1 with the item bias, + K with
        the content channel."""
        item = self.config.item
        return item.dim + int(item.bias) + item.content_dim

    @property
    def has_content(self) -> bool:
        return bool(self.config.item.content_dim)

    def user_content(
        self, ids: torch.Tensor, mask: torch.Tensor, *, last: bool = False
    ) -> torch.Tensor:
        """The user side of the lexical channel at every position: ids, mask (B, T) -> (B, T, K),
        the unit-norm sum of the channels of the events up to each position, an event ``a``
        steps older weighted ``content_decay ** a``; unknown items and padding add nothing.
        With ``last``, only the last position's: (B, K) (what serving needs)."""
        item = self.item_encoder.content(self.item_tokens[ids])  # (B, T, K)
        item = item * mask.unsqueeze(-1)
        t = ids.shape[1]
        steps = torch.arange(t, device=ids.device)
        age = (steps[:, None] - steps[None, :]).float()  # (T, T): row t, column j: t - j
        if last:
            age = age[-1:]  # (1, T)
        decay = torch.where(
            age >= 0, self.config.item.content_decay ** age.clamp(min=0), torch.zeros_like(age)
        )  # (T or 1, T)
        summed = torch.einsum("tj,bjk->btk", decay, item)  # (B, T or 1, K)
        return F.normalize(summed[:, 0] if last else summed, dim=-1)

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """Catalogue id-table rows (*S) int64 -> served item vectors (*S, dim).

        Each distinct id is encoded once: batches repeat padding and popular items a lot.
        """
        uniq, inverse = torch.unique(ids, return_inverse=True)  # (U,), (*S)
        vecs = self.item_encoder(uniq, self.item_cat[uniq], self.item_tokens[uniq])  # (U, D)
        return self.finish_item_vectors(vecs)[inverse]

    def finish_item_vectors(self, vecs: torch.Tensor) -> torch.Tensor:
        """Item-encoder output (*S, dim) -> served item vectors (*S, dim): the first D columns
        unit norm unless configured off, the bias column (if any) as it is."""
        if not self.config.item.normalize:
            return vecs
        d = self.config.item.dim
        if vecs.shape[-1] == d:
            return F.normalize(vecs, dim=-1)
        return torch.cat([F.normalize(vecs[..., :d], dim=-1), vecs[..., d:]], dim=-1)

    def all_item_vectors(self, batch_size: int = 65536) -> torch.Tensor:
        """Vectors of every catalogue item, in catalogue order: (N, dim)."""
        ids = torch.arange(
            FIRST_ITEM_ID, self.config.item.num_items + FIRST_ITEM_ID, device=self.item_cat.device
        )
        return torch.cat([self.item_vectors(chunk) for chunk in ids.split(batch_size)])

    def hidden(self, ids: torch.Tensor, surfaces: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-position user states: ids, surfaces, mask (B, T) -> (B, T, D)."""
        item_vecs = self.item_vectors(ids)[..., : self.config.item.dim]  # (B, T, D) no bias
        return self.user_encoder(item_vecs, surfaces, mask)

    def hidden_with_attention(
        self, ids: torch.Tensor, surfaces: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``hidden`` (B, T, D) plus each layer's attention probabilities (B, H, T, T)."""
        item_vecs = self.item_vectors(ids)[..., : self.config.item.dim]  # (B, T, D) no bias
        return self.user_encoder.forward_with_attention(item_vecs, surfaces, mask)

    def query_vectors(
        self, hidden: torch.Tensor, content: torch.Tensor | None = None
    ) -> torch.Tensor:
        """User states (*S, D) -> served user vectors (*S, dim): unit norm, then a constant 1
        that picks up the item bias column when the bias is on, then the user's lexical channel
        (*S, K) (``user_content`` at the same positions) times its learnt weight."""
        queries = F.normalize(hidden, dim=-1)  # (*S, D)
        if self.config.item.bias:
            queries = torch.cat([queries, torch.ones_like(queries[..., :1])], dim=-1)
        if self.has_content:
            if content is None:
                raise ValueError("a model with a content channel needs the users' histories")
            queries = torch.cat([queries, self.content_weight * content], dim=-1)
        return queries

    def user_vectors(
        self,
        ids: torch.Tensor,
        surfaces: torch.Tensor,
        mask: torch.Tensor,
        item_vecs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Served user vectors from left-padded histories (B, T) -> (B, dim).

        ``item_vecs`` (B, T, dim): the served vectors of ``ids`` (``item_vectors(ids)``) when the
        caller already has them, e.g. read from a table of every item; encoded here when None.
        """
        content = self.user_content(ids, mask, last=True) if self.has_content else None
        if item_vecs is None:
            item_vecs = self.item_vectors(ids)  # (B, T, dim)
        item_vecs = item_vecs[..., : self.config.item.dim]  # (B, T, D) no bias
        last = self.user_encoder.encode(item_vecs, surfaces, mask)  # (B, D) = hidden[:, -1]
        return self.query_vectors(last, content)
