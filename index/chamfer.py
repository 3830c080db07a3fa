"""Exact Chamfer (MaxSim) similarity between multi-vector queries and documents, batched.

``chamfer(Q, D) = sum over query vectors q of max over document vectors d of <q, d>``. The one
place it is computed: the multi-mode re-ranker, the FDE tests and the MUVERA benchmark all call
these functions. Point clouds are padded arrays with masks: queries (B, n_q, dim) with
(B, n_q) bool, documents (N, n_d, dim) with (N, n_d) bool. A padded query vector adds nothing; a
padded document vector is never the max; a document with no vectors scores -inf.

Tests: ``tests/index/test_fde.py`` (against a per-pair loop), ``tests/index/test_muvera.py``.
"""

from __future__ import annotations

import numpy as np

_CHUNK_ELEMENTS = 1 << 24  # score-tensor elements computed at once (64 MiB of float32)


def _mask(mask: np.ndarray | None, shape: tuple[int, int], name: str) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask)
    if m.dtype != np.bool_ or m.shape != shape:
        raise ValueError(f"{name} must be a bool array of shape {shape}, got {m.dtype} {m.shape}")
    return m


def _clouds(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be 3-D (count, vectors, dim), got shape {arr.shape}")
    return arr


def chamfer(
    queries: np.ndarray,
    documents: np.ndarray,
    query_mask: np.ndarray | None = None,
    document_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Chamfer similarity of every query with every document: (B, N) float32.

    queries (B, n_q, dim), documents (N, n_d, dim); masks mark real vectors (default: all).
    Computed in chunks of documents so the (B, n_q, chunk, n_d) scores stay bounded.
    """
    q = _clouds(queries, "queries")
    d = _clouds(documents, "documents")
    if q.shape[2] != d.shape[2]:
        raise ValueError(f"queries have dim {q.shape[2]} but documents have dim {d.shape[2]}")
    qm = _mask(query_mask, q.shape[:2], "query_mask")
    dm = _mask(document_mask, d.shape[:2], "document_mask")
    b, nq, dim = q.shape
    n, nd, _ = d.shape
    q = q * qm[..., None]  # padded query vectors contribute 0
    flat_q = q.reshape(b * nq, dim)  # (B n_q, dim)
    out = np.empty((b, n), dtype=np.float32)
    step = max(1, _CHUNK_ELEMENTS // max(1, b * nq * nd))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        s = flat_q @ d[lo:hi].reshape(-1, dim).T  # (B n_q, c n_d)
        s = s.reshape(b, nq, hi - lo, nd)
        s = np.where(dm[lo:hi][None, None], s, -np.inf)
        best = s.max(axis=3)  # (B, n_q, c)
        best = np.where(qm[..., None], best, 0.0)  # padded queries add nothing (even vs -inf)
        out[:, lo:hi] = best.sum(axis=1)
    return out


def chamfer_pairs(
    queries: np.ndarray,
    documents: np.ndarray,
    query_mask: np.ndarray | None = None,
    document_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Chamfer similarity of each query with its own documents: queries (B, n_q, dim),
    documents (B, C, n_d, dim) (C candidates per query), masks (B, n_q) and (B, C, n_d)
    -> (B, C) float32. The re-ranking step."""
    q = _clouds(queries, "queries")
    d = np.asarray(documents, dtype=np.float32)
    if d.ndim != 4 or d.shape[0] != q.shape[0] or d.shape[3] != q.shape[2]:
        raise ValueError(
            f"documents must be (B, C, n_d, dim) matching queries {q.shape}, got {d.shape}"
        )
    qm = _mask(query_mask, q.shape[:2], "query_mask")
    dm = _mask(document_mask, d.shape[:3], "document_mask")  # type: ignore[arg-type]
    s = np.einsum("bqe,bcde->bqcd", q, d, optimize=True)  # (B, n_q, C, n_d)
    s = np.where(dm[:, None], s, -np.inf).max(axis=3)  # (B, n_q, C)
    return np.where(qm[..., None], s, 0.0).sum(axis=1).astype(np.float32)  # (B, C)


def chamfer_topk(
    queries: np.ndarray,
    documents: np.ndarray,
    k: int,
    query_mask: np.ndarray | None = None,
    document_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k documents by Chamfer similarity: (scores, rows), each (B, k),
    scores descending (ties: lower row first). The exact reference for FDE retrieval."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    scores = chamfer(queries, documents, query_mask, document_mask)  # (B, N)
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else None
    if part is None:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    top = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -top), axis=1)  # by score desc, then row asc
    rows = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(scores, rows, axis=1), rows
