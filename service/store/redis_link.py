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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from service.store.breaker import BreakerState, CircuitBreaker

log = logging.getLogger(__name__)

T = TypeVar("T")

# call results, the `result` label of uniserve_redis_calls_total
OK, TIMEOUT, CONNECTION, CORRUPT, ERROR = "ok", "timeout", "connection", "corrupt", "error"
BREAKER_OPEN, BUDGET_SPENT = "breaker_open", "budget_spent"  # skipped: no call was made


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
        client: Redis,
        breaker: CircuitBreaker,
        *,
        timeout: float,
        key_prefix: str = "",
        on_call: Callable[[str, str, float | None], None] | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.client = client
        self.breaker = breaker
        self.timeout = timeout
        self.key_prefix = key_prefix
        self._on_call = on_call or (lambda op, result, seconds: None)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        breaker: CircuitBreaker,
        **kwargs: Any,
    ) -> RedisLink:
        """A link over a new client for `url` (nothing is connected yet)."""
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
    def address(self) -> str:
        """host:port (or socket path) and db, never the password."""
        kw = self.client.connection_pool.connection_kwargs
        where = kw.get("path") or f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
        return f"{where}/{kw.get('db', 0)}"

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
    async def call(self, op: str, fn: Callable[[Redis], Awaitable[T]]) -> T:
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
                result = await fn(self.client)
        except (RedisError, OSError, TimeoutError) as exc:
            seconds = time.perf_counter() - started
            if budget is not None:
                budget.failed = True
                budget.remaining -= seconds
            reason = _reason(exc)
            self._on_call(op, reason, seconds)
            self._record_failure(op, reason, exc)
            if reason in (CONNECTION, CORRUPT):
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
        restarted Redis closed them all), so later calls open fresh ones."""
        try:
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
        """Whether Redis answers now (startup log line); never raises."""
        try:
            await self.call("ping", lambda r: r.ping())
        except RedisUnavailable as exc:
            log.warning("redis at %s is not reachable (%s); serving without it", self.address, exc)
            return False
        log.info("redis at %s reachable", self.address)
        return True

    async def aclose(self) -> None:
        await self.client.aclose()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, CorruptValue):
        return CORRUPT
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return TIMEOUT
    if isinstance(exc, OSError | RedisConnectionError):
        return CONNECTION
    return ERROR
