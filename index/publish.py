"""Atomic publication of index versions under an index root, and loading them back.

Layout: `<root>/versions/<version>/{index.faiss, items.parquet, index_meta.json, manifest.json}`
and `<root>/CURRENT`, a text file naming the live version. A version is assembled in a
`versions/.tmp-*` directory, every file fsynced, `manifest.json` written last, then the directory
is renamed into place and CURRENT replaced atomically. A published version is never modified.

Loading verifies before it reads: `verify_version` parses the manifest and checks the sha256 of
every file it lists; only then does `open_version` hand the files to `faiss.read_index`. A
crashed publish leaves a `.tmp-*` directory (never listed as a version) or a complete version
that CURRENT does not name; either way CURRENT keeps naming the last complete version.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from index.item_index import INDEX_FILE, ITEMS_FILE, META_FILE, ItemIndex
from index.manifest import (
    FORMAT_VERSION,
    IndexIntegrityError,
    IndexRejectedError,
    Manifest,
    NoIndexError,
    RejectReason,
    sha256_file,
)
from index.multi import MULTI_FILES, MultiIndex
from index.paths import (
    MAX_VERSION_CHARS,
    VERSIONS_DIR,
    InvalidVersionError,
    check_version_id,
    inside_version,
    version_dir,
)

CURRENT_FILE = "CURRENT"
MANIFEST_FILE = "manifest.json"
TMP_PREFIX = ".tmp-"
STALE_TMP_SECONDS = 3600  # a .tmp-* dir older than this is a crashed publish: removed on prune
INDEX_FILES = (INDEX_FILE, ITEMS_FILE, META_FILE)  # what open_version reads: all must be hashed


def publish(
    index: ItemIndex,
    root: Path,
    *,
    model_fingerprint: str,
    model_version: str,
    recall_at_10: float | None = None,
    keep: int = 3,
    extra: dict[str, Any] | None = None,
    multi: MultiIndex | None = None,
) -> Manifest:
    """Write `index` as a new version under `root`, make it CURRENT, prune old versions.

    With `multi` (a MUVERA index over the same rows), its files are written, hashed and
    described (FDE config and seed) under the manifest's `extra["muvera"]` too.
    Returns the new version's manifest. `keep` newest versions survive pruning, plus the live one.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    root = Path(root)
    versions = root / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    version = f"{now:%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"
    tmp = versions / f"{TMP_PREFIX}{version}"
    tmp.mkdir()
    try:
        names = index.save(tmp)
        if multi is not None:
            if multi.count != index.count:
                raise ValueError(f"multi-vector index has {multi.count} rows, index {index.count}")
            names += multi.save(tmp)
            extra = {
                **(extra or {}),
                "muvera": {**(extra or {}).get("muvera", {}), **multi.describe()},
            }
        files = {}
        for name in names:
            _fsync_file(tmp / name)
            files[name] = sha256_file(tmp / name)
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            version=version,
            model_fingerprint=model_fingerprint,
            model_version=model_version,
            dim=index.dim,
            metric=index.metric,
            count=index.count,
            index_type=index.index_type,
            search_params=dict(index.search_params),
            recall_at_10=None if recall_at_10 is None else float(recall_at_10),
            files=files,
            created_at=now.isoformat(timespec="seconds").replace("+00:00", "Z"),
            extra=dict(extra or {}),
        )
        _write_durably(tmp / MANIFEST_FILE, manifest.to_json())
        fsync_dir(tmp)
        os.rename(tmp, versions / version)
        fsync_dir(versions)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    set_current(root, version)
    prune_versions(root, keep=keep)
    return manifest


def current_version(root: Path) -> str | None:
    """The version CURRENT names, or None when there is no CURRENT.

    CURRENT must be a regular file (not a symlink, FIFO or device) naming a valid version id;
    anything else raises InvalidVersionError, and nothing it names is opened.
    """
    path = Path(root) / CURRENT_FILE
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise InvalidVersionError(f"{str(path)!r} is not a regular file (a symlink?)")
        with open(path, "rb") as f:
            raw = f.read(MAX_VERSION_CHARS + 2)  # the id and a newline; more is refused below
    except FileNotFoundError:
        return None
    name = raw.decode("utf-8", errors="replace").strip()
    return check_version_id(name) if name else None


