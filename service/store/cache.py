"""Result cache: the `Cache` interface, an in-process TTL + LRU cache, and the key function.

Values are opaque bytes (serialised responses, raw float32 vectors) so any backend can hold them.
Keys are built only by `cache_key`, which folds in the model version, the index version and the
user's event watermark: a model or index swap, or new events for the user, can never be answered
from an old entry. `service.store.redis_cache.RedisCache` implements the same interface in Redis;
either may raise on `get` / `set`, which callers treat as a miss.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson

KEY_PREFIX = "uniserve:v1"


def cache_key(
    op: str,
    *,
    model_version: str,
    index_version: str,
    watermark: int,
    params: Mapping[str, Any],
) -> str:
    """The one cache key function.

    `op` names the cached operation ("retrieve", "rank", "user_vector"); `watermark` is the
    user's event watermark (0 when no user is involved); `params` is every other input of the
    result (user id, request events, k, filters) as JSON-serialisable values. Ids are hashed,
    never stored in the key in clear.
    """
    blob = orjson.dumps(params, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.blake2b(blob, digest_size=16).hexdigest()
    return f"{KEY_PREFIX}:{op}:{model_version}:{index_version}:{watermark}:{digest}"


class Cache(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The stored value, or None when absent or expired."""
        ...

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store `value` for `ttl` seconds (ttl <= 0: do not store)."""
        ...


class InProcessCache:
    """A bounded TTL + LRU cache in this process's memory.

    At most `max_entries` entries: inserting beyond that evicts the least recently used one.
    Expiry uses `clock` (monotonic by default, injectable for tests); expired entries are dropped
    when read or when they reach the LRU end.
    """

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # key -> (expiry, v)

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        item = self._entries.get(key)
        if item is None:
            return None
        expires_at, value = item
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if ttl <= 0 or self.max_entries == 0:
            return
        self._entries[key] = (self._clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
