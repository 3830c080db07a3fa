"""The one way uniserve talks to Redis: short timeouts, no retries, a circuit breaker, and a
per-request time budget.

`RedisLink` owns the `redis.asyncio` client (a bounded connection pool; connect and read
timeouts of tens of milliseconds; redis-py's retries switched off) and runs every command
through `call`, which:

- refuses at once while the `CircuitBreaker` is open (no network, no timeout paid);
- gives the command what is left of the current request's budget (`budget()`): a request spends
  at most `timeout` seconds on Redis in total, whatever number of calls it makes, and after one
  failed call the request's later calls are skipped;
- reports each call's outcome to the breaker and to `on_call(op, result, seconds)` (metrics).

Every failure surfaces as `RedisUnavailable` (a `ConnectionError`); callers decide what it means:
a miss for the cache, a 503 for an event write. Nothing is connected until the first call, so
the service starts (and becomes ready) while Redis is down.

On a Redis Cluster (`from_url(..., cluster=True)`) the client is `redis.asyncio.RedisCluster`:
the URL names one node and the client learns the others and which hash slots each serves. It
follows MOVED/ASK redirections but makes no retries, and refreshes its map of the cluster (at
most once a second) after a node failed. Learning the map the first time (CLUSTER SLOTS and the
command table: tens of milliseconds of parsing alone) runs as one background task bounded by
`DISCOVERY_SECONDS`, never inside a request's budget: startup waits for it, a call made while it
runs waits at most its own budget and never cancels it, and a failed one is started again by the
next call; at most `max_connections` calls are in flight at once
(the cluster client fails a call beyond its per-node limit instead of waiting, so the link
makes it wait, within the budget). One breaker covers the whole cluster. The stores keep
what one call touches in one hash slot (`RedisEventStore` tags a user's keys; the cache and the
served lists use one key per call), which a cluster requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    RedisClusterUnreachableError,
    RedisError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from service.store.breaker import BreakerState, CircuitBreaker

log = logging.getLogger(__name__)

T = TypeVar("T")

RedisClient = Redis | RedisCluster  # what `call` hands to its command function
# a cluster that cannot reach the data: down, no node serving the slot, or no node answering
_CLUSTER_UNREACHABLE = ClusterDownError | SlotNotCoveredError | RedisClusterUnreachableError

# call results, the `result` label of uniserve_redis_calls_total
OK, TIMEOUT, CONNECTION, CORRUPT, ERROR = "ok", "timeout", "connection", "corrupt", "error"
BREAKER_OPEN, BUDGET_SPENT = "breaker_open", "budget_spent"  # skipped: no call was made

# the most a cluster client's first map of the cluster may take (each connection and read in it
# is bounded by the link's own timeouts too); outside every request's budget
DISCOVERY_SECONDS = 5.0


class RedisUnavailable(ConnectionError):
    """A Redis call failed, timed out, or was skipped (breaker open, request budget spent)."""


class CorruptValue(RedisError):
    """A value read back does not carry the key it was read under (or is malformed)."""


@dataclass(slots=True)
class _Budget:
    remaining: float  # seconds of Redis time this request has left (model time not counted)
    failed: bool = False  # a call of this request failed: skip the rest


_budget: ContextVar[_Budget | None] = ContextVar("uniserve_redis_budget", default=None)


class RedisLink:
    def __init__(
        self,
        client: RedisClient,
        breaker: CircuitBreaker,
        *,
        timeout: float,
        key_prefix: str = "",
        on_call: Callable[[str, str, float | None], None] | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        """`max_in_flight`: calls beyond this many wait (within their budget) for one to end;
        None leaves the bound to the client's pool (a blocking pool waits by itself)."""
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.client = client
        self.breaker = breaker
        self.timeout = timeout
        self.key_prefix = key_prefix
        self._on_call = on_call or (lambda op, result, seconds: None)
        self._in_flight = asyncio.Semaphore(max_in_flight) if max_in_flight else None
        self._discovery: asyncio.Task[Any] | None = None  # a cluster client's first map

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        breaker: CircuitBreaker,
        cluster: bool = False,
        **kwargs: Any,
    ) -> RedisLink:
        """A link over a new client for `url` (nothing is connected yet); `cluster`: `url` is
        one node of a Redis Cluster."""
        if cluster:
            client = RedisCluster.from_url(
                url,
                max_connections=max_connections,  # per node
                socket_timeout=timeout,
                socket_connect_timeout=connect_timeout,
                retry=Retry(NoBackoff(), 0),  # no retries on the request path
                require_full_coverage=False,  # a slot without a node fails alone
                health_check_interval=0,
                driver_info=None,
                maint_notifications_config=MaintNotificationsConfig(enabled=False),
            )
            return cls(client, breaker, timeout=timeout, max_in_flight=max_connections, **kwargs)
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=None,  # waiting for a free connection is bounded by the request's budget
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 0),  # no retries on the request path
            health_check_interval=0,  # no extra PING round trip before commands
            driver_info=None,  # no CLIENT SETINFO round trip on connect
            maint_notifications_config=MaintNotificationsConfig(enabled=False),  # nor this one
        )
        return cls(Redis.from_pool(pool), breaker, timeout=timeout, **kwargs)  # owns the pool

    @property
    def cluster(self) -> bool:
        """Whether the client talks to a Redis Cluster."""
        return isinstance(self.client, RedisCluster)

    def nodes(self) -> list[tuple[str, int]]:
        """(host, port) of every cluster node the client knows of (the URL's before the first
        call); empty for a single server."""
        if not isinstance(self.client, RedisCluster):
            return []
        known = self.client.get_nodes() or self.client.startup_nodes
        return [(node.host, int(node.port)) for node in known]

    @property
    def address(self) -> str:
        """host:port (or socket path) and db, never the password; for a cluster, its nodes."""
        if isinstance(self.client, RedisCluster):
            return "cluster " + ",".join(f"{host}:{port}" for host, port in self.nodes())
        kw = self.client.connection_pool.connection_kwargs
        where = kw.get("path") or f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
        return f"{where}/{kw.get('db', 0)}"

    def _discovering(self) -> asyncio.Task[Any] | None:
        """A cluster client's task learning the cluster's map, started on first use and again
        after it failed; None for a single server."""
        if not isinstance(self.client, RedisCluster):
            return None
        task = self._discovery
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            learn = asyncio.wait_for(self.client.initialize(), DISCOVERY_SECONDS)
            task = self._discovery = asyncio.get_running_loop().create_task(learn)
            task.add_done_callback(_seen)  # its failure is reported by the call awaiting it
        return task

    # ------------------------------------------------------------------ budget
    @contextmanager
    def budget(self) -> Iterator[None]:
        """Scope of one request: its Redis calls share `timeout` seconds in total (time spent
        waiting on Redis, a free pooled connection included; not the time between calls).

        Nested scopes (and tasks started inside the scope) share the outermost budget.
        """
        if _budget.get() is not None:
            yield
            return
        token = _budget.set(_Budget(self.timeout))
        try:
            yield
        finally:
            _budget.reset(token)

    # ------------------------------------------------------------------ calls
    async def call(self, op: str, fn: Callable[[RedisClient], Awaitable[T]]) -> T:
        """`await fn(client)` within the budget and the breaker; RedisUnavailable on failure."""
        budget = _budget.get()
        timeout = self.timeout
        if budget is not None:
            timeout = min(timeout, budget.remaining)
            if budget.failed or timeout <= 0:
                self._on_call(op, BUDGET_SPENT, None)
                raise RedisUnavailable(f"redis {op} skipped: this request's Redis budget is spent")
        if not self.breaker.allow():
            self._on_call(op, BREAKER_OPEN, None)
            raise RedisUnavailable(f"redis {op} skipped: circuit breaker is open")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                discovery = self._discovering()
                if discovery is not None and not discovery.done():
                    await asyncio.shield(discovery)  # a timeout here leaves it running
                if self._in_flight is None:
                    result = await fn(self.client)
                else:
                    async with self._in_flight:
                        result = await fn(self.client)
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            seconds = time.perf_counter() - started
            if budget is not None:
                budget.failed = True
                budget.remaining -= seconds
            reason = _reason(exc)
            self._on_call(op, reason, seconds)
            self._record_failure(op, reason, exc)
            if reason == CORRUPT or (reason == CONNECTION and not self.cluster):
                await self._drop_idle_connections()
            raise RedisUnavailable(
                f"redis {op} failed ({reason}): {type(exc).__name__}: {exc}"
            ) from exc
        except BaseException:  # cancelled (client gone) or a bug in fn: no verdict on Redis
            self.breaker.abandon()
            raise
        seconds = time.perf_counter() - started
        if budget is not None:
            budget.remaining -= seconds
        self._on_call(op, OK, seconds)
        if self.breaker.state is not BreakerState.CLOSED:
            log.info("redis at %s answers again: circuit breaker closed", self.address)
        self.breaker.record_success()
        return result

    async def _drop_idle_connections(self) -> None:
        """After a broken or desynchronised connection: the idle ones are suspect too (a
        restarted Redis closed them all), so later calls open fresh ones. (A cluster client
        does this itself for the node whose connection broke; after a desynchronised one,
        whose node is unknown, every node's idle connections are dropped.)"""
        try:
            if isinstance(self.client, RedisCluster):
                for node in self.client.get_nodes():
                    await node.disconnect_free_connections()
            else:
                await self.client.connection_pool.disconnect(inuse_connections=False)
        except Exception:
            log.debug("dropping idle redis connections failed", exc_info=True)

    def _record_failure(self, op: str, reason: str, exc: BaseException) -> None:
        was_closed = self.breaker.state is BreakerState.CLOSED
        self.breaker.record_failure()
        if was_closed and self.breaker.state is not BreakerState.CLOSED:
            log.warning(
                "redis at %s failing (%s on %s: %r): circuit breaker open for %.1fs; cache "
                "lookups are misses and event writes answer 503 meanwhile",
                self.address,
                reason,
                op,
                exc,
                self.breaker.reset_seconds,
            )
        else:
            log.debug("redis %s failed (%s): %r", op, reason, exc)

    async def ping(self) -> bool:
        """Whether Redis answers now (startup log line); never raises. A cluster client first
        learns the cluster's map (up to `DISCOVERY_SECONDS`), so requests never pay for it."""
        try:
            discovery = self._discovering()
            if discovery is not None:
                with contextlib.suppress(Exception):  # `call` reports it
                    await asyncio.shield(discovery)
            await self.call("ping", lambda r: r.ping())
        except RedisUnavailable as exc:
            log.warning("redis at %s is not reachable (%s); serving without it", self.address, exc)
            return False
        log.info("redis at %s reachable", self.address)
        return True

    async def aclose(self) -> None:
        if self._discovery is not None and not self._discovery.done():
            self._discovery.cancel()
            with contextlib.suppress(BaseException):
                await self._discovery
        await self.client.aclose()


def _seen(task: asyncio.Task[Any]) -> None:
    """Mark a background task's failure as retrieved (a caller reports it, or none waited)."""
    if not task.cancelled():
        task.exception()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, CorruptValue):
        return CORRUPT
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return TIMEOUT
    if isinstance(exc, OSError | RedisConnectionError | _CLUSTER_UNREACHABLE):
        return CONNECTION
    return ERROR
