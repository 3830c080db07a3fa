"""Build an ItemIndex from item vectors with faiss.index_factory (inner product).

The GPU path is chosen at run time: when the installed faiss reports GPUs, IVF k-means assigns
points with a GPU flat index (faiss's `clustering_index`), and the index itself stays a CPU index,
ready to save and serve. Without GPUs (faiss-cpu, or none visible) everything runs on the CPU.
HNSW graphs are always built on the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from index.item_index import (
    ItemIndex,
    as_float_matrix,
    check_item_ids,
    check_metric,
    check_surfaces,
    index_kind,
    unwrap_index,
)

EF_CONSTRUCTION = 200  # HNSW graph quality at build time (faiss default is 40)
MAX_TRAIN_POINTS_PER_CENTROID = 256  # cap on the training sample, as faiss k-means does
MIN_POINTS_PER_LIST = 39  # below this faiss k-means warns; centroids would be noise
ADD_CHUNK = 65536  # vectors per index.add call (progress granularity)
PQ_CENTROIDS = 256  # 8-bit product quantizer codebooks: 256 centroids per sub-quantizer

log = logging.getLogger(__name__)


def faiss_gpus() -> int:
    """GPUs the installed faiss can use (0 for faiss-cpu builds or when none is visible)."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    if get_num_gpus is None:
        return 0
    try:
        return int(get_num_gpus())
    except RuntimeError:
        return 0


def build_index(
    vectors: np.ndarray,
    item_ids: Sequence[str] | np.ndarray,
    surfaces: Sequence[str] | np.ndarray | None = None,
    *,
    index_type: str = "HNSW32",
    metric: str = "ip",
    seed: int = 0,
    search_params: dict[str, int] | None = None,
    train_size: int | None = None,
    use_gpu: bool | None = None,
    progress: bool = False,
) -> ItemIndex:
    """Build an inner-product index of `index_type` over `vectors` (N, D), row r = item_ids[r].

    Trainable indexes (IVF, PQ) are trained on a sample of at most `train_size` rows drawn with
    `seed` (default: 256 points per centroid, capped at N); k-means seeds are set from `seed` too,
    so IVF/PQ builds are reproducible. `search_params` default to efSearch 128 for HNSW and
    nprobe min(nlist, 32) for IVF. `use_gpu` None means: when faiss reports GPUs. `progress`
    shows a progress bar while vectors are added (minutes for HNSW over millions of items).
    """
    check_metric(metric)
    x = _check_vectors(vectors)  # (N, D)
    n, dim = x.shape
    ids = check_item_ids(item_ids, n)  # (N,)
    surf = check_surfaces(surfaces, n)  # (N,)
    index = new_index(dim, index_type, n, seed=seed)
    if not index.is_trained:
        rows = training_rows(n, index, seed, train_size)  # (T,)
        train_index(index, x if len(rows) == n else x[rows], index_type, use_gpu=use_gpu)
    # added in chunks (same index as one add) so a long HNSW build can report progress
    with tqdm(total=n, desc=f"adding to {index_type}", unit="item", disable=not progress) as bar:
        for lo in range(0, n, ADD_CHUNK):
            index.add(x[lo : lo + ADD_CHUNK])
            bar.update(min(ADD_CHUNK, n - lo))
    return ItemIndex(
        index, ids, surf, index_type=index_type, metric=metric, search_params=search_params
    )


