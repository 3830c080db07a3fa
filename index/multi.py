"""Multi-vector (MUVERA) retrieval: FDE candidates from FAISS, re-ranked by exact Chamfer.

A `MultiIndex` holds, for the same rows (item ids, surfaces) as the version's single-vector
`ItemIndex`: a FAISS inner-product index over the items' document FDEs (`index/fde.py`), the
items' multi-vectors (N, F, D) with their (N, F) mask for exact re-ranking, and the FDE config
(seed included) that queries must be encoded with. `search` encodes the query clouds, takes
`candidates` rows by FDE inner product (filters inside the FAISS search, as `ItemIndex.search`
does, so every query gets k rows whenever k are eligible), computes their exact Chamfer
similarity (`index/chamfer.py`) and keeps the top k.

Files, beside the single-vector index of the version: `fde.faiss`, `fde.json` (config, index
type, search parameters, shapes), `item_multivectors.npy` and `item_multimask.npy` (read with
`allow_pickle=False`). Tests: `tests/index/test_muvera.py`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.build import build_index
from index.chamfer import chamfer_pairs
from index.fde import FDEConfig, encode_documents, encode_queries
from index.item_index import READ_FLAGS, Eligible, ItemIndex
from index.manifest import IndexIntegrityError

FDE_INDEX_FILE = "fde.faiss"
FDE_META_FILE = "fde.json"
VECTORS_FILE = "item_multivectors.npy"
MASK_FILE = "item_multimask.npy"
MULTI_FILES = (FDE_INDEX_FILE, FDE_META_FILE, VECTORS_FILE, MASK_FILE)
DEFAULT_CANDIDATES = 200  # rows re-ranked by exact Chamfer per query


class MultiIndex:
    def __init__(
        self, fde_index: ItemIndex, vectors: np.ndarray, mask: np.ndarray, config: FDEConfig
    ) -> None:
        """`fde_index` row r is the document FDE of `vectors[r]` (F, D) under `mask[r]` (F,)."""
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        m = np.asarray(mask)
        if v.ndim != 3 or v.shape[0] != fde_index.count:
            raise ValueError(
                f"multi-vectors must be (N, F, D) with N = {fde_index.count}, got {v.shape}"
            )
        if m.dtype != np.bool_ or m.shape != v.shape[:2]:
            raise ValueError(f"mask must be bool {v.shape[:2]}, got {m.dtype} {m.shape}")
        if fde_index.dim != config.output_dim(v.shape[2]):
            raise ValueError(
                f"FDE index has dim {fde_index.dim} but config {config} gives "
                f"{config.output_dim(v.shape[2])} for vectors of dim {v.shape[2]}"
            )
        self.fde_index = fde_index
        self.vectors = v  # (N, F, D)
        self.mask = m  # (N, F)
        self.config = config
        self.dim = int(v.shape[2])  # dimension of the multi-vectors (= the model's)

    def __repr__(self) -> str:
        return (
            f"MultiIndex(count={self.fde_index.count}, facets={self.vectors.shape[1]}, "
            f"dim={self.dim}, fde_dim={self.fde_index.dim}, fde_index={self.fde_index.index_type!r})"
        )

    @property
    def count(self) -> int:
        return self.fde_index.count

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the multi-vector part."""
        return {
            "fde_config": self.config.to_dict(),
            "fde_dim": self.fde_index.dim,
            "fde_index_type": self.fde_index.index_type,
            "fde_search_params": dict(self.fde_index.search_params),
            "facets": int(self.vectors.shape[1]),
            "dim": self.dim,
        }

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        query_mask: np.ndarray | None = None,
        candidates: int = DEFAULT_CANDIDATES,
        allowed: np.ndarray | Eligible | None = None,
        params: Mapping[str, int] | None = None,
        timings: dict[str, float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by exact Chamfer among `candidates` FDE nearest rows, per query cloud.

        queries (B, K, D) with query_mask (B, K) bool -> (scores, rows) each (B, k), scores
        descending, padded with -inf / -1 when fewer than k rows are eligible. `allowed` is an
        (N,) bool mask of eligible rows (or one prepared as `Eligible`); `params` are per-call
        FAISS parameters of the FDE index.
        `timings`, when given, receives the seconds of each stage: "fde" (encode + FAISS search)
        and "rerank" (exact Chamfer of the candidates).
        """
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 3 or q.shape[2] != self.dim:
            raise ValueError(f"queries must be (B, K, {self.dim}), got shape {q.shape}")
        qm = np.ones(q.shape[:2], bool) if query_mask is None else np.asarray(query_mask)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"candidates must be a positive int, got {candidates!r}")
        k = int(k)
        started = time.perf_counter()
        fde = encode_queries(q, self.config, mask=qm)  # (B, fde_dim)
        _, cand = self.fde_index.search(fde, max(k, candidates), allowed=allowed, params=params)
        searched = time.perf_counter()
        found = cand >= 0  # (B, C)
        safe = np.where(found, cand, 0)
        docs = self.vectors[safe]  # (B, C, F, D)
        doc_mask = self.mask[safe] & found[..., None]  # (B, C, F)
        exact = chamfer_pairs(q, docs, qm, doc_mask)  # (B, C), -inf where not found
        exact[~found] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]  # (B, k)
        scores = np.take_along_axis(exact, order, axis=1)
        rows = np.where(np.isfinite(scores), np.take_along_axis(cand, order, axis=1), -1)
        if timings is not None:
            timings["fde"] = searched - started
            timings["rerank"] = time.perf_counter() - searched
        if scores.shape[1] < k:  # fewer candidates than k: cannot happen (C >= k), kept safe
            pad = k - scores.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        return scores.astype(np.float32), rows

    # ----------------------------------------------------------------- persistence
    def save(self, directory: Path) -> list[str]:
        """Write the multi-vector files into `directory` (beside the ItemIndex's); return names."""
        directory = Path(directory)
        faiss.write_index(self.fde_index.faiss_index, str(directory / FDE_INDEX_FILE))
        np.save(directory / VECTORS_FILE, self.vectors, allow_pickle=False)
        np.save(directory / MASK_FILE, self.mask, allow_pickle=False)
        meta = {**self.describe(), "count": self.count}
        (directory / FDE_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return list(MULTI_FILES)

    @classmethod
    def load(cls, directory: Path, items: ItemIndex) -> MultiIndex:
        """Read the files `save` wrote; rows are those of the version's `items` index."""
        directory = Path(directory)
        try:
            meta: dict[str, Any] = json.loads((directory / FDE_META_FILE).read_text())
            config = FDEConfig.from_dict(meta["fde_config"])
            index_type, params = meta["fde_index_type"], meta["fde_search_params"]
            faiss_index = faiss.read_index(str(directory / FDE_INDEX_FILE), READ_FLAGS)
            vectors = np.load(directory / VECTORS_FILE, allow_pickle=False)
            mask = np.load(directory / MASK_FILE, allow_pickle=False)
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
            raise IndexIntegrityError(
                f"cannot read the multi-vector index in {str(directory)!r}: {e!r}"
            ) from e
        try:
            fde_index = ItemIndex(
                faiss_index,
                items.item_ids,
                items.surfaces,
                index_type=index_type,
                search_params=params,
            )
            return cls(fde_index, vectors, mask, config)
        except ValueError as e:
            raise IndexIntegrityError(
                f"multi-vector index in {str(directory)!r} is inconsistent: {e}"
            ) from e


def build_multi_index(
    vectors: np.ndarray,
    mask: np.ndarray,
    item_ids: Any,
    surfaces: Any = None,
    *,
    config: FDEConfig,
    index_type: str = "Flat",
    seed: int = 0,
    train_size: int | None = None,
    progress: bool = False,
) -> MultiIndex:
    """Encode every item's multi-vectors (N, F, D) under `mask` (N, F) as a document FDE and
    index the FDEs with `index_type` (inner product), rows in the given order."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    fde = encode_documents(v, config, mask=np.asarray(mask, dtype=bool))  # (N, fde_dim)
    fde_index = build_index(
        fde,
        item_ids,
        surfaces,
        index_type=index_type,
        seed=seed,
        train_size=train_size,
        progress=progress,
    )
    return MultiIndex(fde_index, v, mask, config)
