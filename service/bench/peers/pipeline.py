"""The one encode + search every compared service runs, so only the serving layer differs.

`Pipeline.load` opens the benchmark's model and the index its `CURRENT` names, and holds the
table of every catalogue item's vector, as uniserve's engine holds it (the user encoder then
reads history items from it instead of re-encoding them). The naive service, the PyTriton, Ray
Serve and LitServe peers and the in-process limit all call `encode_and_search` (or its two
halves); `history_of` and `answer` are the request and response shapes they share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

History = tuple[list[str], list[str]]  # (item ids, surfaces), oldest first


def history_of(events: Sequence[Mapping[str, Any]]) -> History:
    """A retrieve body's `events` as the encoder's history; a missing surface is ""."""
    return [str(e["item_id"]) for e in events], [e.get("surface") or "" for e in events]


def answer(ids: Iterable[str], scores: Iterable[float]) -> dict[str, Any]:
    """The response every JSON peer sends: `{"items": [{item_id, score}]}`, padding dropped."""
    return {
        "items": [{"item_id": i, "score": float(s)} for i, s in zip(ids, scores, strict=True) if i]
    }


@dataclass
class Pipeline:
    embedder: Any  # models.embedder.Embedder
    index: Any  # index.ItemIndex
    index_dim: int
    threads: int

    @classmethod
    def load(cls, data_dir: Path, threads: int) -> Pipeline:
        """The model under `data_dir/model` and the current index under `data_dir/indexes`,
        verified; torch and FAISS limited to `threads` threads."""
        import faiss
        import torch

        from index import load_current
        from models.embedder import Embedder

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
        index, manifest = load_current(Path(data_dir) / "indexes")
        embedder = Embedder.from_dir(Path(data_dir) / "model")
        embedder.item_vectors()  # held, as the service's engine holds it
        return cls(embedder, index, manifest.dim, threads)

    def encode(self, histories: Sequence[History]) -> np.ndarray:
        """(B, index_dim) float32 user vectors in the index's space, one forward pass."""
        vectors = self.embedder.user_vectors(histories, batch_size=max(1, len(histories)))
        if self.index_dim == self.embedder.dim:
            return vectors  # (B, D)
        return self.embedder.prefix(vectors, self.index_dim)  # (B, index_dim)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (B, k) str, "" where fewer than k items exist; scores (B, k) float32)."""
        import faiss

        faiss.omp_set_num_threads(self.threads)  # OpenMP's count is per calling thread
        scores, rows = self.index.search(vectors, k)  # (B, k), (B, k)
        ids = np.where(rows >= 0, self.index.item_ids[np.maximum(rows, 0)], "")  # (B, k)
        return ids, scores

    def encode_and_search(
        self, histories: Sequence[History], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, scores) of each history: one encoder forward, one FAISS search."""
        return self.search(self.encode(histories), k)