def list_versions(root: Path) -> list[str]:
    """Complete versions (those with a manifest.json) under `root`, oldest first."""
    versions = Path(root) / VERSIONS_DIR
    if not versions.is_dir():
        return []
    return sorted(
        p.name
        for p in versions.iterdir()
        if not p.name.startswith(".") and (p / MANIFEST_FILE).is_file()
    )


def verify_version(root: Path, version: str) -> Manifest:
    """Parse `version`'s manifest and check every file's sha256; read nothing else.

    Raises NoIndexError when the version does not exist, IndexRejectedError (with a reason)
    when it is empty, unfinished, damaged or unreadable.
    """
    directory = _version_dir(root, version)
    manifest_path = inside_version(directory, MANIFEST_FILE)
    try:
        if not manifest_path.is_file():
            if not any(directory.iterdir()):
                raise IndexIntegrityError(
                    f"version {version!r} is an empty directory", RejectReason.EMPTY
                )
            raise IndexIntegrityError(
                f"version {version!r} has no {MANIFEST_FILE} (an unfinished publish?)",
                RejectReason.MISSING_MANIFEST,
            )
        manifest = Manifest.from_json(manifest_path.read_text())
        if manifest.version != version:
            raise IndexIntegrityError(f"manifest of {version!r} names version {manifest.version!r}")
        if manifest.count == 0:
            raise IndexIntegrityError(f"version {version!r} holds no items", RejectReason.EMPTY)
        for name, expected in sorted(manifest.files.items()):
            if Path(name).name != name:
                raise IndexIntegrityError(f"file {name!r} of version {version!r} is not a name")
            path = inside_version(directory, name)
            if not path.is_file():
                raise IndexIntegrityError(f"file {name!r} of version {version!r} is missing")
            actual = sha256_file(path)
            if actual != expected:
                raise IndexIntegrityError(
                    f"file {name!r} of version {version!r} has sha256 {actual}, "
                    f"manifest says {expected}"
                )
    except OSError as e:
        raise IndexRejectedError(f"cannot read version {version!r}: {e}", RejectReason.IO) from e
    return manifest


def open_version(root: Path, manifest: Manifest) -> ItemIndex:
    """Read the index of a version whose files `verify_version` has checked.

    Raises IndexIntegrityError when the files disagree with each other or with the manifest.
    """
    directory = _version_dir(root, manifest.version)
    unlisted = sorted(set(INDEX_FILES) - set(manifest.files))
    if unlisted:  # a file the manifest does not hash is never handed to faiss or parquet
        raise IndexIntegrityError(
            f"manifest of {manifest.version!r} has no sha256 for {unlisted}; refusing to read them"
        )
    index = ItemIndex.load(directory)
    found = (index.dim, index.count, index.metric, index.index_type)
    stated = (manifest.dim, manifest.count, manifest.metric, manifest.index_type)
    if found != stated:
        raise IndexIntegrityError(
            f"version {manifest.version!r} holds (dim, count, metric, type) {found}, "
            f"manifest says {stated}"
        )
    return index


def open_multi(root: Path, manifest: Manifest, index: ItemIndex) -> MultiIndex | None:
    """The version's MUVERA index (rows those of `index`), or None when it was built without
    multi-vectors. Files are read only when the manifest hashes every one of them."""
    present = [name for name in MULTI_FILES if name in manifest.files]
    if not present and "muvera" not in manifest.extra:
        return None
    unlisted = sorted(set(MULTI_FILES) - set(manifest.files))
    if unlisted:
        raise IndexIntegrityError(
            f"manifest of {manifest.version!r} has no sha256 for {unlisted}; refusing to read them"
        )
    return MultiIndex.load(_version_dir(root, manifest.version), index)


def load_version(root: Path, version: str, *, verify: bool = True) -> tuple[ItemIndex, Manifest]:
    """Load one version; with `verify`, check every file's sha256 against the manifest first."""
    if verify:
        manifest = verify_version(root, version)
    else:
        path = _version_dir(root, version) / MANIFEST_FILE
        if not path.is_file():
            raise IndexIntegrityError(
                f"version {version!r} has no {MANIFEST_FILE}", RejectReason.MISSING_MANIFEST
            )
        manifest = Manifest.from_json(path.read_text())
    return open_version(root, manifest), manifest