def new_index(dim: int, index_type: str, n: int, *, seed: int = 0) -> faiss.Index:
    """An empty inner-product `index_type` index of dimension `dim` that will hold `n` vectors,
    its k-means seeded from `seed`; ValueError for a type faiss cannot make or an IVF with
    fewer than MIN_POINTS_PER_LIST vectors per list. Trainable unless `is_trained` already."""
    try:
        index = faiss.index_factory(dim, index_type, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"faiss cannot make index_type {index_type!r} for dim {dim}: {e}") from e
    kind = index_kind(index)
    if kind == "hnsw":
        hnsw_index, _ = unwrap_index(index)
        hnsw_index.hnsw.efConstruction = EF_CONSTRUCTION
    if kind == "ivf":
        nlist = faiss.extract_index_ivf(index).nlist
        if n < MIN_POINTS_PER_LIST * nlist:
            raise ValueError(
                f"index_type {index_type!r} has {nlist} IVF lists but only {n} vectors; IVF "
                f"needs {MIN_POINTS_PER_LIST}+ vectors per list, so use at most "
                f"{n // MIN_POINTS_PER_LIST} lists (or Flat / HNSW for so few items)"
            )
    _configure_training(index, seed)
    return index


def training_rows(n: int, index: faiss.Index, seed: int, train_size: int | None) -> np.ndarray:
    """Sorted rows (T,) of the n vectors an untrained `index` is trained on: a sample of at most
    `train_size` drawn with `seed` (default 256 points per centroid), or all n when that is
    fewer. The same rows whether the vectors are in one array or arrive in blocks."""
    if train_size is None:
        ivf = faiss.try_extract_index_ivf(index)
        centroids = max(PQ_CENTROIDS, ivf.nlist if ivf is not None else 0)
        train_size = MAX_TRAIN_POINTS_PER_CENTROID * centroids
    if isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1:
        raise ValueError(f"train_size must be a positive int, got {train_size!r}")
    if train_size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=train_size, replace=False))


def train_index(
    index: faiss.Index, sample: np.ndarray, index_type: str, *, use_gpu: bool | None = None
) -> None:
    """Train `index` on `sample` (T, D) float32, IVF k-means on the GPUs when `use_gpu` (None:
    when faiss reports any); ValueError when faiss refuses."""
    gpu_assigner = _gpu_clustering_index(index, use_gpu)  # kept alive while training
    try:
        index.train(sample)
    except RuntimeError as e:
        raise ValueError(f"training {index_type!r} on {sample.shape[0]} vectors failed: {e}") from e
    finally:
        if gpu_assigner is not None:
            ivf: Any = faiss.extract_index_ivf(index)
            ivf.clustering_index = None  # the index is saved and served without it


def _check_vectors(vectors: np.ndarray) -> np.ndarray:
    """Return `vectors` as a C-contiguous (N, D) float32 array; ValueError when unusable."""
    return as_float_matrix(vectors, "vectors", "(N, D)")


def _configure_training(index: faiss.Index, seed: int) -> None:
    """Seed every k-means training runs (IVF coarse quantizer, PQ codebooks).

    Also turns off polysemous training of PQ codes: it only serves Hamming-distance
    pre-filtering, which this service does not use, and it dominates PQ training time.
    """
    ivf: Any = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
        ivf = faiss.downcast_index(ivf)
    for owner in (ivf, faiss.downcast_index(index)):
        pq = getattr(owner, "pq", None)
        if pq is not None:
            pq.cp.seed = seed
        if hasattr(owner, "do_polysemous_training"):
            owner.do_polysemous_training = False


def _gpu_clustering_index(index: faiss.Index, use_gpu: bool | None) -> faiss.Index | None:
    """Put IVF k-means assignment on the GPUs when asked to (None: when faiss reports any).

    Returns the GPU flat index given to faiss as `clustering_index`, or None (CPU k-means).
    """
    ivf: Any = faiss.try_extract_index_ivf(index)
    gpus = faiss_gpus()
    if ivf is None or use_gpu is False or (use_gpu is None and gpus == 0):
        return None
    if gpus == 0:
        raise ValueError("use_gpu=True but the installed faiss reports no GPU")
    flat = faiss.IndexFlat(ivf.d, ivf.metric_type)  # same metric as the coarse quantizer
    gpu_index = faiss.index_cpu_to_all_gpus(flat)
    ivf.clustering_index = gpu_index
    log.info("IVF k-means on %d GPU(s); the index stays on the CPU for serving", gpus)
    return gpu_index
