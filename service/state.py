"""What one app instance holds (`app.state.uniserve`): settings, metrics, cache, events, engine."""

from __future__ import annotations

from dataclasses import dataclass

from service.cache import Cache, InProcessCache
from service.engine import Engine
from service.events import EventStore, InProcessEventStore
from service.metrics import Metrics
from service.settings import Settings

STARTING = "the service is starting: model and index are not loaded yet"


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    cache: Cache
    events: EventStore
    engine: Engine | None = None  # None until the lifespan has loaded and warmed the artifacts
    not_ready_reason: str = STARTING

    @classmethod
    def create(cls, settings: Settings) -> AppState:
        """In-process cache and event store (cheap: nothing is connected or loaded here)."""
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
