"""Version ids and the paths they may name: the one gate every version id passes.

A version id reaches uniserve from the `CURRENT` file, the command line (`uniserve rollback
--to`) or the admin API (`POST /admin/rollback {"to": ...}`). `check_version_id` accepts only
names of the shape `publish` makes (`20250101T120000123456Z-a1b2c3`: letters and digits in runs
joined by single `.`, `_` or `-`, at most 128 characters) and refuses everything else before any
path is built from it: `/` and `\\`, `..`, percent-encoding (`%2e%2e%2f` and its double-encoded
forms), absolute and drive paths, URLs, whitespace and control characters. `version_dir` then
resolves the directory and refuses one whose real path is not directly under
`<root>/versions` (a symlink leaving the index root); `inside_version` does the same for a file
of a version. Resolving reads links (lstat / readlink), never opens a file.
"""

from __future__ import annotations

import re
from pathlib import Path

from index.manifest import IndexRejectedError, NoIndexError, RejectReason

VERSIONS_DIR = "versions"
MAX_VERSION_CHARS = 128
# Runs of letters and digits joined by single separators: no leading, trailing or doubled dot.
VERSION_ID_PATTERN = r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$"
_VERSION_ID = re.compile(VERSION_ID_PATTERN)


class InvalidVersionError(IndexRejectedError, NoIndexError):
    """A version id, or the path it resolves to, is not allowed; nothing was opened. Also a
    NoIndexError: no version by that name can exist."""

    def __init__(self, message: str) -> None:
        super().__init__(message, RejectReason.INVALID_VERSION)


def check_version_id(value: object) -> str:
    """`value` when it is a well-formed version id; InvalidVersionError otherwise."""
    if not isinstance(value, str):
        raise InvalidVersionError(f"a version id must be a string, got {type(value).__name__}")
    shown = value[:MAX_VERSION_CHARS] + ("..." if len(value) > MAX_VERSION_CHARS else "")
    if len(value) > MAX_VERSION_CHARS or not _VERSION_ID.fullmatch(value):
        raise InvalidVersionError(
            f"{shown!r} is not a version id (letters and digits joined by single '.', '_' or "
            f"'-', at most {MAX_VERSION_CHARS} characters)"
        )
    return value


def version_dir(root: Path, version: str) -> Path:
    """`<root>/versions/<version>` after checking the id and that its real path stays there.

    The directory need not exist (callers say what a missing one means).
    """
    check_version_id(version)
    versions = Path(root) / VERSIONS_DIR
    directory = versions / version
    real_versions = Path(root).resolve() / VERSIONS_DIR
    if directory.resolve() != real_versions / version:
        raise InvalidVersionError(
            f"version {version!r} resolves to {str(directory.resolve())!r}, outside the index "
            f"root {str(Path(root).resolve())!r} (a symlink?)"
        )
    return directory


def inside_version(directory: Path, name: str) -> Path:
    """The file `name` of a version directory; InvalidVersionError when its real path leaves it."""
    path = directory / name
    if Path(name).name != name or path.resolve().parent != directory.resolve():
        raise InvalidVersionError(
            f"file {name!r} of {str(directory)!r} resolves outside its version directory"
        )
    return path
