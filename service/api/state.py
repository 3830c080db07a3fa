"""What one app instance holds (`app.state.uniserve`): settings, metrics, cache, events, and what
the lifespan makes: the admission (batchers) and either the reloader, which owns the live local
engine, or the router engine (router mode). Nothing here points back at the state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.api.metrics import Metrics
from service.core.engine import Admission, Engine
from service.core.limit import AdaptiveLimit, Limit, PendingLimit
from service.core.reloader import STARTING, Reloader
from service.settings import Settings
from service.store.cache import Cache, InProcessCache
from service.store.events import EventStore, InProcessEventStore
from service.store.singleflight import SingleFlight

if TYPE_CHECKING:
    from service.core.catalogue import LiveCatalogue
    from service.core.online import OnlineTracker
    from service.core.router import RouterEngine
    from service.core.shadow import ShadowSlot
    from service.store.redis_link import RedisLink


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    cache: Cache
    events: EventStore
    admission: Admission | None = None  # set by the lifespan: the batchers engines share
    reloader: Reloader | None = None  # set by the lifespan: holds and swaps the local engine
    router: RouterEngine | None = None  # router mode (shard_urls set) instead of the reloader
    catalogue: LiveCatalogue | None = None  # set by the lifespan (not in router mode)
    router_not_ready_reason: str = STARTING  # router mode: why `router` is None
    redis: RedisLink | None = None  # set when redis_url is: the cache and events live there
    flights: SingleFlight[bytes] = field(default_factory=SingleFlight)  # shared by requests
    pending: Limit = field(init=False)  # compute requests in progress (load shedding)
    online: OnlineTracker | None = None  # set by the lifespan unless online_window_seconds is 0
    shadow: ShadowSlot | None = None  # set by the lifespan (not in router mode): the shadow

    def __post_init__(self) -> None:
        settings = self.settings
        self.pending = (
            PendingLimit(settings.max_pending_requests)
            if settings.admission == "fixed"
            else AdaptiveLimit(
                settings.admission_target_ms / 1000,
                initial=settings.max_pending_requests,
                lowest=settings.admission_min_limit,
                highest=settings.admission_max_limit,
                lag_budget=settings.admission_lag_ms / 1000 or None,
            )
        )

    @property
    def engine(self) -> Engine | None:
        """The live local engine; None until loaded and warmed, in router mode and at shutdown."""
        return self.reloader.engine if self.reloader is not None else None

    @property
    def live(self) -> Engine | RouterEngine | None:
        """What serves requests: the router engine in router mode, else the local engine; None
        while it is not loaded."""
        return self.router if self.settings.shards else self.engine

    @property
    def not_ready_reason(self) -> str:
        """Why nothing serves yet (or any more), for /readyz and 503 answers."""
        if self.reloader is not None:
            return self.reloader.not_ready_reason
        return self.router_not_ready_reason

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
        from service.store.breaker import STATE_VALUES, CircuitBreaker
        from service.store.redis_cache import RedisCache
        from service.store.redis_events import RedisEventStore
        from service.store.redis_link import RedisLink

        metrics = Metrics()
        breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_seconds)
        metrics.redis_breaker.set_function(lambda: STATE_VALUES[breaker.state])
        link = RedisLink.from_url(
            url,
            timeout=settings.redis_timeout_ms / 1000,
            connect_timeout=settings.redis_connect_timeout_ms / 1000,
            max_connections=settings.redis_max_connections,
            breaker=breaker,
            cluster=settings.redis_cluster,
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
