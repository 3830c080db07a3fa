"""Sharded indexes: which shard owns an item, and what a shard of a build says about itself.

A sharded build partitions the catalogue by a stable hash of each item id (`shard_of`): the
first 8 bytes of the BLAKE2b digest of the id's UTF-8 bytes, little-endian, modulo the shard
count. It depends on nothing but the id and the count, so every machine of a fleet, any Python
process (no `hash()` salt) and any later build agree on where an item lives. Each shard is
published as a normal index root, `<index-root>/shard-<i>` (`shard_root`), whose manifest
records its `ShardSpec` under `extra["shard"]`; one uniserve replica serves one shard and a
router (`service.core.router`) merges their top-k.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PARTITION = "blake2b64-mod"  # the hash `shard_of` partitions by, recorded in every manifest
MAX_SHARDS = 1024  # more shards than this is a configuration mistake, not a deployment
_BUILD_ID = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")
MAX_BUILD_ID_CHARS = 64


def shard_of(item_ids: Iterable[str], num_shards: int) -> np.ndarray:
    """(N,) int64: the shard (0 .. num_shards - 1) owning each item id."""
    count = _check_count(num_shards)
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little")
            % count
            for i in item_ids
        ),
        dtype=np.int64,
    )


def shard_root(index_root: Path, index: int) -> Path:
    """The index root (versions/ + CURRENT) of shard `index` under a sharded build's root."""
    return Path(index_root) / f"shard-{index}"


def _check_count(count: object) -> int:
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"shard count must be an integer in 1..{MAX_SHARDS}, got {count!r}")
    return count


@dataclass(frozen=True)
class ShardSpec:
    """Shard `index` of a build split into `count` shards; `build_id` names that build (the
    same on all its shards, so a router can tell shards of one build from a mix)."""

    index: int
    count: int
    build_id: str = ""

    def __post_init__(self) -> None:
        _check_count(self.count)
        if not isinstance(self.index, int) or not 0 <= self.index < self.count:
            raise ValueError(
                f"shard index must be an integer in 0..{self.count - 1}, got {self.index!r}"
            )
        if self.build_id and (
            len(self.build_id) > MAX_BUILD_ID_CHARS or not _BUILD_ID.fullmatch(self.build_id)
        ):
            raise ValueError(
                f"build id must be letters and digits joined by single '.', '_' or '-', at most "
                f"{MAX_BUILD_ID_CHARS} characters, got {self.build_id!r}"
            )

    def owns(self, item_ids: Iterable[str]) -> np.ndarray:
        """(N,) bool: which of `item_ids` belong to this shard."""
        return shard_of(item_ids, self.count) == self.index

    def to_json(self) -> dict[str, Any]:
        """What the manifest records under `extra["shard"]`."""
        return {
            "index": self.index,
            "count": self.count,
            "partition": PARTITION,
            "build_id": self.build_id,
        }
