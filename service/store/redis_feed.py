"""`RedisChangeFeed`: replicas sharing a Redis hear of catalogue changes at once.

The change log under the index root stays the source of truth; Redis only carries a nudge.
After a replica writes a change it publishes its sequence number on one pub/sub channel
(`notify`, through the `RedisLink`: the breaker and a short timeout, a failure only logged);
every replica listens on that channel on a connection of its own (`listen`) and, on each
message, reads the log (`on_change`, the live catalogue's `poll_once`). While Redis is down
nothing is lost: the listener reconnects every second, catches up once it is back, and the
periodic poll of the log (`UNISERVE_INDEX_POLL_SECONDS`) goes on meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.store.redis_link import RedisLink, RedisUnavailable

log = logging.getLogger(__name__)

CHANNEL = "uniserve:catalogue"
RECONNECT_SECONDS = 1.0  # between attempts to (re)subscribe while Redis is unreachable
READ_SECONDS = 1.0  # one wait for a message; between waits the connection is health-checked


class RedisChangeFeed:
    def __init__(self, link: RedisLink, url: str, *, connect_timeout: float) -> None:
        """`link`: the service's Redis link (publishing); `url`: where the listener opens its
        own connection (a subscribed connection cannot serve other commands)."""
        self.link = link
        self.url = url
        self.connect_timeout = connect_timeout
        self.channel = f"{link.key_prefix}{CHANNEL}"

    async def notify(self, seq: int) -> None:
        """Tell the other replicas that change `seq` is in the log; never raises."""
        try:
            with self.link.budget():
                await self.link.call("catalogue_notify", lambda r: r.publish(self.channel, seq))
        except RedisUnavailable as exc:
            log.debug("catalogue change %d not announced (%s); replicas poll the log", seq, exc)

    async def listen(self, on_change: Callable[[], Awaitable[object]]) -> None:
        """Call `on_change()` on every announced change, and once on each (re)subscription
        (what was announced while disconnected); until cancelled."""
        while True:
            client = Redis.from_url(
                self.url,
                socket_connect_timeout=self.connect_timeout,
                socket_timeout=READ_SECONDS + self.connect_timeout,
                health_check_interval=READ_SECONDS,
            )
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    log.info("catalogue: listening for changes on redis %s", self.link.address)
                    await on_change()
                    while True:
                        message = await pubsub.get_message(timeout=READ_SECONDS)
                        if message is not None and message.get("type") == "message":
                            await on_change()
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("catalogue feed: redis unreachable (%r); retrying", exc)
            finally:
                await client.aclose()
            await anyio.sleep(RECONNECT_SECONDS)
