"""`RedisEventStore`: each user's recent events in Redis, shared by every replica.

Per user two keys, both expiring `ttl_seconds` after the user's last append (idle users age
out, like Monolith's expirable embeddings; reads do not refresh the timer):
`<prefix>uniserve:v1:events:<h>` (a list of events, oldest first, at most `max_per_user`) and
`<prefix>uniserve:v1:watermark:<h>`, where `<h>` hashes the user id (ids are not kept in clear).

An append is one Lua script, so one round trip and atomic: take a new watermark from a clock
key, push the events, trim the list to the newest `max_per_user`, set both expiries. The clock
starts at the server's time in microseconds when it is missing (a fresh, flushed or evicted
Redis), so a watermark is never reused, not even across such a reset. A read is one MULTI round
trip (events and watermark together). Events survive a restart of the service; with
`appendonly yes` they also survive a restart of Redis.

On a single server the clock is one store-wide key, `<prefix>uniserve:v1:events-clock`. On a
Redis Cluster, where a script or a MULTI may only touch keys of one hash slot, the `<h>` of both
keys is a hash tag (`...:events:{<h>}`, `...:watermark:{<h>}`: one slot per user, users spread
over the masters) and each user's watermark key is its own clock: seeded from the server's time
when missing, then incremented. A user is only ever compared with their own earlier watermarks
(cache keys carry the user), and a user whose keys expired comes back with a watermark above
every earlier one: the clock cannot run ahead of the server's time by as much as the idle TTL
(that would take a million appends a second).

Failures raise `EventStoreUnavailable`; an append that timed out may still have been applied.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import cast

import orjson
from redis.exceptions import NoScriptError

from service.store.cache import KEY_PREFIX
from service.store.events import Event, EventStoreUnavailable
from service.store.redis_link import RedisClient, RedisLink, RedisUnavailable

log = logging.getLogger(__name__)

# KEYS: events list, user watermark, clock (store-wide; on a cluster the watermark key itself).
# ARGV: max events per user, ttl in ms, then the encoded events, oldest first.
_APPEND = """
if redis.call('EXISTS', KEYS[3]) == 0 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[3], now[1] .. string.format('%06d', tonumber(now[2])))
end
local watermark = redis.call('INCR', KEYS[3])
for i = 3, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], string.format('%d', watermark), 'PX', ARGV[2])
return {redis.call('LLEN', KEYS[1]), watermark}
"""
_APPEND_SHA = hashlib.sha1(_APPEND.encode()).hexdigest()


def encode(event: Event) -> bytes:
    return orjson.dumps([event.item_id, event.surface, event.ts])


def decode(raw: bytes) -> Event:
    item_id, surface, ts = orjson.loads(raw)
    return Event(item_id, surface, ts)


class RedisEventStore:
    """The `EventStore` protocol over a `RedisLink` (each call within the request's budget)."""

    def __init__(self, link: RedisLink, *, max_per_user: int, ttl_seconds: float) -> None:
        if max_per_user < 1 or ttl_seconds <= 0:
            raise ValueError(
                f"max_per_user ({max_per_user}) must be >= 1 and ttl_seconds ({ttl_seconds}) > 0"
            )
        self.link = link
        self.max_per_user = max_per_user
        self.ttl_ms = max(1, round(ttl_seconds * 1000))
        base = f"{link.key_prefix}{KEY_PREFIX}"
        self._clock_key: str | None = None if link.cluster else f"{base}:events-clock"
        self._base = base

    def keys(self, user_id: str) -> tuple[str, str]:
        """(events list key, watermark key) of a user."""
        h = hashlib.blake2b(user_id.encode(), digest_size=16).hexdigest()
        if self.link.cluster:  # a hash tag: both keys in one slot
            h = f"{{{h}}}"
        return f"{self._base}:events:{h}", f"{self._base}:watermark:{h}"

    async def append(self, user_id: str, events: Iterable[Event]) -> tuple[int, int]:
        encoded = [encode(e) for e in events][-self.max_per_user :]  # only these can survive
        events_key, watermark_key = self.keys(user_id)
        keys_and_args: list[str | bytes | int] = [
            events_key,
            watermark_key,
            self._clock_key or watermark_key,
            self.max_per_user,
            self.ttl_ms,
            *encoded,
        ]

        async def append(client: RedisClient) -> list[int]:
            # EVAL when the server lacks the script: it goes to the keys' node alone (SCRIPT
            # LOAD would go to every master of a cluster, and fail while one is down)
            try:
                result = await client.evalsha(_APPEND_SHA, 3, *keys_and_args)
            except NoScriptError:
                result = await client.eval(_APPEND, 3, *keys_and_args)
            return cast(list[int], result)

        try:
            stored, watermark = await self.link.call("events_append", append)
        except RedisUnavailable as exc:
            raise EventStoreUnavailable(f"the event store is unavailable: {exc}") from exc
        return int(stored), int(watermark)

    async def read(self, user_id: str) -> tuple[list[Event], int]:
        events_key, watermark_key = self.keys(user_id)

        async def read(client: RedisClient) -> list[object]:
            async with client.pipeline(transaction=True) as pipe:
                pipe.lrange(events_key, 0, -1)
                pipe.get(watermark_key)
                result: list[object] = await pipe.execute()
                return result

        try:
            raw_events, raw_watermark = await self.link.call("events_read", read)
        except RedisUnavailable as exc:
            raise EventStoreUnavailable(f"the event store is unavailable: {exc}") from exc
        events = [decode(raw) for raw in cast(list[bytes], raw_events)]
        if not events or raw_watermark is None:
            if events:  # the watermark was evicted without the list: no safe cache key
                log.warning("stored events without a watermark (evicted?); treating as unknown")
            return [], 0
        return events, int(cast(bytes, raw_watermark))
