"""Universal user encoder: a causal transformer over a user's cross-surface event sequence.

SASRec (Kang & McAuley, ICDM 2018, "Self-Attentive Sequential Recommendation"): self-attention
blocks with a causal mask over the event sequence; the hidden state at position t predicts the
item at t+1 and the last position is the user vector. As in universal user modelling (one
sequence across every surface of the app, AutoCDSR's plain self-attention over the cross-domain
sequence), each event token is

    item vector (from the shared ItemEncoder) + surface embedding + position embedding.

The transformer layer is written once, in `Block` (as nanoGPT has one ``Block``): training runs
every position (`UserEncoder.forward`), serving only the last position of the last block
(`UserEncoder.encode`, ``last_only``), and AutoCDSR reads each layer's attention probabilities
(`UserEncoder.forward_with_attention`, ``need_weights``), all through ``Block.forward``.

Options of the block (`UserEncoderConfig`):
- ``norm_first``: pre-norm (default, GPT-2 style) or post-norm (the SASRec paper, the original
  transformer);
- ``gated``: LiGR-style gated residuals (Govind et al., LinkedIn 2025, "LiGR"; eSASRec uses its
  layers): each branch's output is multiplied by ``sigmoid(W LN(x))`` before it is added back;
- ``filter``: a learnt frequency-domain filter added to the attention branch (FMLP-Rec, Zhou et
  al., WWW 2022; BSARec, Shin et al., AAAI 2024, mixes it with attention). Departure: FMLP's FFT
  filter mixes every position with every other one, which leaks the future when every position
  is trained on the next item; here the filter is a causal convolution with a learnt kernel over
  lags (computed by FFT with zero padding), so position t sees positions <= t only.

Departures from SASRec: sequences are *left*-padded and positions count from the user's first
real event, so padding never changes a real position's output (the last position is always
index -1); a padding position attends only to itself so no row of the attention mask is empty.
"""

from __future__ import annotations

