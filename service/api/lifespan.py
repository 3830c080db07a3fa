"""Startup and shutdown: load the model and the live index, check they match, warm them up.

When artifacts are missing or unusable the app still starts, not ready: `/readyz` and every data
route answer 503 `not_ready` with a message saying what is wrong and which command fixes it.
With `bootstrap` on, missing artifacts are first made by `service.jobs.bootstrap.ensure_artifacts`
(a small model trained on the shipped sample, and an index built from it). The lifespan makes the
`Admission` (the batchers) and, unless in router mode, the `Reloader`, which owns the live
engine: it loads the first one (`load_engine`, through `service.core.reloader.open_engine` as
every later reload) and, while the app runs, its watcher polls CURRENT every
`index_poll_seconds` and swaps new versions in. In router mode (`shard_urls` set) only the model
is loaded (`load_router_into`): no index, no watcher, no bootstrap; the shard replicas hold the
index. Then online quality is wired (`service.api.online`: the served-list store, the tracker,
the shadow slot and the configured shadow); at shutdown its background work is cancelled.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from fastapi import FastAPI

from index import RejectReason
from service.api.metrics import IndexSnapshot, Metrics
from service.api.online import close_online, load_configured_shadow, make_online
from service.api.shedding import watch_loop
from service.api.state import AppState
from service.core.catalogue import LiveCatalogue
from service.core.engine import Admission, Engine
from service.core.heap import freeze_heap
from service.core.reloader import REPAIRABLE, Reloader, created_timestamp, open_engine
from service.core.router import load_router_model, make_router
from service.settings import Settings

if TYPE_CHECKING:
    from service.store.redis_feed import RedisChangeFeed

log = logging.getLogger(__name__)


def load_engine(settings: Settings, admission: Admission | None = None) -> Engine:
    """Load, check and warm the engine (blocking); bootstrap first when allowed and needed.
    `admission`: the batchers it will use (default: new ones from `settings`)."""
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
    if settings.faiss_threads is not None:
        import faiss

        faiss.omp_set_num_threads(settings.faiss_threads)
    admission = admission or Admission.from_settings(settings)
    try:
        return open_engine(settings, admission)
    except REPAIRABLE as exc:
        if not settings.bootstrap:
            raise
        log.warning("artifacts are not usable (%s); bootstrapping the embedded default", exc)
    from service.jobs.bootstrap import ensure_artifacts  # trains: only imported when needed

    ensure_artifacts(settings)
    return open_engine(settings, admission)


def index_snapshot(engine: Engine | None) -> IndexSnapshot | None:
    """The live index as the metrics report it (`uniserve_index_info`, `_age_seconds`)."""
    if engine is None:
        return None
    return IndexSnapshot(
        version=engine.index_version,
        model_version=engine.model_version,
        index_type=engine.index.index_type,
        created=created_timestamp(engine.manifest),
    )


async def load_router_into(state: AppState, admission: Admission) -> None:
    """Router mode: load the model in a worker thread and publish the router engine on `state`
    (or the reason it failed). Shards are not contacted here: they may come and go."""
    settings = state.settings
    try:
        embedder = await anyio.to_thread.run_sync(load_router_model, settings)
    except Exception as exc:
        state.router = None
        fix = "point UNISERVE_MODEL_DIR at the model the shards' indexes were built from"
        state.router_not_ready_reason = f"router mode: loading the model failed: {exc}; {fix}"
        log.error("not ready: %s", state.router_not_ready_reason)
        return
    state.metrics.track_shards(len(settings.shards))
    state.router = make_router(settings, embedder, admission, state.metrics.observe_shard)
    state.router_not_ready_reason = ""
    freeze_heap()
    log.info(
        "ready (router): model %s, %d shards: %s",
        embedder.version,
        len(settings.shards),
        ", ".join(settings.shards),
    )


def engine_hooks(metrics: Metrics) -> tuple[Callable[[Engine, bool], None], Callable[..., None]]:
    """The reloader's metrics hooks: (on_swap, on_refused)."""

    def on_swap(engine: Engine, reloaded: bool) -> None:
        metrics.index_items.set(engine.index.count)
        metrics.index_created.set(created_timestamp(engine.manifest))
        if reloaded:
            metrics.index_reloads.inc()

    def on_refused(reason: RejectReason) -> None:
        metrics.index_reload_failures.labels(reason.value).inc()

    return on_swap, on_refused


