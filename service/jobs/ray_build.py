"""The batch rebuild on a Ray cluster: `uniserve build-index --engine ray [--address ...]`.

Ray Data reads the catalogue (`ray.data.read_parquet`: one items.parquet or a directory of
them, in the generic format of `service/jobs/catalog.py`; without a catalogue, the model's own
vocabulary as a range of rows) and encodes it with `map_batches` on a pool of actors, each
holding the model once: one GPU per actor when the cluster has GPUs, else CPU actors sharing
all the cluster's CPUs but one, which the read tasks need (without it, a pool as large as the
cluster would wait forever for input). Every batch goes through the same functions as the
local path (`catalogue_inputs` or `vocabulary_inputs`, then `encode_item_batch`), so both
paths give the same vectors.

The driver builds one index as the encoded blocks arrive (`iter_batches`, in catalogue order):
Flat and HNSW indexes take each block as it streams out of the pipeline, so adding overlaps
with encoding; trainable types (IVF, PQ) first need their training sample, so the encoded
dataset is materialised in the Ray object store, the sample rows (the same rows the local path
samples, `training_rows`) are gathered, the index trained, and the blocks added one by one on
a second pass. The driver never holds the encoded catalogue as one array while adding; it does
keep every block, because tuning efSearch / nprobe measures recall against exact search over
all rows (`tune_gate_publish`, shared with the local path, which then gates and publishes the
same versioned, manifest-checked layout under the index root).

Workers import `service`, `models` and `index`: on a remote cluster uniserve must be installed
on every node (a local instance uses this interpreter).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from index import (
    DEFAULT_TARGET_RECALL,
    ItemIndex,
    Manifest,
    check_vectors_finite,
    faiss_gpus,
)
from index.build import new_index, train_index, training_rows
from models.corpus import Corpus
from models.device import DEVICES, select_device
from models.embedder import Embedder
from models.item_encoder import UNK_ID
from service.jobs.catalog import (
    ENCODE_BATCH,
    catalogue_inputs,
    check_catalogue_schema,
    check_unique_ids,
    encode_item_batch,
    vocabulary_inputs,
)
from service.jobs.pipeline import RECALL_QUERIES, tune_gate_publish

log = logging.getLogger(__name__)

RAY_MISSING = "the ray engine needs `pip install uniserve[ray]`"
RESOURCE_KEYS = ("CPU", "GPU", "memory", "object_store_memory")  # recorded in the manifest


class EncodeItems:
    """The `map_batches` callable: Ray makes one per actor, which loads the model once and then
    encodes batch after batch (a pyarrow table of catalogue rows, or of vocabulary rows in an
    `id` column when `vocabulary`) into item ids, surfaces, cold-start flags and vectors."""

    def __init__(self, model_dir: str, device: str, vocabulary: bool, source: str) -> None:
        self.embedder = Embedder.from_dir(Path(model_dir))
        self.device = select_device(device)
        self.embedder.model.item_encoder.to(self.device)
        self.vocabulary = vocabulary
        self.source = source

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        if self.vocabulary:
            rows = batch.column("id").to_numpy()  # (B,) vocabulary rows
            inputs = vocabulary_inputs(self.embedder, rows)
        else:
            inputs = catalogue_inputs(self.embedder, batch, self.source)
        return {
            "item_id": inputs.item_ids,  # (B,) str
            "surface": inputs.surfaces,  # (B,) str
            "cold_start": (inputs.ids == UNK_ID).numpy(),  # (B,) bool: metadata-only vector
            "vector": encode_item_batch(self.embedder, inputs, self.device),  # (B, D)
        }


def ray_build_and_publish(
    model_dir: Path,
    index_root: Path,
    *,
    index_type: str = "HNSW32",
    corpus: Corpus | None = None,
    catalog: str | Path | None = None,
    keep: int = 3,
    seed: int = 0,
    target_recall: float = DEFAULT_TARGET_RECALL,
    search_params: dict[str, int] | None = None,
    n_queries: int = RECALL_QUERIES,
    device: str = "auto",
    batch_size: int = ENCODE_BATCH,
    progress: bool = False,
    dim: int | None = None,
    address: str | None = None,
    actors: int | None = None,
    num_cpus: int | None = None,
) -> Manifest:
    """`build_and_publish` with the encoding on Ray: its arguments (less MUVERA and sharding,
    which stay local) and result (a published version, or IndexRejectedError and nothing
    published), plus the cluster.

    The cluster: the one this process is already connected to, if any (left running), else
    `address` is joined (None: a new local instance with `num_cpus` CPUs is started), and
    left at the end. `actors` is the encoding pool's size (default: one per GPU when `device`
    allows GPUs and the cluster has some, else one per cluster CPU but one; CPU actors share
    all CPUs but one, which is left for the read tasks). `batch_size` items are encoded per
    forward pass. The manifest's `extra` records `engine: "ray"`, the actor count and
    resources, the cluster's address and resources, and `encode_seconds`: until the whole
    catalogue was encoded (IVF / PQ: into the object store; Flat / HNSW: until the last block
    reached the driver, overlapping the adding, which `build_seconds` counts on its own).
    """
    ray = import_ray()
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if actors is not None and actors < 1:
        raise ValueError(f"actors must be >= 1, got {actors}")
    started = time.perf_counter()
    model_dir = Path(model_dir).resolve()
    embedder = Embedder.from_dir(model_dir)
    own_instance = not ray.is_initialized()
    if own_instance:
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False)
        else:
            ray.init(address=address)
    try:
        resources = {
            k: v for k, v in ray.cluster_resources().items() if k in RESOURCE_KEYS
        }  # e.g. {"CPU": 2.0, "memory": ...}
        cluster_gpus = int(resources.get("GPU", 0))
        if device == "cuda" and cluster_gpus == 0:
            raise ValueError("device 'cuda' was asked for but the Ray cluster has no GPU")
        on_gpu = device != "cpu" and cluster_gpus > 0
        cpus = resources.get("CPU", 0.0)
        if not on_gpu and cpus < 2:
            raise ValueError(
                "the ray engine needs a cluster with a GPU or 2+ CPUs (one reads the catalogue "
                f"while the others encode); this one has {cpus:g} CPU(s)"
            )
        pool = actors or (cluster_gpus if on_gpu else int(cpus) - 1)
        # one CPU stays free for the read tasks: a CPU pool as large as the cluster would wait
        # forever for input that nothing is left to read
        per_actor = {"num_gpus": 1} if on_gpu else {"num_cpus": min(1.0, (cpus - 1) / pool)}
        cluster = ray.get_runtime_context().gcs_address  # the address the job ran on
        dataset, n, source = _catalogue_dataset(ray, embedder, catalog, pool, batch_size)
        log.info(
            "encoding %d items of %s on %d Ray %s actor(s) (cluster %s)",
            n, source, pool, "GPU" if on_gpu else "CPU", cluster,
        )  # fmt: skip
        encoded = dataset.map_batches(
            EncodeItems,
            fn_constructor_kwargs={
                "model_dir": str(model_dir),
                "device": "cuda" if on_gpu else "cpu",
                "vocabulary": catalog is None,
                "source": source,
            },
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=pool),
            **per_actor,
        )
        gpus = 0 if device == "cpu" else faiss_gpus()
        filled = _fill_index(
            encoded, n, index_type, dim, embedder,
            seed=seed, use_gpu=gpus > 0, source=source, progress=progress,
        )  # fmt: skip
    finally:
        if own_instance:
            ray.shutdown()
    return tune_gate_publish(
        filled.index,
        filled.vectors,
        embedder,
        Path(index_root),
        corpus=corpus,
        seed=seed,
        target_recall=target_recall,
        search_params=search_params,
        n_queries=n_queries,
        dim=dim,
        keep=keep,
        started=started,
        extra={
            "model_dir": str(model_dir),
            "catalog": source,
            "cold_start_items": filled.cold_start,
            "encode_device": "cuda" if on_gpu else "cpu",
            "faiss_gpus": gpus,
            "encode_seconds": round(filled.encode_seconds, 2),
            "encode_items_per_second": round(n / max(filled.encode_seconds, 1e-9)),
            "build_seconds": round(filled.build_seconds, 2),
            "engine": "ray",
            "ray": {
                "address": cluster,
                "started_locally": own_instance and address is None,
                "actors": pool,
                "actor_resources": per_actor,
                "resources": resources,
            },
        },
    )


def import_ray() -> Any:
    """The `ray` module with Ray Data loaded; ValueError naming the extra when missing."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ValueError(RAY_MISSING) from e
    return ray


