"""What one app instance holds (`app.state.uniserve`): settings, metrics, cache, events, engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.cache import Cache, InProcessCache
from service.engine import Engine
from service.events import EventStore, InProcessEventStore
from service.metrics import Metrics
from service.settings import Settings
from service.shedding import PendingLimit
from service.singleflight import SingleFlight

if TYPE_CHECKING:
    from service.redis_link import RedisLink
    from service.reloader import Reloader
    from service.router import RouterEngine

STARTING = "the service is starting: model and index are not loaded yet"


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    cache: Cache
    events: EventStore
    engine: Engine | None = None  # None until the lifespan has loaded and warmed the artifacts
    router: RouterEngine | None = None  # router mode (shard_urls set) instead of `engine`
    not_ready_reason: str = STARTING
    reloader: Reloader | None = None  # set by the lifespan: swaps `engine` (reload, rollback)
    redis: RedisLink | None = None  # set when redis_url is: the cache and events live there
    flights: SingleFlight[bytes] = field(default_factory=SingleFlight)  # shared by requests
    pending: PendingLimit = field(init=False)  # compute requests in progress (load shedding)

    def __post_init__(self) -> None:
        self.pending = PendingLimit(self.settings.max_pending_requests)

    @classmethod
    def create(cls, settings: Settings) -> AppState:
        """Cache and event store, in Redis when `redis_url` is set, else in-process (cheap:
        nothing is connected or loaded here)."""
        if settings.redis_url is not None:
            return cls._with_redis(settings, settings.redis_url)
        return cls(
            settings=settings,
            metrics=Metrics(),
            cache=InProcessCache(settings.cache_max_entries),
            events=InProcessEventStore(
                max_per_user=settings.events_max_per_user,
                max_users=settings.events_max_users,
                ttl_seconds=settings.events_ttl_seconds,
            ),
        )

    @classmethod
    def _with_redis(cls, settings: Settings, url: str) -> AppState:
        from service.breaker import STATE_VALUES, CircuitBreaker
        from service.redis_cache import RedisCache
        from service.redis_events import RedisEventStore
        from service.redis_link import RedisLink

        metrics = Metrics()
        breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_seconds)
        metrics.redis_breaker.set_function(lambda: STATE_VALUES[breaker.state])
        link = RedisLink.from_url(
            url,
            timeout=settings.redis_timeout_ms / 1000,
            connect_timeout=settings.redis_connect_timeout_ms / 1000,
            max_connections=settings.redis_max_connections,
            breaker=breaker,
            key_prefix=settings.redis_key_prefix,
            on_call=metrics.observe_redis,
        )
        return cls(
            settings=settings,
            metrics=metrics,
            cache=RedisCache(link),
            events=RedisEventStore(
                link,
                max_per_user=settings.events_max_per_user,
                ttl_seconds=settings.events_ttl_seconds,
            ),
            redis=link,
        )

    async def open_backends(self) -> None:
        """Log whether Redis answers (the service starts and serves either way)."""
        if self.redis is not None:
            await self.redis.ping()

    async def close_backends(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