def live_catalogue(state: AppState, feed: RedisChangeFeed | None) -> LiveCatalogue:
    """The live catalogue over the index root's change log, reporting to the metrics and
    announcing its changes on `feed` (Redis) when there is one."""
    settings, metrics = state.settings, state.metrics.catalogue
    metrics.delta_limit.set(settings.delta_max_items)
    metrics.delta_items.set_function(
        lambda: float(state.engine.delta.size) if state.engine is not None else 0.0
    )
    return LiveCatalogue(
        settings.index_path,
        lambda: state.engine,
        max_delta=settings.delta_max_items,
        # the lag of changes as they arrive; a swap's replay of older ones is not lag
        on_applied=lambda engine, changes, replayed: metrics.observe_applied(
            engine.delta.seq, [] if replayed else [c.ts for c in changes]
        ),
        on_call=metrics.observe_call,
        on_written=feed.notify if feed is not None else None,
    )


def change_feed(state: AppState) -> RedisChangeFeed | None:
    """With Redis configured: the pub/sub nudge that spreads catalogue changes at once."""
    settings = state.settings
    if state.redis is None or settings.redis_url is None:
        return None
    from service.store.redis_feed import RedisChangeFeed

    return RedisChangeFeed(
        state.redis, settings.redis_url, connect_timeout=settings.redis_connect_timeout_ms / 1000
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: AppState = app.state.uniserve
    settings, metrics = state.settings, state.metrics
    admission = state.admission = Admission.from_settings(settings, metrics.observe_batch)
    metrics.inflight.set_function(lambda: admission.inflight)
    metrics.admission_limit.set_function(lambda: state.pending.limit)
    metrics.admission_pending.set_function(lambda: state.pending.pending)
    metrics.queue_depth.labels("encode").set_function(lambda: admission.encoder.depth)
    metrics.queue_depth.labels("search").set_function(lambda: admission.searcher.depth)
    metrics.track_index(lambda: index_snapshot(state.engine))
    await state.open_backends()  # Redis down is logged, never fatal
    reloader = None
    feed: RedisChangeFeed | None = None
    if settings.shards:
        await load_router_into(state, admission)
    else:
        on_swap, on_refused = engine_hooks(metrics)
        feed = change_feed(state)
        catalogue = state.catalogue = live_catalogue(state, feed)
        reloader = state.reloader = Reloader(
            settings,
            admission,
            on_swap=on_swap,
            on_refused=on_refused,
            installing=catalogue.installing,
        )
        await reloader.start(functools.partial(load_engine, settings, admission))
    make_online(state)  # served lists, online hit counting, the shadow slot
    await load_configured_shadow(state)
    try:
        async with anyio.create_task_group() as background:
            if settings.index_poll_seconds > 0 and reloader is not None:
                background.start_soon(reloader.watch)
            if settings.index_poll_seconds > 0 and state.catalogue is not None:
                background.start_soon(state.catalogue.watch, settings.index_poll_seconds)
            if feed is not None and state.catalogue is not None:
                background.start_soon(feed.listen, state.catalogue.poll_once)
            if metrics.workers is not None:
                background.start_soon(metrics.workers.publish_forever)
            background.start_soon(watch_loop, state.pending, metrics.loop_lag.observe)
            yield
            background.cancel_scope.cancel()
    finally:
        shutting_down = "the service is shutting down"
        if reloader is not None:
            reloader.close(shutting_down)
        router, state.router = state.router, None
        state.router_not_ready_reason = shutting_down
        metrics.index_items.set(0)
        metrics.index_created.set(0)
        await close_online(state)
        await admission.aclose()
        if router is not None:
            await router.fanout.aclose()
        await state.close_backends()
        if metrics.workers is not None:
            metrics.workers.remove()
