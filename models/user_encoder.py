"""Universal user encoder: a causal transformer over a user's cross-surface event sequence.

SASRec (Kang & McAuley, ICDM 2018, "Self-Attentive Sequential Recommendation"): pre-norm
self-attention blocks with a causal mask over the event sequence; the hidden state at position
t predicts the item at t+1 and the last position is the user vector. As in universal user
modelling (one sequence across every surface of the app, AutoCDSR's plain self-attention over
the cross-domain sequence), each event token is

    item vector (from the shared ItemEncoder) + surface embedding + position embedding.

Departures from the paper: sequences are *left*-padded and positions count from the user's
first real event, so padding never changes a real position's output (the last position is always
index -1); a padding position attends only to itself so no row of the attention mask is empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UserEncoderConfig:
    num_surfaces: int  # surface vocabulary size incl. 0 = unknown surface
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    max_len: int = 50  # events kept per user (most recent)
    dropout: float = 0.1
    surface_tokens: bool = True  # add the surface embedding to each event; False: a plain
    # transformer over item ids (the id-only baseline); absent from old configs: on

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.max_len < 1 or self.num_layers < 1 or self.num_surfaces < 1:
            raise ValueError(
                f"max_len, num_layers and num_surfaces must be positive, got "
                f"{self.max_len}, {self.num_layers}, {self.num_surfaces}"
            )


class UserEncoder(nn.Module):
    def __init__(self, config: UserEncoderConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.surface_embedding = nn.Embedding(config.num_surfaces, d)
        self.position_embedding = nn.Embedding(config.max_len, d)
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            d,
            config.num_heads,
            dim_feedforward=4 * d,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        for emb in (self.surface_embedding, self.position_embedding):
            nn.init.normal_(emb.weight, std=0.02)

    def forward(
        self, item_vecs: torch.Tensor, surfaces: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Hidden state per position.

        item_vecs (B, T, D) float, surfaces (B, T) int64, mask (B, T) bool (True = real event,
        left-padded) -> (B, T, D). Position t only sees events at positions <= t.
        """
        x, blocked = self._tokens(item_vecs, surfaces, mask)
        h = self.blocks(x, mask=blocked)  # (B, T, D)
        return self.norm(h)

    def _tokens(
        self, item_vecs: torch.Tensor, surfaces: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Input tokens (B, T, D) and the blocked-attention mask (B*H, T, T), True = blocked."""
        _b, t, _ = item_vecs.shape
        if t > self.config.max_len:
            raise ValueError(f"sequence length {t} exceeds max_len {self.config.max_len}")
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
        x = item_vecs + self.position_embedding(positions)  # (B, T, D)
        if self.config.surface_tokens:
            x = x + self.surface_embedding(surfaces)
        x = self.dropout(x * mask.unsqueeze(-1))  # (B, T, D)
        causal = torch.ones(t, t, dtype=torch.bool, device=mask.device).tril()  # (T, T)
        allowed = causal & mask.unsqueeze(1)  # (B, T, T): query i may see real key j <= i
        allowed = allowed | torch.eye(
            t, dtype=torch.bool, device=mask.device
        )  # pads see themselves
        blocked = (~allowed).repeat_interleave(self.config.num_heads, dim=0)  # (B*H, T, T)
        return x, blocked

    def forward_with_attention(
        self, item_vecs: torch.Tensor, surfaces: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward`` plus every layer's attention probabilities (for AutoCDSR's loss).

        Runs the same pre-norm blocks step by step (same parameters, same math as
        ``nn.TransformerEncoderLayer`` with ``norm_first``) asking each attention for its
        per-head weights: -> (B, T, D) and num_layers tensors (B, H, T, T).
        """
        x, blocked = self._tokens(item_vecs, surfaces, mask)
        probs = []
        for layer in self.blocks.layers:
            h = layer.norm1(x)
            attended, weights = layer.self_attn(
                h, h, h, attn_mask=blocked, need_weights=True, average_attn_weights=False
            )  # (B, T, D), (B, H, T, T)
            x = x + layer.dropout1(attended)
            ff = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(x)))))
            x = x + layer.dropout2(ff)  # (B, T, D)
            probs.append(weights)
        return self.norm(x), probs

    def encode(
        self, item_vecs: torch.Tensor, surfaces: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """User vector from the last position: (B, T, D) inputs -> (B, D).

        Equal to ``forward(...)[:, -1]`` (to float rounding) at a fraction of the cost: the
        last block only needs the last position's query, attention row and feed-forward (its
        keys and values still come from every position), so serving skips the rest.
        """
        x, blocked = self._tokens(item_vecs, surfaces, mask)
        *lower, last = self.blocks.layers
        for layer in lower:
            x = layer(x, src_mask=blocked)  # (B, T, D)
        attended = self._last_attention(last.self_attn, last.norm1(x), blocked)  # (B, 1, D)
        y = x[:, -1:] + last.dropout1(attended)  # (B, 1, D)
        y = y + last.dropout2(
            last.linear2(last.dropout(last.activation(last.linear1(last.norm2(y)))))
        )
        return self.norm(y)[:, 0]  # (B, D)

    def _last_attention(
        self, attn: nn.MultiheadAttention, h: torch.Tensor, blocked: torch.Tensor
    ) -> torch.Tensor:
        """``attn(h[:, -1:], h, h, attn_mask=blocked[:, -1:])[0]``: the last position's
        attention over h (B, T, D) -> (B, 1, D), computed the way ``nn.MultiheadAttention``
        does (packed in-projection, scaled dot-product attention, out-projection) without its
        generic argument handling, which holds the GIL in the serving thread longer than the
        attention itself takes."""
        b, t, d = h.shape
        heads = attn.num_heads
        w_q, w_kv = attn.in_proj_weight.split([d, 2 * d])
        b_q, b_kv = attn.in_proj_bias.split([d, 2 * d])
        q = F.linear(h[:, -1:], w_q, b_q).view(b, 1, heads, d // heads).transpose(1, 2)
        kv = F.linear(h, w_kv, b_kv).view(b, t, 2, heads, d // heads)  # (B, T, 2, H, D/H)
        k, v = kv.permute(2, 0, 3, 1, 4)  # (B, H, T, D/H) each
        allowed = ~blocked[:, -1:].view(b, heads, 1, t)  # (B, H, 1, T)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=attn.dropout if self.training else 0.0
        )  # (B, H, 1, D/H)
        return F.linear(
            out.transpose(1, 2).reshape(b, 1, d), attn.out_proj.weight, attn.out_proj.bias
        )
