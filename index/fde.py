"""MUVERA Fixed Dimensional Encodings (FDEs): multi-vector similarity as one inner product.

MUVERA (Dhulipala et al., 2024, "MUVERA: Multi-Vector Retrieval via Fixed Dimensional
Encodings") maps a point cloud (a set of vectors) to one vector so that the inner product of a
query FDE and a document FDE approximates the Chamfer (MaxSim) similarity
``sum_q max_d <q, d>``. Per repetition, ``num_simhash_projections`` (k_sim) Gaussian hyperplanes
split the space into 2^k_sim partitions; each point is (optionally) projected to
``projection_dimension`` coordinates; a query sums the projected points of each partition, a
document averages them (and, with ``fill_empty_partitions``, an empty partition takes the point
whose SimHash sketch is nearest in Hamming distance). The repetitions are concatenated and an
optional count-sketch reduces the result to ``final_projection_dimension``.

The layout follows the reference design (Google's graph-mining
``sketching/point_cloud/fixed_dimensional_encoding.cc``): partition index from the sign bits via
Gray code (bit i is the i-th hyperplane, the first one the most significant), output
``[repetition][partition][coordinate]``, per-repetition randomness seeded from ``seed`` and the
repetition number, the count-sketch seeded from ``seed``. Queries and documents must be
encoded with the same config (seed included); the index manifest records it.

Departures from the reference implementation:

- Random numbers come from NumPy's ``default_rng`` (seed, repetition, stream), not
  ``std::mt19937``: encodings have the same distribution, not the same bits.
- ``projection="ams"`` is the paper's dense AMS sketch, a random ±1 matrix scaled by
  ``1/sqrt(projection_dimension)`` (inner products preserved in expectation); the reference code
  uses a sparse variant (one random ±1 per input coordinate, unscaled).
- ``fill_empty_partitions`` is ignored by ``encode_queries`` (the reference refuses it), so one
  config serves both sides.
- Everything is vectorised over a batch of point clouds: one matrix product per repetition for
  all points, partition sums by a sort and ``np.add.reduceat``, and the fill-empty nearest point
  as a segmented minimum over Hamming distances.
- Fill-empty ties (several points at the least Hamming distance) go to the point nearest over
  the disagreeing hyperplanes, not to the first point, so a document's FDE does not depend on
  the order of its vectors.

Tests: ``tests/index/test_fde.py`` (hypothesis properties against exact Chamfer similarity).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PROJECTIONS = ("identity", "ams")
MAX_SIMHASH_PROJECTIONS = 30
_POINTS_PER_BLOCK = 1 << 18  # points encoded at once (bounds the (P, 2^k_sim) distance table)
_SIMHASH, _AMS, _COUNT_SKETCH = 0, 1, 2  # random streams per (seed, repetition)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@dataclass(frozen=True)
class FDEConfig:
    """How point clouds become FDEs; queries and documents must share it (seed included)."""

    num_repetitions: int = 10  # independent partitionings, concatenated (more: less variance)
    num_simhash_projections: int = 4  # k_sim hyperplanes per repetition: 2^k_sim partitions
    projection: str = "identity"  # "identity" (keep d coordinates) or "ams" (dense AMS sketch)
    projection_dimension: int | None = None  # coordinates per partition with "ams"
    fill_empty_partitions: bool = True  # documents: empty partition <- nearest point
    final_projection_dimension: int | None = None  # count-sketch the result to this many dims
    seed: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.num_repetitions) or self.num_repetitions < 1:
            raise ValueError(f"num_repetitions must be an int >= 1, got {self.num_repetitions!r}")
        k = self.num_simhash_projections
        if not _is_int(k) or not 0 <= k <= MAX_SIMHASH_PROJECTIONS:
            raise ValueError(
                f"num_simhash_projections must be an int in 0..{MAX_SIMHASH_PROJECTIONS}, got {k!r}"
            )
        if self.projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")
        dp = self.projection_dimension
        if self.projection == "ams" and (not _is_int(dp) or dp < 1):  # type: ignore[operator]
            raise ValueError(f"projection 'ams' needs a projection_dimension >= 1, got {dp!r}")
        if self.projection == "identity" and dp is not None:
            raise ValueError(
                f"projection_dimension {dp!r} only applies to projection 'ams' "
                "(identity keeps the input dimension)"
            )
        if not isinstance(self.fill_empty_partitions, bool):
            raise ValueError(
                f"fill_empty_partitions must be a bool, got {self.fill_empty_partitions!r}"
            )
        final = self.final_projection_dimension
        if final is not None and (not _is_int(final) or final < 1):
            raise ValueError(f"final_projection_dimension must be an int >= 1, got {final!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")

    @property
    def num_partitions(self) -> int:
        return 1 << self.num_simhash_projections

    def projected_dim(self, dim: int) -> int:
        """Coordinates per partition for inputs of dimension `dim`."""
        return dim if self.projection == "identity" else int(self.projection_dimension or 0)

    def output_dim(self, dim: int) -> int:
        """FDE length for inputs of dimension `dim`:
        final_projection_dimension, else num_repetitions * 2^k_sim * projected_dim(dim)."""
        if self.final_projection_dimension is not None:
            return int(self.final_projection_dimension)
        return self.num_repetitions * self.num_partitions * self.projected_dim(dim)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FDEConfig:
        """Parse a config written by `to_dict` (a manifest's); ValueError on unknown keys."""
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"unknown FDE config fields {unknown}; known: {sorted(names)}")
        return cls(**raw)


