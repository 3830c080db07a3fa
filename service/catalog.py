"""The item catalogue a build job indexes, encoded in batches on the best device at hand.

The catalogue is either the model's own vocabulary (its `items.parquet`, the vectors the service
ranks with) or an `items.parquet` of the generic format: `item_id`, optional `surface`, and
metadata columns. Items the model has never seen get metadata-only (cold-start) vectors; columns
the model does not read are ignored with a warning. Encoding runs on CUDA when torch sees a GPU,
else on the CPU; the device is chosen at run time.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from models.embedder import Embedder
from models.features import SURFACE_FIELD
from models.item_encoder import FIRST_ITEM_ID, UNK_ID

log = logging.getLogger(__name__)

ENCODE_BATCH = 65_536  # items encoded per forward pass
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class EncodedCatalogue:
    item_ids: np.ndarray  # (N,) str, unique
    surfaces: np.ndarray  # (N,) str, "" when unknown
    vectors: np.ndarray  # (N, D) float32, as the model serves them (unit norm by default)
    source: str  # "model vocabulary" or the parquet path
    device: str  # where the vectors were computed
    seconds: float
    cold_start: int  # items the model has never seen (metadata-only vectors)


def select_device(device: str = "auto") -> torch.device:
    """The torch device to encode on: "auto" is CUDA when torch sees a GPU, else the CPU;
    "cuda" fails without one."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU")
    return torch.device(device)


def encode_catalogue(
    embedder: Embedder,
    catalog: Path | None = None,
    *,
    device: str = "auto",
    batch_size: int = ENCODE_BATCH,
    progress: bool = False,
) -> EncodedCatalogue:
    """Vectors of every catalogue item: the model's vocabulary, or the items of `catalog`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model = embedder.model
    if catalog is None:
        item_ids = np.asarray(embedder.item_ids, dtype=object)  # (N,)
        surfaces = np.asarray(embedder.item_surfaces, dtype=object)  # (N,)
        ids = torch.arange(FIRST_ITEM_ID, len(item_ids) + FIRST_ITEM_ID)  # (N,) id-table rows
        cat = model.item_cat[FIRST_ITEM_ID:]  # (N, C)
        tokens = model.item_tokens[FIRST_ITEM_ID:]  # (N, F, L)
        source = "model vocabulary"
    else:
        item_ids, surfaces, cat, tokens = _read_catalogue(embedder, Path(catalog))
        rows = embedder.item_rows(item_ids)  # (N,) -1 for unknown
        ids = torch.from_numpy(np.where(rows >= 0, rows + FIRST_ITEM_ID, UNK_ID))  # (N,)
        source = str(catalog)
    target = select_device(device)
    started = time.perf_counter()
    out = np.empty((len(item_ids), embedder.dim), dtype=np.float32)  # (N, D)
    encoder = model.item_encoder
    encoder.to(target)
    try:
        with torch.inference_mode():
            bar = tqdm(
                total=len(item_ids),
                desc=f"encoding items ({target.type})",
                unit="item",
                unit_scale=True,
                disable=not progress,
                file=sys.stderr,
            )
            with bar:
                for lo in range(0, len(item_ids), batch_size):
                    hi = min(lo + batch_size, len(item_ids))
                    vecs = encoder(
                        ids[lo:hi].to(target), cat[lo:hi].to(target), tokens[lo:hi].to(target)
                    )  # (b, D)
                    out[lo:hi] = model.finish_item_vectors(vecs).float().cpu().numpy()
                    bar.update(hi - lo)
    finally:
        encoder.to("cpu")  # the embedder keeps serving user vectors on the CPU
    return EncodedCatalogue(
        item_ids=item_ids,
        surfaces=surfaces,
        vectors=out,
        source=source,
        device=target.type,
        seconds=time.perf_counter() - started,
        cold_start=0 if catalog is None else int((ids == UNK_ID).sum()),
    )


def _read_catalogue(
    embedder: Embedder, path: Path
) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    """(item ids (N,), surfaces (N,), cat (N, C), tokens (N, F, L)) of a generic items.parquet."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"catalogue {str(path)!r} is not a readable Parquet file: {e}") from e
    if "item_id" not in table.column_names:
        raise ValueError(
            f"catalogue {str(path)!r} has no item_id column; it has {table.column_names}"
        )
    id_col = table.column("item_id")
    if pa.types.is_dictionary(id_col.type):
        id_col = id_col.cast(id_col.type.value_type)
    if not (pa.types.is_integer(id_col.type) or pa.types.is_string(id_col.type)):
        raise ValueError(
            f"catalogue {str(path)!r}: item_id has type {id_col.type}, expected string or int"
        )
    if id_col.null_count:
        raise ValueError(f"catalogue {str(path)!r}: item_id has {id_col.null_count} null(s)")
    item_ids = _strings(id_col)  # (N,)
    if len(set(item_ids.tolist())) != len(item_ids):
        raise ValueError(f"catalogue {str(path)!r}: item_id values are not unique")
    n = len(item_ids)
    read = set(embedder.metadata_fields)  # the surface is one of the model's categorical fields
    ignored = sorted(set(table.column_names) - read - {"item_id"})
    if ignored:
        log.warning("catalogue columns the model does not read are ignored: %s", ignored)
    columns = {
        name: _strings(table.column(name)) if name in table.column_names else np.full(n, "", object)
        for name in read
    }  # field -> (N,) str
    rows = [{name: str(col[i]) for name, col in columns.items()} for i in range(n)]
    cat, tokens = embedder.spec.encode_rows(rows)  # (N, C), (N, F, L)
    return item_ids, columns[SURFACE_FIELD], cat, tokens


def _strings(col: pa.ChunkedArray) -> np.ndarray:
    """A column as an (N,) object array of str, nulls as ""."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return pc.fill_null(col.cast(pa.string()), "").to_numpy(zero_copy_only=False).astype(object)