def republish(
    root: Path,
    version: str | None = None,
    *,
    keep: int = 3,
    extra: dict[str, Any] | None = None,
    model_fingerprint: str | None = None,
) -> Manifest:
    """Publish an existing version's index (default: the one CURRENT names) again as a new
    version, which becomes CURRENT like any publish: what makes replicas reload the same index
    (their caches start cold). The new manifest keeps the model version, and the model
    fingerprint and `extra` unless replaced; a MUVERA index is carried along."""
    if version is None:
        version = current_version(root)
        if version is None:
            raise NoIndexError(f"no {CURRENT_FILE} pointer under {str(root)!r}")
    index, manifest = load_version(root, version)
    return publish(
        index,
        root,
        model_fingerprint=model_fingerprint or manifest.model_fingerprint,
        model_version=manifest.model_version,
        keep=keep,
        extra=manifest.extra if extra is None else extra,
        multi=open_multi(root, manifest, index),
    )


def load_current(root: Path, *, verify: bool = True) -> tuple[ItemIndex, Manifest]:
    """Load the version CURRENT names; NoIndexError when there is none."""
    version = current_version(root)
    if version is None:
        raise NoIndexError(f"no {CURRENT_FILE} pointer under {str(root)!r}")
    return load_version(root, version, verify=verify)


def set_current(root: Path, version: str) -> None:
    """Atomically point CURRENT at `version` (which must be a complete published version)."""
    root = Path(root)
    if not (_version_dir(root, version) / MANIFEST_FILE).is_file():
        raise NoIndexError(f"version {version!r} is not a complete version under {str(root)!r}")
    tmp = root / f"{CURRENT_FILE}.tmp-{secrets.token_hex(4)}"
    try:
        _write_durably(tmp, version + "\n")
        os.replace(tmp, root / CURRENT_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(root)


def older_versions(root: Path, before: str | None = None) -> list[str]:
    """What a rollback may go back to: the complete versions older than `before` (default:
    CURRENT; every version when neither names one), newest first. The one definition of
    "previous" shared by `previous_version` (`uniserve rollback`: the first whose files verify)
    and the service's rollback (the first that also loads and passes the gate)."""
    live = before if before is not None else current_version(root)
    return [v for v in reversed(list_versions(root)) if live is None or v < live]


def previous_version(root: Path, before: str | None = None) -> str:
    """The newest complete version older than `before` (default: CURRENT) whose files verify.

    Damaged versions are skipped. Raises NoIndexError when there is none.
    """
    live = before if before is not None else current_version(root)
    for version in older_versions(root, live):
        try:
            verify_version(root, version)
        except IndexRejectedError:
            continue
        return version
    raise NoIndexError(f"no valid version older than {live!r} under {str(root)!r}")


def rollback(root: Path, *, to: str | None = None) -> str:
    """Point CURRENT at `to` (default: the previous valid version) after verifying its files.

    Returns the version CURRENT now names.
    """
    target = to if to is not None else previous_version(root)
    verify_version(root, target)
    set_current(root, target)
    return target


def prune_versions(root: Path, *, keep: int = 3) -> list[str]:
    """Delete all but the newest `keep` versions, never the live one; drop stale temp files.

    Returns the names of the versions removed.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    versions = Path(root) / VERSIONS_DIR
    if not versions.is_dir():
        return []
    doomed = list_versions(root)[:-keep]
    live = current_version(root)
    removed = [v for v in doomed if v != live]
    for version in removed:
        shutil.rmtree(versions / version)
    cutoff = time.time() - STALE_TMP_SECONDS
    for path in versions.iterdir():
        if path.name.startswith(TMP_PREFIX) and path.stat().st_mtime < cutoff:
            shutil.rmtree(path, ignore_errors=True)
    for path in Path(root).glob(f"{CURRENT_FILE}.tmp-*"):
        if path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
    return removed


def _version_dir(root: Path, version: str) -> Path:
    """The directory of `version`: InvalidVersionError when the id is malformed or its real
    path leaves the index root (checked before anything is opened), NoIndexError when absent."""
    directory = version_dir(root, version)
    if not directory.is_dir():
        raise NoIndexError(f"version {version!r} does not exist under {str(root)!r}")
    return directory


def _write_durably(path: Path, text: str) -> None:
    """Write `text` to `path` and fsync it."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a directory's entries durable (a file created or renamed in it survives a crash);
    also used by the live catalogue's change log (`service.store.changelog`)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
