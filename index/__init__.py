"""FAISS item index: build, filtered thread-safe search, recall, manifest, atomic publish."""

from index.build import build_index
from index.item_index import ItemIndex
from index.manifest import (
    FORMAT_VERSION,
    IndexIntegrityError,
    Manifest,
    NoIndexError,
    sha256_file,
)
from index.publish import (
    current_version,
    list_versions,
    load_current,
    load_version,
    prune_versions,
    publish,
    set_current,
)
from index.recall import exact_topk, recall_at_k

__all__ = [
    "FORMAT_VERSION",
    "IndexIntegrityError",
    "ItemIndex",
    "Manifest",
    "NoIndexError",
    "build_index",
    "current_version",
    "exact_topk",
    "list_versions",
    "load_current",
    "load_version",
    "prune_versions",
    "publish",
    "recall_at_k",
    "set_current",
    "sha256_file",
]
