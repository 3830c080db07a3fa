"""`RedisChangeFeed`: replicas sharing a Redis hear of catalogue changes at once.

The change log under the index root stays the source of truth; Redis only carries a nudge.
After a replica writes a change it publishes its sequence number on one pub/sub channel
(`notify`, through the `RedisLink`: the breaker and a short timeout, a failure only logged);
every replica listens on that channel on a connection of its own (`listen`) and, on each
message, reads the log (`on_change`, the live catalogue's `poll_once`). While Redis is down
nothing is lost: the listener reconnects every second, catches up once it is back, and the
periodic poll of the log (`UNISERVE_INDEX_POLL_SECONDS`) goes on meanwhile.

On a Redis Cluster the channel is a classic (not sharded) one: a message published on any node
reaches the subscribers of every node, so the listener subscribes on one node and, when that
one fails, moves on to the next node the link knows of.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import anyio
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from service.store.redis_link import RedisClient, RedisLink, RedisUnavailable

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

        async def publish(client: RedisClient) -> object:
            if isinstance(client, RedisCluster):
                # any node reaches every subscriber; the default node (not the channel's slot
                # owner) moves off a failed node once the client refreshes its map
                return await client.publish(
                    self.channel, seq, target_nodes=RedisCluster.DEFAULT_NODE
                )
            return await client.publish(self.channel, seq)

        try:
            with self.link.budget():
                await self.link.call("catalogue_notify", publish)
        except RedisUnavailable as exc:
            log.debug("catalogue change %d not announced (%s); replicas poll the log", seq, exc)

    async def listen(self, on_change: Callable[[], Awaitable[object]]) -> None:
        """Call `on_change()` on every announced change, and once on each (re)subscription
        (what was announced while disconnected); until cancelled."""
        attempt = 0
        while True:
            url, where = self._listen_at(attempt)
            client = Redis.from_url(
                url,
                socket_connect_timeout=self.connect_timeout,
                socket_timeout=READ_SECONDS + self.connect_timeout,
                health_check_interval=READ_SECONDS,
            )
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    log.info("catalogue: listening for changes on redis %s", where)
                    await on_change()
                    while True:
                        message = await pubsub.get_message(timeout=READ_SECONDS)
                        if message is not None and message.get("type") == "message":
                            await on_change()
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("catalogue feed: redis %s unreachable (%r); retrying", where, exc)
            finally:
                await client.aclose()
            attempt += 1
            await anyio.sleep(RECONNECT_SECONDS)

    def _listen_at(self, attempt: int) -> tuple[str, str]:
        """(URL, address for the log) of the server to subscribe on: the configured one, or on
        a cluster the `attempt`-th node, round robin over the nodes the link knows of."""
        nodes = self.link.nodes()
        if not nodes:
            return self.url, self.link.address
        host, port = nodes[attempt % len(nodes)]
        return _with_address(self.url, host, port), f"{host}:{port}"


def _with_address(url: str, host: str, port: int) -> str:
    """`url` with its host and port replaced (credentials, scheme and options kept)."""
    parts = urlsplit(url)
    credentials, at, _ = parts.netloc.rpartition("@")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=f"{credentials}{at}{address}"))
