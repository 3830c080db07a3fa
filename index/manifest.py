"""The manifest of a published index version, file hashing, and the index errors.

`manifest.json` is written last into a version directory; it describes the version (model
fingerprint, dimension, metric, item count, index type and search parameters, measured recall)
and carries the sha256 of every other file, so a loader can refuse a tampered or partial copy.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

FORMAT_VERSION = 1
_CHUNK_BYTES = 1 << 20  # 1 MiB per read when hashing


class RejectReason(StrEnum):
    """Why an index version was refused: a closed set, used as a metric label."""

    NOT_FOUND = "not_found"  # no CURRENT, or it names a version that does not exist
    INVALID_VERSION = "invalid_version"  # not a version id, or a path leaving the index root
    IO = "io"  # a file could not be read (permissions, disk)
    MISSING_MANIFEST = "missing_manifest"  # files but no manifest.json: an unfinished version
    INTEGRITY = "integrity"  # sha256 mismatch, missing file, malformed manifest, files disagree
    EMPTY = "empty"  # no items, or an empty version directory
    DIMENSION = "dimension"  # vector dimension differs from the model's
    METRIC = "metric"  # not the inner product the model scores with
    NAN = "nan"  # NaN or inf vectors
    RECALL = "recall"  # recall@10 below the target (build-time gate)
    MODEL_MISMATCH = "model_mismatch"  # built for another model, and that model is not at hand
    INTERNAL = "internal"  # an unexpected error while loading (a bug: see the log)


class IndexRejectedError(Exception):
    """An index version is unusable; `reason` says why (one of RejectReason)."""

    def __init__(self, message: str, reason: RejectReason = RejectReason.INTEGRITY) -> None:
        super().__init__(message)
        self.reason = RejectReason(reason)


class IndexIntegrityError(IndexRejectedError):
    """An index version is damaged: a file is missing or tampered with, or its manifest is bad."""


class NoIndexError(Exception):
    """There is no index to load: no CURRENT pointer, or the named version does not exist."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of the file at `path`, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Manifest:
    """Self-description of one published index version (serialised as `manifest.json`)."""

    format_version: int
    version: str  # the version directory name, e.g. "20261123T151100123456Z-3f9a1c"
    model_fingerprint: str  # hash of the model artifact whose item encoder produced the vectors
    model_version: str
    dim: int
    metric: str  # "ip"
    count: int  # number of items (rows)
    index_type: str  # faiss.index_factory string
    search_params: dict[str, int]  # default per-call search parameters
    recall_at_10: float | None  # measured against exact search at build time, if measured
    files: dict[str, str]  # file name -> sha256 hex, every file of the version but the manifest
    created_at: str  # ISO-8601 UTC, e.g. "2026-11-23T15:11:00Z"
    extra: dict[str, Any] = field(default_factory=dict)  # free-form: dataset, build seconds...

    def to_json(self) -> str:
        """Serialise to indented, key-sorted JSON text."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse and validate manifest JSON; raise IndexIntegrityError on any defect."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise IndexIntegrityError(f"manifest is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise IndexIntegrityError(f"manifest must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        missing = sorted(names - data.keys())
        unknown = sorted(data.keys() - names)
        if missing or unknown:
            raise IndexIntegrityError(
                f"manifest fields do not match format: missing {missing}, unknown {unknown}"
            )
        if data["format_version"] != FORMAT_VERSION:
            raise IndexIntegrityError(
                f"manifest format_version {data['format_version']!r} is not supported "
                f"(this code reads {FORMAT_VERSION})"
            )
        _check_types(data)
        return cls(**data)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_types(data: dict[str, Any]) -> None:
    """Raise IndexIntegrityError naming the first field whose JSON type is wrong."""
    checks: dict[str, Any] = {
        "format_version": _is_int,
        "version": lambda v: isinstance(v, str) and v != "",
        "model_fingerprint": lambda v: isinstance(v, str),
        "model_version": lambda v: isinstance(v, str),
        "dim": lambda v: _is_int(v) and v > 0,
        "metric": lambda v: isinstance(v, str),
        "count": lambda v: _is_int(v) and v >= 0,  # 0 parses, so loaders can say "empty"
        "index_type": lambda v: isinstance(v, str) and v != "",
        "search_params": lambda v: (
            isinstance(v, dict) and all(isinstance(k, str) and _is_int(x) for k, x in v.items())
        ),
        "recall_at_10": lambda v: (
            v is None
            or (isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v <= 1.0)
        ),
        "files": lambda v: (
            isinstance(v, dict)
            and all(
                isinstance(k, str) and isinstance(x, str) and len(x) == 64 for k, x in v.items()
            )
        ),
        "created_at": lambda v: isinstance(v, str),
        "extra": lambda v: isinstance(v, dict),
    }
    for name, ok in checks.items():
        if not ok(data[name]):
            raise IndexIntegrityError(f"manifest field {name!r} has a bad value: {data[name]!r}")
