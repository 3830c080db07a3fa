"""Auto-tuning: the cheapest search parameter (efSearch / nprobe) that meets a target recall@k.

Recall is measured against exact search on held-out query vectors, with the exact top-k computed
once. Candidates are tried from cheapest to dearest and the first that meets the target wins, so
the result is the cheapest on the grid (recall grows with efSearch / nprobe, up to noise). When
none meets it, the best one found is returned with `met_target` false, for the gate to refuse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from index.item_index import ItemIndex, index_kind
from index.recall import exact_topk, recall_at_k

DEFAULT_TARGET_RECALL = 0.95
# Roughly geometric (x1.5) so a step costs about half as much again as the previous one.
EF_SEARCH_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096)
NPROBE_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclass(frozen=True)
class TuneResult:
    params: dict[str, int]  # the chosen per-call search parameters ({} for exhaustive indexes)
    recall: float  # recall@k reached with them
    target: float
    k: int
    met_target: bool
    tried: tuple[tuple[dict[str, int], float], ...]  # (params, recall@k), in the order tried

    def to_json(self) -> dict[str, Any]:
        """For the manifest's `extra`."""
        return {
            "target_recall": self.target,
            "k": self.k,
            "met_target": self.met_target,
            "tried": [[p, round(r, 4)] for p, r in self.tried],
        }


def candidate_params(index: ItemIndex) -> list[dict[str, int]]:
    """Search parameters to try, cheapest first: efSearch for HNSW, nprobe for IVF, else [{}]."""
    kind = index_kind(index.faiss_index)
    if kind == "hnsw":
        cap = max(index.count, EF_SEARCH_GRID[0])  # a larger efSearch explores nothing more
        grid = [ef for ef in EF_SEARCH_GRID if ef < cap]
        if cap <= EF_SEARCH_GRID[-1]:
            grid.append(cap)
        return [{"efSearch": ef} for ef in grid]
    if kind == "ivf":
        nlist = faiss.extract_index_ivf(index.faiss_index).nlist
        return [{"nprobe": p} for p in [*(p for p in NPROBE_GRID if p < nlist), nlist]]
    return [{}]


def tune_search_params(
    index: ItemIndex,
    vectors: np.ndarray,
    queries: np.ndarray,
    *,
    target_recall: float = DEFAULT_TARGET_RECALL,
    k: int = 10,
    candidates: Sequence[Mapping[str, int]] | None = None,
) -> TuneResult:
    """The first of `candidates` (default `candidate_params(index)`) whose recall@k meets the target.

    `vectors` (N, D) are the index's rows, `queries` (Q, D) held-out query vectors. Pass a single
    candidate to measure fixed parameters. k is capped at the item count.
    """
    if isinstance(target_recall, bool) or not 0.0 < float(target_recall) <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall!r}")
    k = min(k, index.count)
    grid = [dict(p) for p in (candidates if candidates is not None else candidate_params(index))]
    if not grid:
        raise ValueError("no search parameters to try")
    exact = exact_topk(vectors, queries, k)  # (Q, k), computed once for every candidate
    tried: list[tuple[dict[str, int], float]] = []
    for params in grid:
        recall = recall_at_k(index, vectors, queries, k, params=params, exact=exact)
        tried.append((params, recall))
        if recall >= target_recall:
            return TuneResult(params, recall, float(target_recall), k, True, tuple(tried))
    best_params, best_recall = max(tried, key=lambda t: t[1])
    return TuneResult(best_params, best_recall, float(target_recall), k, False, tuple(tried))
