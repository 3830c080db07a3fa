"""The two-tower model: a shared ItemEncoder feeding the UserEncoder, scored by inner product.

User vectors are L2-normalised and so, by default, are item vectors: the served inner product is
then a cosine similarity in [-1, 1]; training divides it by a temperature. With
``ItemEncoderConfig.normalize`` off, item norms are free and can encode popularity. (Unit
vectors also make inner-product HNSW search behave like the metric search it was designed for.)

Item metadata features for the whole catalogue live in non-persistent buffers (they are derived
from ``items.parquet`` and the feature spec, so the weights file holds only learnt parameters).
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

    @property
    def dim(self) -> int:
        return self.config.item.dim

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """Catalogue id-table rows (*S) int64 -> unit-norm item vectors (*S, D).

        Each distinct id is encoded once: batches repeat padding and popular items a lot.
        """
        uniq, inverse = torch.unique(ids, return_inverse=True)  # (U,), (*S)
        vecs = self.item_encoder(uniq, self.item_cat[uniq], self.item_tokens[uniq])  # (U, D)
        return self.finish_item_vectors(vecs)[inverse]

    def finish_item_vectors(self, vecs: torch.Tensor) -> torch.Tensor:
        """Item-encoder output (*S, D) -> served item vectors (unit norm unless configured off)."""
        return F.normalize(vecs, dim=-1) if self.config.item.normalize else vecs

    def all_item_vectors(self, batch_size: int = 65536) -> torch.Tensor:
        """Vectors of every catalogue item, in catalogue order: (N, D)."""
        ids = torch.arange(
            FIRST_ITEM_ID, self.config.item.num_items + FIRST_ITEM_ID, device=self.item_cat.device
        )
        return torch.cat([self.item_vectors(chunk) for chunk in ids.split(batch_size)])

    def hidden(self, ids: torch.Tensor, surfaces: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-position user states: ids, surfaces, mask (B, T) -> (B, T, D)."""
        return self.user_encoder(self.item_vectors(ids), surfaces, mask)

    def user_vectors(
        self, ids: torch.Tensor, surfaces: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Unit-norm user vectors from left-padded histories (B, T) -> (B, D)."""
        return F.normalize(self.hidden(ids, surfaces, mask)[:, -1], dim=-1)
