"""Recall of an ItemIndex against exact (brute-force) inner-product search."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from index.item_index import ItemIndex

QUERY_CHUNK = 256  # queries scored at once at most
SCORE_BUDGET = 1 << 24  # entries of one (chunk, N) score matrix: 64 MiB of float32 at most


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k largest inner products per query, best first: (B, k) int64.

    `vectors` is (N, D), `queries` (B, D); k must not exceed N.
    """
    v = np.asarray(vectors, dtype=np.float32)  # (N, D)
    q = np.asarray(queries, dtype=np.float32)  # (B, D)
    if v.ndim != 2 or q.ndim != 2 or v.shape[1] != q.shape[1]:
        raise ValueError(f"need vectors (N, D) and queries (B, D), got {v.shape} and {q.shape}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= v.shape[0]:
        raise ValueError(f"k must be an int in [1, {v.shape[0]}], got {k!r}")
    out = np.empty((q.shape[0], k), dtype=np.int64)  # (B, k)
    chunk = max(1, min(QUERY_CHUNK, SCORE_BUDGET // v.shape[0]))  # 22 queries for 730k items
    for start in range(0, q.shape[0], chunk):
        scores = q[start : start + chunk] @ v.T  # (b, N)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (b, k) unordered
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[start : start + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def recall_at_k(
    index: ItemIndex,
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    params: Mapping[str, int] | None = None,
    *,
    exact: np.ndarray | None = None,
) -> float:
    """Mean over queries of the share of the ANN's top-k that belongs to an exact top-k
    (`tied_recall`: an item scoring as high as the exact k-th counts); `vectors` are the
    index's rows (N, D).

    `exact` may pass `exact_topk(vectors, queries, k)` computed once for several calls.
    """
    if np.shape(vectors)[0] != index.count:
        raise ValueError(f"got {np.shape(vectors)[0]} vectors for an index of {index.count} rows")
    _, ann = index.search(queries, k, params=params)  # (B, k)
    if exact is None:
        exact = exact_topk(vectors, queries, k)  # (B, k)
    elif exact.shape != ann.shape:
        raise ValueError(f"exact top-k has shape {exact.shape}, the search gave {ann.shape}")
    if ann.shape[0] == 0:
        raise ValueError("recall needs at least one query, got none")
    return tied_recall(ann, exact, vectors, queries)


TIE_TOLERANCE = 1e-5  # relative: inner products of equal vectors, summed in another order


def tied_recall(
    found: np.ndarray, exact: np.ndarray, vectors: np.ndarray, queries: np.ndarray
) -> float:
    """Mean over queries of the found rows whose exact score reaches the exact k-th score, / k.

    found (Q, k) rows (-1 = no result), exact (Q, k) the exact top-k best first, vectors (N, D),
    queries (Q, D). Where several items tie at the k-th score any k of them are an exact answer,
    so a found item tied with the k-th counts although the exact list named another (equal
    vectors are common: cold-start items with the same metadata); ann-benchmarks counts its
    recall the same way, by distance. Without ties it equals `overlap_recall`.
    """
    v = np.asarray(vectors, dtype=np.float32)  # (N, D)
    q = np.asarray(queries, dtype=np.float32)  # (Q, D)
    kth = np.einsum("qd,qd->q", q, v[exact[:, -1]])  # (Q,) the exact k-th score
    real = found >= 0  # (Q, k)
    scores = np.einsum("qd,qkd->qk", q, v[np.where(real, found, 0)])  # (Q, k)
    reach = kth - TIE_TOLERANCE * np.maximum(1.0, np.abs(kth))  # (Q,)
    hits = (real & (scores >= reach[:, None])).sum(1)  # (Q,)
    return float(np.mean(hits) / exact.shape[1])


def overlap_recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found_i ∩ exact_i| / k, both (Q, k) rows (-1 = no result)."""
    k = exact.shape[1]
    hits = [np.intersect1d(f[f >= 0], e).size for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits) / k)
