"""Matryoshka representations (Kusupati et al., NeurIPS 2022): one embedding, several sizes.

Training adds the recommendation loss of each prefix of the served vectors (the first m
dimensions, re-normalised when the model scores by cosine), so the first 16 / 32 / 64
dimensions are each a usable embedding; an index can then be built over a prefix (smaller,
faster) from the same model, with user vectors cut the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def parse_dims(text: str | Sequence[int] | None) -> tuple[int, ...]:
    """ "16,32,64" (or a sequence) -> sorted distinct positive dims; ValueError quoting bad ones."""
    if text is None or text == "":
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        dims = sorted({int(p) for p in parts})
    except ValueError as exc:
        raise ValueError(f"matryoshka dims must be integers, got {text!r}") from exc
    if any(d < 1 for d in dims):
        raise ValueError(f"matryoshka dims must be positive, got {text!r}")
    return tuple(dims)


def truncate(vectors: torch.Tensor, dim: int, normalize: bool = True) -> torch.Tensor:
    """The first ``dim`` columns (*S, D) -> (*S, dim), unit norm again when ``normalize``."""
    if not 1 <= dim <= vectors.shape[-1]:
        raise ValueError(f"prefix dim {dim} outside 1..{vectors.shape[-1]}")
    prefix = vectors[..., :dim]
    return F.normalize(prefix, dim=-1) if normalize else prefix


def truncate_np(vectors: np.ndarray, dim: int, normalize: bool = True) -> np.ndarray:
    """NumPy twin of :func:`truncate`: (N, D) float32 -> (N, dim) float32, C-contiguous."""
    if not 1 <= dim <= vectors.shape[-1]:
        raise ValueError(f"prefix dim {dim} outside 1..{vectors.shape[-1]}")
    prefix = np.ascontiguousarray(vectors[..., :dim], dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(prefix, axis=-1, keepdims=True)
        prefix = prefix / np.maximum(norms, 1e-12)
    return prefix.astype(np.float32)
