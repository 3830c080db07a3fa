"""Item metadata -> integer feature tensors for the item encoder.

Categorical fields get a closed vocabulary learnt from the catalogue (index 0 = missing or
unseen value). Text fields are bags of whitespace tokens hashed into a fixed number of buckets
(the "hashing trick"), so a brand-new item with unseen words still gets features. The hash is
``zlib.crc32`` of ``"field:token"``: stable across processes and Python versions, unlike
``hash()``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from models.corpus import ItemTable

SURFACE_FIELD = "surface"


@dataclass
class FeatureSpec:
    """How raw metadata becomes tensors; stored in the model's ``config.json``."""

    categorical: dict[str, list[str]] = field(default_factory=dict)  # field -> values (id = pos+1)
    text: list[str] = field(default_factory=list)  # text field names
    text_buckets: int = 1 << 15  # hash buckets per model (shared by text fields); 0 = padding
    text_max_tokens: int = 32  # tokens kept per field and item

    def __post_init__(self) -> None:
        if self.text_buckets < 2:
            raise ValueError(f"text_buckets must be >= 2, got {self.text_buckets}")
        if self.text_max_tokens < 1:
            raise ValueError(f"text_max_tokens must be >= 1, got {self.text_max_tokens}")
        self._lookup = {
            name: {v: i + 1 for i, v in enumerate(vals)} for name, vals in self.categorical.items()
        }

    @property
    def fields(self) -> dict[str, str]:
        """Field name -> "categorical" | "text"."""
        return {
            **dict.fromkeys(self.categorical, "categorical"),
            **dict.fromkeys(self.text, "text"),
        }

    def to_dict(self) -> dict[str, object]:
        return {
            "categorical": self.categorical,
            "text": self.text,
            "text_buckets": self.text_buckets,
            "text_max_tokens": self.text_max_tokens,
        }

    @staticmethod
    def from_table(
        table: ItemTable, *, text_buckets: int = 1 << 15, text_max_tokens: int = 32
    ) -> FeatureSpec:
        """Vocabularies for the table's categorical fields (the surface is one of them), in
        name order: the order a saved `config.json` (written with sorted keys) gives back, so a
        field's position, and with it its embedding table, is the same after loading."""
        columns = {SURFACE_FIELD: table.surface, **table.categorical}
        categorical = {
            name: sorted({str(v) for v in col if str(v) != ""})
            for name, col in sorted(columns.items())
        }
        return FeatureSpec(categorical, sorted(table.text), text_buckets, text_max_tokens)

    def hash_tokens(self, name: str, text: str) -> list[int]:
        tokens = text.split()[: self.text_max_tokens]
        return [zlib.crc32(f"{name}:{t}".encode()) % (self.text_buckets - 1) + 1 for t in tokens]

    def encode_rows(self, rows: Sequence[Mapping[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature tensors for metadata dicts (missing field or value -> 0).

        Returns ``cat`` (B, C) int64 and ``tokens`` (B, F, L) int64, zero-padded.
        """
        unknown = sorted({k for row in rows for k in row} - set(self.fields))
        if unknown:
            raise ValueError(
                f"unknown metadata fields {unknown}; this model knows {sorted(self.fields)}"
            )
        names = list(self.categorical)
        cat = np.zeros((len(rows), len(names)), dtype=np.int64)  # (B, C)
        tokens = np.zeros(
            (len(rows), len(self.text), self.text_max_tokens), dtype=np.int64
        )  # (B, F, L)
        for i, row in enumerate(rows):
            for c, name in enumerate(names):
                cat[i, c] = self._lookup[name].get(str(row.get(name, "")), 0)
            for f, name in enumerate(self.text):
                ids = self.hash_tokens(name, str(row.get(name, "")))
                tokens[i, f, : len(ids)] = ids
        return torch.from_numpy(cat), torch.from_numpy(tokens)

    def encode_table(self, table: ItemTable) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature tensors for every catalogue row, in table order."""
        n = len(table)
        cat = np.zeros((n, len(self.categorical)), dtype=np.int64)  # (N, C)
        columns = {SURFACE_FIELD: table.surface, **table.categorical}
        for c, name in enumerate(self.categorical):
            lookup = self._lookup[name]
            cat[:, c] = [lookup.get(str(v), 0) for v in columns[name]]
        tokens = np.zeros((n, len(self.text), self.text_max_tokens), dtype=np.int64)  # (N, F, L)
        for f, name in enumerate(self.text):
            for i, text in enumerate(table.text[name]):
                ids = self.hash_tokens(name, str(text))
                tokens[i, f, : len(ids)] = ids
        return torch.from_numpy(cat), torch.from_numpy(tokens)