import math
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
    norm_first: bool = True  # pre-norm; False: post-norm (SASRec paper). Old configs: pre-norm
    gated: bool = False  # LiGR gated residuals (needs norm_first). Old configs: off
    filter: bool = False  # causal frequency-domain filter beside attention. Old configs: off

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.max_len < 1 or self.num_layers < 1 or self.num_surfaces < 1:
            raise ValueError(
                f"max_len, num_layers and num_surfaces must be positive, got "
                f"{self.max_len}, {self.num_layers}, {self.num_surfaces}"
            )
        if self.gated and not self.norm_first:
            raise ValueError(
                f"gated residuals need pre-norm, got gated={self.gated}, "
                f"norm_first={self.norm_first}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class CausalFilter(nn.Module):
    """y[t] = sum_{s <= t} k[t - s] * x[s], per channel, with a learnt kernel k (max_len, D);
    computed in the frequency domain (FFT of length 2T, so the product is a linear, not circular,
    convolution)."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.kernel = nn.Parameter(0.02 * torch.randn(max_len, dim))  # (L, D) lag x channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        spec = torch.fft.rfft(x, n=2 * t, dim=1)  # (B, T + 1, D) complex
        kernel = torch.fft.rfft(self.kernel[:t], n=2 * t, dim=0)  # (T + 1, D)
        return torch.fft.irfft(spec * kernel, n=2 * t, dim=1)[:, :t]  # (B, T, D)


class Block(nn.Module):
    """One transformer layer: causal self-attention then a GELU feed-forward, each a residual
    branch (pre- or post-norm, optionally gated), optionally a causal filter beside attention."""

    def __init__(self, config: UserEncoderConfig) -> None:
        super().__init__()
        d = config.dim
        self.num_heads = config.num_heads
        self.norm_first = config.norm_first
        self.norm1 = nn.LayerNorm(d)
        self.attn_in = nn.Linear(d, 3 * d)  # packed query, key, value projections
        self.attn_out = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.ff_in = nn.Linear(d, 4 * d)
        self.ff_out = nn.Linear(4 * d, d)
        self.dropout = Dropout(config.dropout)
        self.gates = nn.ModuleList([nn.Linear(d, d), nn.Linear(d, d)]) if config.gated else None
        self.filter = CausalFilter(config.max_len, d) if config.filter else None

    def forward(
        self,
        x: torch.Tensor,
        allowed: torch.Tensor,
        mask: torch.Tensor,
        *,
        last_only: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D), allowed (B, 1, T, T) bool (query i may attend key j), mask (B, T) bool
        (real events) -> (B, T', D) and, with ``need_weights``, the attention probabilities
        (B, H, T', T); T' = 1 with ``last_only`` (the last position alone: its query, attention
        row and feed-forward; keys and values still come from every position), else T."""
        h = self.norm1(x) if self.norm_first else x  # (B, T, D)
        a, probs = self._attend(h, allowed, last_only, need_weights)  # (B, T', D)
        if self.filter is not None:
            f = self.filter(h * mask.unsqueeze(-1))  # (B, T, D): padding contributes nothing
            a = a + (f[:, -1:] if last_only else f)
        y = x[:, -1:] if last_only else x  # (B, T', D) residual stream
        if self.norm_first:
            y = y + self._gate(0, h[:, -1:] if last_only else h, self.dropout(a))
            y = y + self._gate(1, self.norm2(y), self.dropout(self._ff(self.norm2(y))))
        else:
            y = self.norm1(y + self.dropout(a))
            y = self.norm2(y + self.dropout(self._ff(y)))
        return y, probs

    def _ff(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff_out(self.dropout(F.gelu(self.ff_in(x))))  # (B, T', D)

    def _gate(self, i: int, h: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """LiGR: the branch times sigmoid(W_i h), h the branch's normalised input."""
        return branch if self.gates is None else torch.sigmoid(self.gates[i](h)) * branch

    def _attend(
        self, h: torch.Tensor, allowed: torch.Tensor, last_only: bool, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, t, d = h.shape
        heads = self.num_heads
        q, k, v = self.attn_in(h).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, H, T, D/H) each
        if last_only:
            q, allowed = q[:, :, -1:], allowed[:, :, -1:]  # (B, H, 1, D/H), (B, 1, 1, T)
        if need_weights or self.dropout.draws_own_mask(h):
            # the same math as scaled_dot_product_attention, with its weights (and, on the CPU,
            # `Dropout`'s faster mask: torch's kernel there draws it with bernoulli_)
            scores = q @ k.transpose(-2, -1) / math.sqrt(d // heads)  # (B, H, T', T)
            probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
            out = self.dropout(probs) @ v  # (B, H, T', D/H)
        else:
            p_drop = self.dropout.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p_drop)
            probs = None
        out = out.transpose(1, 2).reshape(b, q.shape[2], d)  # (B, T', D)
        return self.attn_out(out), probs


class UserEncoder(nn.Module):
    def __init__(self, config: UserEncoderConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.surface_embedding = nn.Embedding(config.num_surfaces, d)
        self.position_embedding = nn.Embedding(config.max_len, d)
        self.dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.norm = nn.LayerNorm(d)
        for emb in (self.surface_embedding, self.position_embedding):
            nn.init.normal_(emb.weight, std=0.02)
        self._register_load_state_dict_pre_hook(_rename_torch_layer_keys)

    def forward(
        self, item_vecs: torch.Tensor, surfaces: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Hidden state per position.

        item_vecs (B, T, D) float, surfaces (B, T) int64, mask (B, T) bool (True = real event,
        left-padded) -> (B, T, D). Position t only sees events at positions <= t.
        """
        return self._run(item_vecs, surfaces, mask)[0]

    def forward_with_attention(
        self, item_vecs: torch.Tensor, surfaces: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward`` plus every layer's attention probabilities (for AutoCDSR's loss):
        -> (B, T, D) and num_layers tensors (B, H, T, T)."""
        return self._run(item_vecs, surfaces, mask, need_weights=True)

    def encode(
        self, item_vecs: torch.Tensor, surfaces: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """User vector from the last position: (B, T, D) inputs -> (B, D).

        Equal to ``forward(...)[:, -1]`` (to float rounding) at a fraction of the cost: the
        last block only computes the last position (what serving needs)."""
        return self._run(item_vecs, surfaces, mask, last_only=True)[0][:, -1]

    def _run(
        self,
        item_vecs: torch.Tensor,
        surfaces: torch.Tensor,
        mask: torch.Tensor,
        *,
        last_only: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, allowed = self._tokens(item_vecs, surfaces, mask)  # (B, T, D), (B, 1, T, T)
        probs = []
        for i, block in enumerate(self.blocks):
            last = last_only and i == len(self.blocks) - 1
            x, p = block(x, allowed, mask, last_only=last, need_weights=need_weights)
            if p is not None:
                probs.append(p)
        return self.norm(x), probs  # (B, T or 1, D)

    def _tokens(
        self, item_vecs: torch.Tensor, surfaces: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Input tokens (B, T, D) and the allowed-attention mask (B, 1, T, T), True = allowed."""
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
        allowed = allowed | torch.eye(t, dtype=torch.bool, device=mask.device)  # pads: self
        return x, allowed.unsqueeze(1)


def random_int16(shape: torch.Size) -> torch.Tensor:
    """Uniform int16 numbers of ``shape`` from torch's CPU generator, four from each of its
    64-bit draws: a float draw takes one generator call per number, and on the CPU the
    generator, not the comparison, is what a dropout mask costs."""
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    return words.view(torch.int16)[:n].view(shape)  # every 16-bit lane of a full-range word


class Dropout(nn.Module):
    """`nn.Dropout`'s function (each element zeroed with probability ``p`` while training, the
    rest scaled by 1 / (1 - p)); on the CPU its mask compares `random_int16` numbers (so ``p``
    is rounded to a multiple of 1/65536): less than half the time of a uniform float draw,
    which was itself about half that of torch's ``bernoulli_`` mask (BENCHMARKS.md, "Cheaper
    hits and dropout masks", "Training steps without page faults"); elsewhere it is torch's
    dropout."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def draws_own_mask(self, x: torch.Tensor) -> bool:
        """Whether dropping from ``x`` uses this module's mask rather than torch's: training,
        ``p`` > 0, on the CPU (`Block._attend` then takes the explicit path to use it)."""
        return self.training and self.p > 0 and x.device.type == "cpu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if not self.draws_own_mask(x):
            return F.dropout(x, self.p, training=True)
        dropped = round(self.p * 65536)  # of the 65536 int16 values, the lowest this many
        keep = random_int16(x.shape) >= dropped - 32768
        return x * (keep * (1.0 / (1.0 - self.p)))


_TORCH_LAYER_NAMES = {  # nn.TransformerEncoderLayer (models saved before Block) -> Block
    "self_attn.in_proj_weight": "attn_in.weight",
    "self_attn.in_proj_bias": "attn_in.bias",
    "self_attn.out_proj.weight": "attn_out.weight",
    "self_attn.out_proj.bias": "attn_out.bias",
    "linear1.weight": "ff_in.weight",
    "linear1.bias": "ff_in.bias",
    "linear2.weight": "ff_out.weight",
    "linear2.bias": "ff_out.bias",
}


def _rename_torch_layer_keys(state: dict, prefix: str, *_args: object) -> None:
    """Load weights saved from ``nn.TransformerEncoder`` (``blocks.layers.i.*``) into `Block`s."""
    for key in [k for k in state if k.startswith(prefix + "blocks.layers.")]:
        rest = key[len(prefix + "blocks.layers.") :]
        i, name = rest.split(".", 1)
        state[f"{prefix}blocks.{i}.{_TORCH_LAYER_NAMES.get(name, name)}"] = state.pop(key)
