"""How routes reach the long-lived resources the lifespan put on app.state.

Routes that do work take `StateDep` and call the plain functions here (`serving_core`,
`local_engine`, `live_engine`) themselves: each FastAPI dependency costs its solver time on
every request, and routes of that shape (a body model plus the state) are also served by the
fast lane (`service.api.fastlane`). Every dependency is `async def` although none awaits: FastAPI
runs a plain `def` dependency in its thread pool, a thread hop per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.api.metrics import Metrics
from service.api.state import AppState
from service.core.catalogue import LiveCatalogue
from service.core.engine import Engine
from service.core.reloader import Reloader
from service.core.router import NOT_SHARDED, RouterEngine
from service.core.serving import ServingCore
from service.errors import ErrorType, ServiceError


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.uniserve
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def local_engine(state: AppState) -> Engine:
    """The loaded engine; 503 not_ready (with the reason) while there is none, 409 unservable
    in router mode (no local index)."""
    if state.engine is None:
        if state.settings.shards:
            raise ServiceError(ErrorType.UNSERVABLE, NOT_SHARDED.format(what="search"))
        raise ServiceError(ErrorType.NOT_READY, state.not_ready_reason)
    return state.engine


def live_engine(state: AppState) -> Engine | RouterEngine:
    """What serves requests: the router engine in router mode, else the local engine; 503
    not_ready (with the reason) while it is not loaded."""
    live = state.live
    if live is None:
        raise ServiceError(ErrorType.NOT_READY, state.not_ready_reason)
    return live


def serving_core(state: AppState) -> ServingCore:
    """A ServingCore over the live engine (cheap: it only holds references); 503 not_ready (with
    the reason) while no engine is loaded."""
    settings = state.settings
    return ServingCore(
        live_engine(state),
        state.cache,
        state.events,
        cache_ttl=settings.cache_ttl_seconds if settings.cache_enabled else 0.0,
        on_cache=state.metrics.observe_cache,
        flights=state.flights,
        budget=state.redis.budget if state.redis is not None else None,
        on_stage=state.metrics.observe_stage,
        multi_candidates=settings.multi_candidates,
        multi_interests=settings.multi_interests,
        online=state.online,
    )


async def get_metrics(state: StateDep) -> Metrics:
    return state.metrics


async def get_live_engine(state: StateDep) -> Engine | RouterEngine:
    return live_engine(state)


async def get_reloader(state: StateDep) -> Reloader:
    """The engine swapper the lifespan made; 503 not_ready before the lifespan ran, 409
    unservable in router mode (no local index to swap)."""
    if state.settings.shards:
        raise ServiceError(ErrorType.UNSERVABLE, NOT_SHARDED.format(what="reload and roll back"))
    if state.reloader is None:
        raise ServiceError(ErrorType.NOT_READY, state.not_ready_reason)
    return state.reloader


async def get_catalogue(state: StateDep) -> LiveCatalogue:
    """The live catalogue the lifespan made; 409 unservable in router mode (no local index),
    503 not_ready before the lifespan ran."""
    if state.settings.shards:
        raise ServiceError(ErrorType.UNSERVABLE, NOT_SHARDED.format(what="change the catalogue"))
    if state.catalogue is None:
        raise ServiceError(ErrorType.NOT_READY, state.not_ready_reason)
    return state.catalogue


CatalogueDep = Annotated[LiveCatalogue, Depends(get_catalogue)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
LiveEngineDep = Annotated[Engine | RouterEngine, Depends(get_live_engine)]
ReloaderDep = Annotated[Reloader, Depends(get_reloader)]