def _catalogue_dataset(
    ray: Any, embedder: Embedder, catalog: str | Path | None, pool: int, batch_size: int
) -> tuple[Any, int, str]:
    """(Ray dataset of the catalogue in catalogue order, its item count, its name): the
    parquet file(s) at `catalog`, checked like the local path's, or the vocabulary's rows
    0..N-1; in blocks of at most `batch_size` rows and at least two per actor, so the whole
    pool gets work (a read makes as few blocks as the files allow: one, for a small
    catalogue). Splitting a read waits for the whole read, which is cheap next to encoding."""
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # row r of the index = row r of the input
    context.enable_progress_bars = False  # the driver shows one bar, over items added
    if catalog is None:
        n = len(embedder.item_ids)
        blocks = _block_count(n, pool, batch_size)
        return ray.data.range(n, override_num_blocks=blocks), n, "model vocabulary"
    source = str(catalog)
    try:
        dataset = ray.data.read_parquet(source)
        schema = dataset.schema()
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"catalogue {source!r} is not a readable Parquet file: {e}") from e
    if schema is None:  # no rows and no schema
        return dataset, 0, source
    check_catalogue_schema(
        embedder, pa.schema(zip(schema.names, schema.types, strict=True)), source
    )
    n = dataset.count()
    if n == 0:
        return dataset, 0, source
    return dataset.repartition(_block_count(n, pool, batch_size)), n, source


