"""`RedisServedStore`: each user's served lists in Redis, shared by every replica.

Per user one list key, `<prefix>uniserve:v1:served:<h>` (`<h>` hashes the user id: ids are not
kept in clear), holding encoded `ServedList`s oldest first, at most `max_lists`, expiring
`window_seconds` after the user's last remembered list. A remember is one MULTI round trip
(push, trim, expire); a read one LRANGE, filtered to the window by each list's `served_at`.
Every call goes through the `RedisLink` (its timeouts, breaker and budget); failures raise
`ServedStoreUnavailable`. Each call touches one key, so it runs as it is on a Redis Cluster
(users spread over the masters by their key's hash slot).
"""

from __future__ import annotations

import hashlib
from typing import cast

from service.store.cache import KEY_PREFIX
from service.store.redis_link import RedisClient, RedisLink, RedisUnavailable
from service.store.served import ServedList, ServedStoreUnavailable, in_window


class RedisServedStore:
    """The `ServedStore` protocol over a `RedisLink`."""

    def __init__(self, link: RedisLink, *, max_lists: int, window_seconds: float) -> None:
        if max_lists < 1 or window_seconds <= 0:
            raise ValueError(
                f"max_lists ({max_lists}) must be >= 1 and window_seconds ({window_seconds}) > 0"
            )
        self.link = link
        self.max_lists = max_lists
        self.window_seconds = window_seconds
        self.ttl_ms = max(1, round(window_seconds * 1000))
        self._base = f"{link.key_prefix}{KEY_PREFIX}:served"

    def key(self, user_id: str) -> str:
        return f"{self._base}:{hashlib.blake2b(user_id.encode(), digest_size=16).hexdigest()}"

    async def remember(self, user_id: str, served: ServedList) -> None:
        key, raw = self.key(user_id), served.encode()

        async def write(client: RedisClient) -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.rpush(key, raw)
                pipe.ltrim(key, -self.max_lists, -1)
                pipe.pexpire(key, self.ttl_ms)
                await pipe.execute()

        try:
            await self.link.call("served_remember", write)
        except RedisUnavailable as exc:
            raise ServedStoreUnavailable(f"the served-list store is unavailable: {exc}") from exc

    async def lists(self, user_id: str, now: float) -> list[ServedList]:
        key = self.key(user_id)
        try:
            raw = await self.link.call("served_read", lambda client: client.lrange(key, 0, -1))
        except RedisUnavailable as exc:
            raise ServedStoreUnavailable(f"the served-list store is unavailable: {exc}") from exc
        decoded = [ServedList.decode(r) for r in cast(list[bytes], raw)]
        return in_window(decoded, now, self.window_seconds)
