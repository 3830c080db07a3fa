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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from models.device import select_device
from models.embedder import Embedder, ItemSpec
from models.features import SURFACE_FIELD
from models.item_encoder import FIRST_ITEM_ID, UNK_ID

log = logging.getLogger(__name__)

ENCODE_BATCH = 65_536  # items encoded per forward pass


@dataclass(frozen=True)
class EncodedCatalogue:
    item_ids: np.ndarray  # (N,) str, unique
    surfaces: np.ndarray  # (N,) str, "" when unknown
    vectors: np.ndarray  # (N, D) float32, as the model serves them (unit norm by default)
    source: str  # "model vocabulary" or the parquet path
    device: str  # where the vectors were computed
    seconds: float
    cold_start: int  # items the model has never seen (metadata-only vectors)


@dataclass(frozen=True)
class ItemInputs:
    """A batch of B items as the item encoder reads them, with the names they are indexed by.

    Made by `vocabulary_inputs` (the model's own items) or `catalogue_inputs` (rows of a generic
    items table) and turned into vectors by `encode_item_batch`; the local build and the Ray
    build (`service/jobs/ray_build.py`) both go through these three, so they encode alike.
    """

    item_ids: np.ndarray  # (B,) str
    surfaces: np.ndarray  # (B,) str, "" when unknown
    ids: torch.Tensor  # (B,) int64 id-table rows, UNK_ID for items the model never saw
    cat: torch.Tensor  # (B, C) int64 categorical metadata codes
    tokens: torch.Tensor  # (B, F, L) int64 text-field tokens

    @property
    def cold_start(self) -> int:
        """Items of the batch with metadata-only vectors."""
        return int((self.ids == UNK_ID).sum())


def encode_catalogue(
    embedder: Embedder,
    catalog: Path | None = None,
    *,
    device: str = "auto",
    batch_size: int = ENCODE_BATCH,
    progress: bool = False,
) -> EncodedCatalogue:
    """Vectors of every catalogue item: the model's vocabulary, or the items of `catalog`
    (an items.parquet, or a directory of them read as one table)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    table: pa.Table | None = None
    if catalog is None:
        n = len(embedder.item_ids)
        source = "model vocabulary"
    else:
        table = _read_catalogue(embedder, Path(catalog))
        n = table.num_rows
        source = str(catalog)
    target = select_device(device)
    started = time.perf_counter()
    item_ids = np.empty(n, dtype=object)  # (N,)
    surfaces = np.empty(n, dtype=object)  # (N,)
    out = np.empty((n, embedder.dim), dtype=np.float32)  # (N, D)
    cold_start = 0
    encoder = embedder.model.item_encoder
    encoder.to(target)
    try:
        bar = tqdm(
            total=n,
            desc=f"encoding items ({target.type})",
            unit="item",
            unit_scale=True,
            disable=not progress,
            file=sys.stderr,
        )
        with bar:
            for lo in range(0, n, batch_size):
                hi = min(lo + batch_size, n)
                if table is None:
                    batch = vocabulary_inputs(embedder, np.arange(lo, hi))
                else:
                    batch = catalogue_inputs(embedder, table.slice(lo, hi - lo), source)
                out[lo:hi] = encode_item_batch(embedder, batch, target)  # (b, D)
                item_ids[lo:hi] = batch.item_ids
                surfaces[lo:hi] = batch.surfaces
                cold_start += batch.cold_start
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
        cold_start=cold_start,
    )


def vocabulary_inputs(embedder: Embedder, rows: np.ndarray) -> ItemInputs:
    """The model's own items at vocabulary rows `rows` (B,): their id-table rows and the
    metadata codes the model stores for them, i.e. exactly the vectors it serves."""
    rows = np.asarray(rows, dtype=np.int64)  # (B,)
    table_rows = torch.from_numpy(rows + FIRST_ITEM_ID)  # (B,)
    model = embedder.model
    return ItemInputs(
        item_ids=np.asarray(embedder.item_ids, dtype=object)[rows],
        surfaces=np.asarray(embedder.item_surfaces, dtype=object)[rows],
        ids=table_rows,
        cat=model.item_cat[table_rows],  # (B, C)
        tokens=model.item_tokens[table_rows],  # (B, F, L)
    )


def catalogue_inputs(embedder: Embedder, table: pa.Table, source: str) -> ItemInputs:
    """Rows of a generic items table (`item_id`, optional `surface` and metadata columns; see
    `check_catalogue_schema`): known ids keep their id-table row, unknown ones get UNK_ID and
    so a metadata-only (cold-start) vector. Missing metadata columns read as ""."""
    item_ids = _item_id_strings(table, source)  # (B,)
    n = len(item_ids)
    columns = {
        name: _strings(table.column(name)) if name in table.column_names else np.full(n, "", object)
        for name in embedder.metadata_fields  # the surface is one of the categorical fields
    }  # field -> (B,) str
    rows = [{name: str(col[i]) for name, col in columns.items()} for i in range(n)]
    cat, tokens = embedder.spec.encode_rows(rows)  # (B, C), (B, F, L)
    known = embedder.item_rows(item_ids)  # (B,) -1 for unknown
    ids = torch.from_numpy(np.where(known >= 0, known + FIRST_ITEM_ID, UNK_ID))  # (B,)
    return ItemInputs(item_ids, columns[SURFACE_FIELD], ids, cat, tokens)


def encode_item_batch(embedder: Embedder, batch: ItemInputs, device: torch.device) -> np.ndarray:
    """Served vectors (B, D) float32 of a batch, from one forward pass of the item encoder,
    which the caller has put on `device`."""
    model = embedder.model
    with torch.inference_mode():
        vecs = model.item_encoder(
            batch.ids.to(device), batch.cat.to(device), batch.tokens.to(device)
        )  # (B, D)
        return model.finish_item_vectors(vecs).float().cpu().numpy()


def check_catalogue_schema(embedder: Embedder, schema: pa.Schema, source: str) -> None:
    """Refuse a catalogue without a string or integer `item_id` column; warn about columns
    the model does not read (they are ignored)."""
    if "item_id" not in schema.names:
        raise ValueError(f"catalogue {source!r} has no item_id column; it has {schema.names}")
    id_type = schema.field("item_id").type
    if pa.types.is_dictionary(id_type):
        id_type = id_type.value_type
    if not (pa.types.is_integer(id_type) or pa.types.is_string(id_type)):
        raise ValueError(
            f"catalogue {source!r}: item_id has type {id_type}, expected string or int"
        )
    ignored = sorted(set(schema.names) - set(embedder.metadata_fields) - {"item_id"})
    if ignored:
        log.warning("catalogue columns the model does not read are ignored: %s", ignored)


def check_unique_ids(item_ids: np.ndarray, source: str) -> None:
    """Refuse a catalogue that names an item twice (the index maps each id to one row)."""
    if len(set(item_ids.tolist())) != len(item_ids):
        raise ValueError(f"catalogue {source!r}: item_id values are not unique")


def _read_catalogue(embedder: Embedder, path: Path) -> pa.Table:
    """A generic items.parquet (or a directory of them), its ids checked: present, string or
    int, no nulls, unique."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"catalogue {str(path)!r} is not a readable Parquet file: {e}") from e
    check_catalogue_schema(embedder, table.schema, str(path))
    check_unique_ids(_item_id_strings(table, str(path)), str(path))
    return table


