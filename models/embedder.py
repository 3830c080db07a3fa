"""Inference facade over a loaded model: string ids and NumPy in, float32 vectors out.

This is what the service and the index builder use; it knows nothing about HTTP. All methods
run under ``torch.inference_mode`` and never mutate the model, so concurrent calls from worker
threads are safe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.artifacts import load_blend, load_model, model_fingerprint
from models.blend import Blend
from models.features import SURFACE_FIELD, FeatureSpec
from models.item_encoder import FIRST_ITEM_ID, PAD_ID, UNK_ID
from models.matryoshka import truncate_np
from models.multi import item_facet_vectors, user_interest_vectors
from models.recommender import Recommender
from models.vocab import History, Ids, Vocab

ItemSpec = tuple[str | None, str | None, Mapping[str, str]]  # (item id, surface, metadata)


class Embedder:
    def __init__(
        self,
        model: Recommender,
        spec: FeatureSpec,
        vocab: Vocab,
        config: Mapping[str, Any],
        fingerprint: str,
        blend: Blend | None = None,
    ) -> None:
        """`blend`: the co-occurrence term served with the model's scores (`models.blend`),
        when training chose one."""
        self.model = model.eval()
        self.blend = blend
        self.spec = spec
        self.vocab = vocab
        self.config = dict(config)
        self.fingerprint = fingerprint
        self.version = f"{config.get('name', 'model')}-{fingerprint[:12]}"
        self.dim = model.dim
        self.max_len = model.config.user.max_len
        self.item_ids = vocab.item_ids  # (N,)
        cat_fields = list(spec.categorical)
        surface_col = model.item_cat[FIRST_ITEM_ID:, cat_fields.index(SURFACE_FIELD)].numpy()
        surface_names = np.array(["", *spec.categorical[SURFACE_FIELD]], dtype=object)
        self.item_surfaces = surface_names[surface_col]  # (N,)
        self._item_vectors: np.ndarray | None = None
        with torch.inference_mode():  # id-table rows 0 and 1, not in the catalogue table
            self._pad_unk_vectors = model.item_vectors(torch.tensor([PAD_ID, UNK_ID])).numpy()

    @classmethod
    def from_dir(cls, directory: Path) -> Embedder:
        model, spec, vocab, config = load_model(directory)
        blend = load_blend(directory, len(vocab))
        return cls(model, spec, vocab, config, model_fingerprint(directory), blend)

    @property
    def metadata_fields(self) -> dict[str, str]:
        return self.spec.fields

    def prefix(self, vectors: np.ndarray, dim: int) -> np.ndarray:
        """The first `dim` dimensions of user or item vectors (N, D) -> (N, dim), unit norm
        again when the model scores by cosine: a Matryoshka prefix, cut the same way for the
        index build and for the queries served against it."""
        return truncate_np(vectors, dim, self.model.config.item.normalize)

    def item_rows(self, item_ids: Ids) -> np.ndarray:
        """Catalogue rows (M,) int64; -1 for ids the model does not know."""
        return self.vocab.item_rows(item_ids)

    def item_vectors(self) -> np.ndarray:
        """Vectors of every catalogue item (N, D) float32, computed once and cached."""
        if self._item_vectors is None:
            with torch.inference_mode():
                self._item_vectors = self.model.all_item_vectors().numpy().astype(np.float32)
        return self._item_vectors

    def user_vectors(self, histories: Sequence[History], batch_size: int = 256) -> np.ndarray:
        """(B, D) float32 user vectors; unknown items and surfaces map to the UNK tokens."""
        out = []
        with torch.inference_mode():
            for lo in range(0, len(histories), batch_size):
                ids, surfaces, mask = self.vocab.batch(
                    histories[lo : lo + batch_size], self.max_len
                )
                item_vecs = self._held_item_vectors(ids)
                out.append(self.model.user_vectors(ids, surfaces, mask, item_vecs).numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        vectors = out[0] if len(out) == 1 else np.concatenate(out)
        return vectors.astype(np.float32, copy=False)

    def _held_item_vectors(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Served vectors (B, T, dim) of id-table rows (B, T), read from the table of every
        catalogue item when it is already held (the service holds it to rank), else None: the
        model then encodes them. Reading rows holds the GIL far less than the item encoder, and
        gives the same vectors; the table is never built here, as it costs N x dim floats."""
        table = self._item_vectors
        if table is None:
            return None
        rows = ids.numpy()
        vecs = table.take(np.maximum(rows - FIRST_ITEM_ID, 0), axis=0)  # (B, T, dim)
        pad_or_unk = rows < FIRST_ITEM_ID
        vecs[pad_or_unk] = self._pad_unk_vectors[rows[pad_or_unk]]
        return torch.from_numpy(vecs)

    def user_multi_vectors(
        self, histories: Sequence[History], num_interests: int = 4, batch_size: int = 256
    ) -> tuple[np.ndarray, np.ndarray]:
        """Interest vectors (B, K, D) float32 and their (B, K) bool mask (see models/multi.py);
        interest 0 is the single user vector."""
        vecs, masks = [], []
        with torch.inference_mode():
            for lo in range(0, len(histories), batch_size):
                ids, surfaces, mask = self.vocab.batch(
                    histories[lo : lo + batch_size], self.max_len
                )
                v, m = user_interest_vectors(self.model, ids, surfaces, mask, num_interests)
                vecs.append(v.numpy())
                masks.append(m.numpy())
        if not vecs:
            return np.zeros((0, num_interests, self.dim), np.float32), np.zeros(
                (0, num_interests), bool
            )
        return np.concatenate(vecs).astype(np.float32), np.concatenate(masks)

    def item_multi_vectors(self, batch_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """Facet vectors of every catalogue item (N, F, D) float32 and their (N, F) bool mask:
        the served vector, the id part and one part per metadata field (see models/multi.py)."""
        n = len(self.item_ids)
        vecs, masks = [], []
        with torch.inference_mode():
            for lo in range(0, n, batch_size):
                ids = torch.arange(lo, min(n, lo + batch_size)) + FIRST_ITEM_ID
                v, m = item_facet_vectors(self.model, ids)
                vecs.append(v.numpy().astype(np.float32))
                masks.append(m.numpy())
        return np.concatenate(vecs), np.concatenate(masks)

    def embed_items(self, items: Sequence[ItemSpec]) -> np.ndarray:
        """(B, D) float32 vectors from (item id or None, surface or None, metadata).

        A known id adds its learnt id embedding; an unknown or absent id gets the metadata-only
        (cold-start) vector. Unknown metadata field names raise ValueError.
        """
        if not items:
            return np.zeros((0, self.dim), np.float32)
        rows = []
        for _, surface, features in items:
            if SURFACE_FIELD in features:
                raise ValueError(
                    f"pass the surface as 'surface', not as a feature field: {features}"
                )
            rows.append({**features, SURFACE_FIELD: surface or ""})
        cat, tokens = self.spec.encode_rows(rows)
        known = self.vocab.item_rows([i if i is not None else "" for i, _, _ in items])
        ids = torch.from_numpy(np.where(known >= 0, known + FIRST_ITEM_ID, UNK_ID))
        with torch.inference_mode():
            vecs = self.model.finish_item_vectors(self.model.item_encoder(ids, cat, tokens))
        return vecs.numpy().astype(np.float32)