def encode_queries(
    point_clouds: Sequence[np.ndarray] | np.ndarray,
    config: FDEConfig,
    *,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Query FDEs (B, output_dim) float32: per partition, the sum of the projected points.

    `point_clouds` is a list of (n_i, d) arrays or one (B, n, d) array; with an array, `mask`
    (B, n) bool marks the real points (default: all). An empty cloud encodes to zeros.
    """
    points, owner, starts, b = _flatten(point_clouds, mask)
    return _encode(points, owner, starts, b, config, document=False)


def encode_documents(
    point_clouds: Sequence[np.ndarray] | np.ndarray,
    config: FDEConfig,
    *,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Document FDEs (B, output_dim) float32: per partition, the mean of the projected points;
    with `config.fill_empty_partitions`, an empty partition holds the projected point whose
    sign bits are nearest (Hamming) to the partition's. Inputs as for `encode_queries`."""
    points, owner, starts, b = _flatten(point_clouds, mask)
    return _encode(points, owner, starts, b, config, document=True)


# ---------------------------------------------------------------------------- internals
def _flatten(
    point_clouds: Sequence[np.ndarray] | np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """All points (P, d) float32, their cloud (P,) int64 (non-decreasing), the first point of
    each cloud (B,) int64 (P for a trailing empty cloud), and B."""
    if isinstance(point_clouds, np.ndarray):
        x = point_clouds
        if x.ndim != 3:
            raise ValueError(f"a point-cloud array must be 3-D (B, n, d), got shape {x.shape}")
        b, n, d = x.shape
        keep = np.ones((b, n), dtype=bool) if mask is None else np.asarray(mask)
        if keep.dtype != np.bool_ or keep.shape != (b, n):
            raise ValueError(
                f"mask must be a bool array of shape {(b, n)}, got {keep.dtype} {keep.shape}"
            )
        points = np.ascontiguousarray(x[keep], dtype=np.float32)  # (P, d) in cloud order
        sizes = keep.sum(axis=1)  # (B,)
    else:
        if mask is not None:
            raise ValueError("mask applies to a (B, n, d) array, not to a list of clouds")
        clouds = [np.asarray(c, dtype=np.float32) for c in point_clouds]
        b = len(clouds)
        bad = next((i for i, c in enumerate(clouds) if c.ndim != 2), None)
        if bad is not None:
            raise ValueError(f"point cloud {bad} must be 2-D (n, d), got {clouds[bad].shape}")
        dims = {c.shape[1] for c in clouds}
        if len(dims) > 1:
            raise ValueError(f"point clouds have different dimensions {sorted(dims)}")
        d = dims.pop() if dims else 0
        sizes = np.array([c.shape[0] for c in clouds], dtype=np.int64)
        points = np.concatenate(clouds) if clouds else np.zeros((0, d), np.float32)
    if points.shape[1] < 1 and points.shape[0]:
        raise ValueError(f"points must have dimension >= 1, got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("point clouds contain NaN or inf")
    sizes = np.asarray(sizes, dtype=np.int64)
    starts = np.cumsum(sizes) - sizes  # (B,)
    owner = np.repeat(np.arange(b, dtype=np.int64), sizes)  # (P,)
    return points, owner, starts, b


def _rng(config: FDEConfig, repetition: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, repetition, stream])


def simhash_matrix(config: FDEConfig, dim: int, repetition: int) -> np.ndarray:
    """The repetition's Gaussian hyperplanes (d, k_sim) float32."""
    rng = _rng(config, repetition, _SIMHASH)
    return rng.standard_normal((dim, config.num_simhash_projections)).astype(np.float32)


def ams_matrix(config: FDEConfig, dim: int, repetition: int) -> np.ndarray:
    """The repetition's AMS sketch (d, d_proj) float32: ±1 entries / sqrt(d_proj)."""
    dp = config.projected_dim(dim)
    signs = _rng(config, repetition, _AMS).integers(0, 2, size=(dim, dp)) * 2 - 1
    return (signs / np.sqrt(dp)).astype(np.float32)


def gray_partition(bits: np.ndarray) -> np.ndarray:
    """Partition index (P,) int64 of sign bits (P, k): the number whose Gray code is the bit
    string (first bit most significant), as the reference's AppendToGrayCode builds it."""
    k = bits.shape[1]
    prefix_xor = np.bitwise_xor.accumulate(bits.astype(np.int64), axis=1)  # (P, k)
    weights = np.int64(1) << np.arange(k - 1, -1, -1, dtype=np.int64)  # (k,)
    return prefix_xor @ weights


def _segment_sums(values: np.ndarray, keys: np.ndarray, size: int) -> np.ndarray:
    """Row sums of `values` (P, m) grouped by `keys` (P,) in [0, size): (size, m) float32."""
    out = np.zeros((size, values.shape[1]), dtype=np.float32)
    if keys.size == 0:
        return out
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    uniq, first = np.unique(sorted_keys, return_index=True)
    out[uniq] = np.add.reduceat(values[order], first, axis=0)
    return out


def _encode(
    points: np.ndarray,
    owner: np.ndarray,
    starts: np.ndarray,
    b: int,
    config: FDEConfig,
    *,
    document: bool,
) -> np.ndarray:
    d = points.shape[1]
    parts = config.num_partitions
    dp = config.projected_dim(d)
    block = parts * dp
    out = np.zeros((b, config.num_repetitions * block), dtype=np.float32)  # (B, R * 2^k * dp)
    if b == 0 or d == 0:
        return _final_projection(out, config)
    sizes = np.diff(np.append(starts, points.shape[0]))  # (B,)
    # whole clouds per block, about `per_block` points each (bounds the (P, 2^k) distances)
    per_block = max(4096, min(_POINTS_PER_BLOCK, (1 << 23) // parts))
    cum = np.cumsum(sizes)  # (B,) points up to and including each cloud
    bounds = [0]
    while bounds[-1] < b:
        done = int(cum[bounds[-1] - 1]) if bounds[-1] else 0
        nxt = int(np.searchsorted(cum, done + per_block, side="right"))
        bounds.append(min(b, max(nxt, bounds[-1] + 1)))
    for lo, hi in itertools.pairwise(bounds):
        p_lo, p_hi = int(starts[lo]), int(starts[lo] + sizes[lo:hi].sum())
        out[lo:hi] = _encode_block(
            points[p_lo:p_hi], owner[p_lo:p_hi] - lo, hi - lo, config, document=document
        )
    return _final_projection(out, config)


def _encode_block(
    x: np.ndarray, owner: np.ndarray, b: int, config: FDEConfig, *, document: bool
) -> np.ndarray:
    """FDEs (b, R * 2^k * dp) of the clouds whose points are x (P, d), cloud owner (P,)."""
    p, d = x.shape
    k, parts = config.num_simhash_projections, config.num_partitions
    dp = config.projected_dim(d)
    out = np.zeros((b, config.num_repetitions, parts, dp), dtype=np.float32)
    fill = document and config.fill_empty_partitions and k > 0
    for r in range(config.num_repetitions):
        projected = x if config.projection == "identity" else x @ ams_matrix(config, d, r)
        if k > 0:
            sketch = x @ simhash_matrix(config, d, r)  # (P, k)
            part = gray_partition(sketch > 0)  # (P,)
        else:
            sketch = np.zeros((p, 0), dtype=np.float32)
            part = np.zeros(p, dtype=np.int64)
        keys = owner * parts + part  # (P,) (cloud, partition)
        sums = _segment_sums(projected, keys, b * parts).reshape(b, parts, dp)
        if document:
            counts = np.bincount(keys, minlength=b * parts).reshape(b, parts)  # (b, 2^k)
            sums /= np.maximum(counts, 1)[..., None]
            if fill:
                _fill_empty(sums, counts, sketch, owner, projected, b)
        out[:, r] = sums
    return out.reshape(b, -1)


def _fill_empty(
    sums: np.ndarray,
    counts: np.ndarray,
    sketch: np.ndarray,
    owner: np.ndarray,
    projected: np.ndarray,
    b: int,
) -> None:
    """In place: each empty partition of a non-empty cloud takes the projected point whose sign
    bits are nearest in Hamming distance to the partition's Gray code; ties go to the point
    nearest over the disagreeing hyperplanes (least sum of |<x, g_i>|), so the choice does not
    depend on the order of the points."""
    p, k = sketch.shape
    if p == 0:
        return
    parts = counts.shape[1]
    gray = np.arange(parts, dtype=np.int64)
    gray ^= gray >> 1  # (2^k,) sign pattern of each partition
    pattern = ((gray[:, None] >> np.arange(k - 1, -1, -1)) & 1).astype(np.float32)  # (2^k, k)
    bits = (sketch > 0).astype(np.float32)  # (P, k)
    margin = np.abs(sketch)  # (P, k)
    hamming = bits @ (1 - 2 * pattern).T + pattern.sum(axis=1)  # (P, 2^k) disagreeing bits
    soft = (margin * bits) @ (1 - 2 * pattern).T + margin @ pattern.T  # (P, 2^k) their margins
    key = hamming.astype(np.float64) * (float(margin.sum(axis=1).max()) + 1.0) + soft
    present = np.flatnonzero(np.bincount(owner, minlength=b))  # clouds with points
    first = np.searchsorted(owner, present)  # (b',) owner is non-decreasing
    best = np.minimum.reduceat(key, first, axis=0)  # (b', 2^k)
    at_best = key == best[np.searchsorted(present, owner)]  # (P, 2^k)
    index = np.where(at_best, np.arange(p)[:, None], p)
    point = np.minimum.reduceat(index, first, axis=0)  # (b', 2^k)
    rows, cols = np.nonzero(counts[present] == 0)
    sums[present[rows], cols] = projected[point[rows, cols]]


def _final_projection(fde: np.ndarray, config: FDEConfig) -> np.ndarray:
    """Count-sketch (B, n) -> (B, final_projection_dimension), seeded by `config.seed`."""
    final = config.final_projection_dimension
    if final is None:
        return fde
    n = fde.shape[1]
    rng = _rng(config, 0, _COUNT_SKETCH)
    target = np.asarray(rng.integers(0, final, size=n))  # (n,) output coordinate of each input
    sign = (np.asarray(rng.integers(0, 2, size=n)) * 2 - 1).astype(np.float32)  # (n,)
    out = np.zeros((fde.shape[0], final), dtype=np.float32)
    if n == 0:
        return out
    order = np.argsort(target, kind="stable")
    uniq, first = np.unique(target[order], return_index=True)
    out[:, uniq] = np.add.reduceat(fde[:, order] * sign[order], first, axis=1)
    return out