def _item_id_strings(table: pa.Table, source: str) -> np.ndarray:
    """The item_id column as an (N,) object array of str; ValueError on nulls."""
    id_col = table.column("item_id")
    if id_col.null_count:
        raise ValueError(f"catalogue {source!r}: item_id has {id_col.null_count} null(s)")
    return _strings(id_col)


def _strings(col: pa.ChunkedArray) -> np.ndarray:
    """A column as an (N,) object array of str, nulls as ""."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return pc.fill_null(col.cast(pa.string()), "").to_numpy(zero_copy_only=False).astype(object)


def items_table(items: Sequence[ItemSpec]) -> pa.Table:
    """Items given as (item id, surface, metadata) as a table of the generic catalogue format
    (`item_id`, `surface`, one column per metadata field; missing values null)."""
    names = sorted({name for _, _, features in items for name in features})
    columns: dict[str, list[str | None]] = {
        "item_id": [str(item_id) for item_id, _, _ in items],
        SURFACE_FIELD: [surface for _, surface, _ in items],
        **{name: [features.get(name) for _, _, features in items] for name in names},
    }
    return pa.table({name: pa.array(values, pa.string()) for name, values in columns.items()})


def encode_items(embedder: Embedder, items: Sequence[ItemSpec]) -> np.ndarray:
    """Served vectors (B, D) float32 of items given as (item id, surface, metadata), encoded
    exactly as `build-index --catalog` encodes a catalogue's rows (`catalogue_inputs`, then
    `encode_item_batch` on the CPU): a trained id keeps its id embedding, an unknown one gets a
    metadata-only (cold-start) vector; fields the model does not read are ignored. What the
    live catalogue (`service.core.delta`) and the rebuild's change fold-in use."""
    if not items:
        return np.zeros((0, embedder.dim), np.float32)
    batch = catalogue_inputs(embedder, items_table(items), "upserted items")
    return encode_item_batch(embedder, batch, torch.device("cpu"))
