"""Dependency aliases: how routes reach the long-lived resources the lifespan put on app.state.

Every dependency is `async def` although none awaits: FastAPI runs a plain `def` dependency in
its thread pool, a thread hop per dependency per request that cost most of the event loop's
throughput under load (profiled with py-spy, `uniserve bench service`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.cache import Cache
from service.engine import Engine
from service.errors import ErrorType, ServiceError
from service.events import EventStore
from service.metrics import Metrics
from service.reloader import Reloader
from service.router import NOT_SHARDED, RouterEngine
from service.serving import ServingCore
from service.settings import Settings
from service.state import AppState


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.uniserve
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


async def get_metrics(state: StateDep) -> Metrics:
    return state.metrics


async def get_engine(state: StateDep) -> Engine:
    """The loaded engine; 503 not_ready (with the reason) while there is none, 422 in router
    mode (no local index)."""
    if state.engine is None:
        if state.settings.shards:
            raise ServiceError(ErrorType.INVALID_INPUT, NOT_SHARDED.format(what="search"))
        raise ServiceError(ErrorType.NOT_READY, state.not_ready_reason)
    return state.engine


async def get_live_engine(state: StateDep) -> Engine | RouterEngine:
    """What serves requests: the router engine in router mode, else the local engine; 503
    not_ready (with the reason) while it is not loaded."""
    live = state.router if state.settings.shards else state.engine
    if live is None:
        raise ServiceError(ErrorType.NOT_READY, state.not_ready_reason)
    return live


async def get_cache(state: StateDep) -> Cache:
    return state.cache


async def get_event_store(state: StateDep) -> EventStore:
    return state.events


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
EngineDep = Annotated[Engine, Depends(get_engine)]
LiveEngineDep = Annotated[Engine | RouterEngine, Depends(get_live_engine)]
CacheDep = Annotated[Cache, Depends(get_cache)]
EventStoreDep = Annotated[EventStore, Depends(get_event_store)]


async def get_reloader(state: StateDep) -> Reloader:
    """The engine swapper the lifespan made; 503 not_ready before the lifespan ran, 422 in
    router mode (no local index to swap)."""
    if state.settings.shards:
        raise ServiceError(ErrorType.INVALID_INPUT, NOT_SHARDED.format(what="reload and roll back"))
    if state.reloader is None:
        raise ServiceError(ErrorType.NOT_READY, state.not_ready_reason)
    return state.reloader


ReloaderDep = Annotated[Reloader, Depends(get_reloader)]


async def get_serving(
    engine: LiveEngineDep,
    cache: CacheDep,
    events: EventStoreDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    state: StateDep,
) -> ServingCore:
    """A ServingCore over the live engine (cheap: it only holds references)."""
    return ServingCore(
        engine,
        cache,
        events,
        cache_ttl=settings.cache_ttl_seconds if settings.cache_enabled else 0.0,
        on_cache=metrics.observe_cache,
        flights=state.flights,
        budget=state.redis.budget if state.redis is not None else None,
        on_stage=metrics.observe_stage,
        multi_candidates=settings.multi_candidates,
        multi_interests=settings.multi_interests,
    )


ServingDep = Annotated[ServingCore, Depends(get_serving)]
