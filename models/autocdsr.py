"""AutoCDSR: cross-surface attention as a second objective, Pareto-balanced each step.

Ju et al., KDD 2025, "Revisiting Self-attention for Cross-domain Sequential Recommendation":
keep plain self-attention over the mixed-surface sequence, and add an auxiliary loss, the
attention mass a token of surface A puts on tokens of other surfaces, so that information only
crosses surfaces where it helps the recommendation loss. The two losses are weighted by the
multiple-gradient-descent (MGDA, Sener & Koltun, NeurIPS 2018) min-norm solution over the
shared parameters' gradients, recomputed every step.

Departures: the loss is the mean cross-surface mass over layers, heads and real query
positions (padding is neither query nor key); the shared parameters are the user encoder's
dense parameters (embedding tables excluded, as the paper's code does). The MGDA weights
(w_rec, w_aux) are applied as ``loss_rec + (w_aux / w_rec) * loss_aux`` (the same direction as
the MGDA combination, with the recommendation loss kept at unit scale, again as the paper's
code), w_rec floored at ``MIN_REC_WEIGHT``. Optionally (``normalize``) each gradient is
scaled before the solve, by its loss value or to unit norm, the options of Sener & Koltun's
code; plain MGDA (the default) hands almost all the weight to whichever gradient is smaller.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

MIN_REC_WEIGHT = 0.05  # floor of the recommendation weight: the auxiliary gets at most 19x


def cross_surface_attention_loss(
    attention: Sequence[torch.Tensor], surfaces: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean attention mass from each real token to real tokens of other surfaces.

    attention: per layer (B, H, T, T) probabilities (rows = queries); surfaces (B, T) int64;
    mask (B, T) bool, True = real event -> scalar in [0, 1]. Zero when every event of each
    sequence has one surface.
    """
    if not attention:
        raise ValueError("no attention tensors given")
    other = surfaces.unsqueeze(2) != surfaces.unsqueeze(1)  # (B, T, T)
    cross = (other & mask.unsqueeze(1) & mask.unsqueeze(2)).unsqueeze(1)  # (B, 1, T, T)
    queries = mask.sum().clamp(min=1)
    per_layer = []
    for probs in attention:
        mass = (probs * cross).sum(-1)  # (B, H, T): per query, mass on other surfaces
        per_layer.append(mass.sum((0, 2)) / queries)  # (H,) mean over real queries
    return torch.stack(per_layer).mean()


def min_norm_weights(g1: torch.Tensor, g2: torch.Tensor) -> tuple[float, float]:
    """Two-task MGDA: (a, 1 - a) minimising ||a g1 + (1 - a) g2|| over a in [0, 1].

    Closed form a = clip(((g2 - g1) . g2) / ||g1 - g2||^2, 0, 1); equal gradients give 0.5.
    """
    diff = g1 - g2
    denom = float(diff.dot(diff))
    if denom <= 0.0 or not torch.isfinite(torch.tensor(denom)):
        return 0.5, 0.5
    alpha = float((g2 - g1).dot(g2)) / denom
    alpha = min(1.0, max(0.0, alpha))
    return alpha, 1.0 - alpha


def flat_grad(loss: torch.Tensor, params: Sequence[nn.Parameter]) -> torch.Tensor:
    """Gradient of ``loss`` w.r.t. ``params``, flattened (zeros for unused ones); keeps the
    graph for the real backward pass."""
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


NORMALIZATIONS = ("none", "loss", "l2")


def pareto_combine(
    rec_loss: torch.Tensor,
    aux_loss: torch.Tensor,
    shared: Sequence[nn.Parameter],
    normalize: str = "none",
) -> tuple[torch.Tensor, tuple[float, float]]:
    """The step's loss ``rec + (w_aux / w_rec) aux`` and the MGDA weights (w_rec, w_aux).

    ``normalize`` scales each gradient before the min-norm solve, as Sener & Koltun's code
    offers: "none" (plain MGDA), "loss" (divided by its loss value: relative rates of
    decrease), "l2" (unit norm: with two tasks always (0.5, 0.5)).
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    g_rec, g_aux = flat_grad(rec_loss, shared), flat_grad(aux_loss, shared)
    if normalize == "loss":
        g_rec = g_rec / rec_loss.detach().abs().clamp(min=1e-8)
        g_aux = g_aux / aux_loss.detach().abs().clamp(min=1e-8)
    elif normalize == "l2":
        g_rec, g_aux = g_rec / g_rec.norm().clamp(min=1e-12), g_aux / g_aux.norm().clamp(min=1e-12)
    w_rec, w_aux = min_norm_weights(g_rec, g_aux)
    return rec_loss + (w_aux / max(w_rec, MIN_REC_WEIGHT)) * aux_loss, (w_rec, w_aux)