def _block_count(n: int, pool: int, batch_size: int) -> int:
    """Blocks for n rows: batch_size rows at most, two per actor at least, one row at least."""
    return min(max(n, 1), max(2 * pool, math.ceil(n / batch_size)))


@dataclass(frozen=True)
class _Block:
    """One encoded block as it reaches the driver."""

    item_ids: np.ndarray  # (b,) str
    surfaces: np.ndarray  # (b,) str
    cold_start: int  # items of the block with metadata-only vectors
    vectors: np.ndarray  # (b, D) float32, prefix-cut to the index's width when asked


@dataclass(frozen=True)
class _Filled:
    """What `_fill_index` hands to tuning: the filled index, its rows and what it took."""

    index: ItemIndex
    vectors: np.ndarray  # (N, D) float32, the index's rows in order
    cold_start: int
    encode_seconds: float
    build_seconds: float  # training + adding, on the driver


def _fill_index(
    encoded: Any,
    n: int,
    index_type: str,
    dim: int | None,
    embedder: Embedder,
    *,
    seed: int,
    use_gpu: bool,
    source: str,
    progress: bool,
) -> _Filled:
    """Add the encoded blocks to one `index_type` index in catalogue order, after training it
    on the sampled rows when its type needs training (see the module docstring)."""
    if n == 0:
        check_vectors_finite(np.empty((0, embedder.dim), np.float32))  # refuses: empty
    index = new_index(dim or embedder.dim, index_type, n, seed=seed)
    started = time.perf_counter()
    build_seconds = encode_seconds = 0.0
    trainable = not index.is_trained
    if trainable:  # the sample first, so the catalogue is encoded into the object store
        encoded = encoded.materialize()
        encode_seconds = time.perf_counter() - started
        log.info("encoded %d items in %.1f s into the object store", n, encode_seconds)
        rows = training_rows(n, index, seed, None)  # (T,) sorted
        sample = []
        for lo, block in _blocks(encoded, dim, embedder):
            picked = rows[
                np.searchsorted(rows, lo) : np.searchsorted(rows, lo + len(block.vectors))
            ]
            sample.append(block.vectors[picked - lo])  # (t, D)
        t0 = time.perf_counter()
        train_index(index, np.concatenate(sample), index_type, use_gpu=use_gpu)
        build_seconds += time.perf_counter() - t0
        log.info("trained %s on %d sampled rows", index_type, len(rows))
    blocks: list[_Block] = []
    desc = f"adding to {index_type}" if trainable else f"encoding + adding to {index_type}"
    with tqdm(total=n, desc=desc, unit="item", disable=not progress, file=sys.stderr) as bar:
        for _, block in _blocks(encoded, dim, embedder):
            t0 = time.perf_counter()
            index.add(block.vectors)
            build_seconds += time.perf_counter() - t0
            blocks.append(block)
            bar.update(len(block.vectors))
    if not trainable:  # encoding ran while blocks were added
        encode_seconds = time.perf_counter() - started
    log.info("filled %s with %d items (%.1f s training + adding)", index_type, n, build_seconds)
    item_ids = np.concatenate([b.item_ids for b in blocks])  # (N,)
    check_unique_ids(item_ids, source)
    surfaces = np.concatenate([b.surfaces for b in blocks])  # (N,)
    return _Filled(
        index=ItemIndex(index, item_ids, surfaces, index_type=index_type),
        vectors=np.concatenate([b.vectors for b in blocks]),  # (N, D)
        cold_start=sum(b.cold_start for b in blocks),
        encode_seconds=encode_seconds,
        build_seconds=build_seconds,
    )


def _blocks(encoded: Any, dim: int | None, embedder: Embedder) -> Iterator[tuple[int, _Block]]:
    """(first row, block) for each encoded block in catalogue order, its vectors prefix-cut
    to `dim` when asked and refused (IndexRejectedError) when any is NaN or inf."""
    lo = 0
    for batch in encoded.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        vectors = np.ascontiguousarray(batch["vector"], dtype=np.float32)  # (b, D)
        if dim is not None:
            vectors = embedder.prefix(vectors, dim)  # (b, dim)
        check_vectors_finite(vectors)
        block = _Block(
            item_ids=np.asarray(batch["item_id"], dtype=object),
            surfaces=np.asarray(batch["surface"], dtype=object),
            cold_start=int(np.sum(batch["cold_start"])),
            vectors=vectors,
        )
        yield lo, block
        lo += len(vectors)
