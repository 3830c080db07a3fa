"""FAISS item index: build, filtered thread-safe search, recall, tuning, gate, atomic publish,
and MUVERA multi-vector retrieval (FDEs + exact Chamfer re-ranking)."""

from index.build import build_index, faiss_gpus
from index.fde import FDEConfig
from index.gate import check_servable, check_vectors_finite, gate_build
from index.item_index import ItemIndex
from index.manifest import (
    FORMAT_VERSION,
    IndexIntegrityError,
    IndexRejectedError,
    Manifest,
    NoIndexError,
    RejectReason,
    sha256_file,
)
from index.multi import MultiIndex, build_multi_index
from index.paths import VERSION_ID_PATTERN, InvalidVersionError, check_version_id
from index.publish import (
    current_version,
    list_versions,
    load_current,
    load_version,
    older_versions,
    open_multi,
    open_version,
    previous_version,
    prune_versions,
    publish,
    republish,
    rollback,
    set_current,
    verify_version,
)
from index.recall import exact_topk, recall_at_k
from index.tune import DEFAULT_TARGET_RECALL, TuneResult, tune_search_params

__all__ = [
    "DEFAULT_TARGET_RECALL",
    "FORMAT_VERSION",
    "VERSION_ID_PATTERN",
    "FDEConfig",
    "IndexIntegrityError",
    "IndexRejectedError",
    "InvalidVersionError",
    "ItemIndex",
    "Manifest",
    "MultiIndex",
    "NoIndexError",
    "RejectReason",
    "TuneResult",
    "build_index",
    "build_multi_index",
    "check_servable",
    "check_vectors_finite",
    "check_version_id",
    "current_version",
    "exact_topk",
    "faiss_gpus",
    "gate_build",
    "list_versions",
    "load_current",
    "load_version",
    "older_versions",
    "open_multi",
    "open_version",
    "previous_version",
    "prune_versions",
    "publish",
    "recall_at_k",
    "republish",
    "rollback",
    "set_current",
    "sha256_file",
    "tune_search_params",
    "verify_version",
]
