"""`RedisCache`: the result cache in Redis, shared by every replica; failures are misses.

Keys are `cache_key(...)` (model version, index version, the user's event watermark, a hash of
the request) behind the link's `key_prefix`; entries expire after the TTL given to `set`
(`SET ... PX`). Memory is bounded by Redis itself (`maxmemory` with an LRU or TTL eviction
policy), not by `cache_max_entries`.

Every value is sealed with the key it was stored under: `b"US1" + len(key) (2 bytes, big
endian) + key + payload`. A read unseals it and checks the key; a value read under any other key
(a connection desynchronised by a cancelled command, a foreign writer) raises `CorruptValue`,
which the link counts as a failed call, so one user's result is never served to another.
"""

from __future__ import annotations

from typing import cast

from service.store.redis_link import CorruptValue, RedisClient, RedisLink

MAGIC = b"US1"
_LEN = 2  # bytes of the key length


def seal(key: str, payload: bytes) -> bytes:
    """`payload` prefixed with the key it is stored under."""
    raw_key = key.encode()
    if len(raw_key) >= 1 << (8 * _LEN):
        raise ValueError(f"cache key too long to seal ({len(raw_key)} bytes)")
    return MAGIC + len(raw_key).to_bytes(_LEN, "big") + raw_key + payload


def unseal(key: str, value: bytes) -> bytes:
    """The payload of `value`, checked to have been stored under `key`; CorruptValue otherwise."""
    head = len(MAGIC) + _LEN
    if len(value) < head or not value.startswith(MAGIC):
        raise CorruptValue(f"value under {key!r} is not a sealed uniserve value")
    size = int.from_bytes(value[len(MAGIC) : head], "big")
    stored_key = value[head : head + size]
    if stored_key != key.encode():
        raise CorruptValue(f"value read under {key!r} was stored under {stored_key[:200]!r}")
    return value[head + size :]


class RedisCache:
    """The `Cache` protocol over a `RedisLink` (each call within the request's Redis budget)."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link

    async def get(self, key: str) -> bytes | None:
        redis_key = self.link.key_prefix + key

        async def read(client: RedisClient) -> bytes | None:
            value = await client.get(redis_key)  # bytes: the client never decodes responses
            return None if value is None else unseal(redis_key, cast(bytes, value))

        return await self.link.call("cache_get", read)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if ttl <= 0:
            return
        redis_key = self.link.key_prefix + key
        sealed = seal(redis_key, value)
        milliseconds = max(1, round(ttl * 1000))
        await self.link.call(
            "cache_set", lambda client: client.set(redis_key, sealed, px=milliseconds)
        )
