"""The validation gate: what an index must pass to be published (build job) or served (reload).

Every check raises IndexRejectedError with a reason from the closed set `RejectReason` and a
message quoting the bad values. `check_servable` (no items, dimension or metric unlike the
model's, NaN / inf stored vectors) runs on every load; `gate_build` adds the recall target and
runs before anything is published.
"""

from __future__ import annotations

import numpy as np

from index.item_index import ItemIndex, nonfinite_rows
from index.manifest import IndexRejectedError, RejectReason

SERVED_METRIC = "ip"  # the models score by inner product
FINITE_CHECK_ROWS = 65_536  # rows reconstructed at a time by check_index_finite


def check_vectors_finite(vectors: np.ndarray) -> None:
    """Refuse (reason nan) vectors (N, D) with any NaN or inf row; (reason empty) no rows."""
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[0] == 0:
        raise IndexRejectedError(f"no item vectors to index (shape {x.shape})", RejectReason.EMPTY)
    bad = nonfinite_rows(x)
    if bad.size:
        raise IndexRejectedError(
            f"{bad.size} of {x.shape[0]} item vectors contain NaN or inf, e.g. rows "
            f"{bad[:5].tolist()}",
            RejectReason.NAN,
        )


def check_index_finite(index: ItemIndex) -> bool:
    """Refuse (reason nan) an index whose stored vectors contain NaN or inf.

    Reads the stored vectors back chunk by chunk (decoded ones for PQ). Returns False when this
    index type cannot give its vectors back (nothing was checked), True otherwise.
    """
    fi = index.faiss_index
    for start in range(0, index.count, FINITE_CHECK_ROWS):
        rows = np.arange(start, min(start + FINITE_CHECK_ROWS, index.count))  # (m,)
        try:
            vecs = fi.reconstruct_batch(rows)  # (m, D)
        except RuntimeError:
            return False
        bad = nonfinite_rows(vecs)
        if bad.size:
            raise IndexRejectedError(
                f"the index holds NaN or inf vectors, e.g. rows {(rows[bad][:5]).tolist()} "
                f"(item ids {index.item_ids[rows[bad][:5]].tolist()})",
                RejectReason.NAN,
            )
    return True


def check_servable(index: ItemIndex, *, dim: int) -> None:
    """Refuse an index the model of dimension `dim` cannot serve from: empty, other dim or
    metric, NaN / inf vectors."""
    if index.count == 0:
        raise IndexRejectedError("the index holds no items", RejectReason.EMPTY)
    if index.dim != dim:
        raise IndexRejectedError(
            f"the index has dimension {index.dim} but the model's vectors have {dim}",
            RejectReason.DIMENSION,
        )
    if index.metric != SERVED_METRIC:
        raise IndexRejectedError(
            f"the index metric is {index.metric!r}; the model scores by {SERVED_METRIC!r}",
            RejectReason.METRIC,
        )
    check_index_finite(index)


def check_recall(recall: float, target: float, params: dict[str, int]) -> None:
    """Refuse (reason recall) when `recall` is below `target`."""
    if not recall >= target:  # also refuses NaN
        raise IndexRejectedError(
            f"recall@10 {recall:.4f} is below the target {target:.4f} "
            f"(search params {params or 'exhaustive'}); build a better index (more lists "
            "probed, larger efSearch, less compression) or lower --target-recall",
            RejectReason.RECALL,
        )


def gate_build(
    index: ItemIndex, *, dim: int, recall: float, target: float, params: dict[str, int]
) -> None:
    """Everything a freshly built index must pass before it is published."""
    check_servable(index, dim=dim)
    check_recall(recall, target, params)
