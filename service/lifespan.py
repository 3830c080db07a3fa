"""Startup and shutdown: load the model and the live index, check they match, warm them up.

When artifacts are missing or unusable the app still starts, not ready: `/readyz` and every data
route answer 503 `not_ready` with a message saying what is wrong and which command fixes it.
With `bootstrap` on, missing artifacts are first made by `service.bootstrap.ensure_artifacts`
(a small model trained on the shipped sample, and an index built from it). The engine is loaded
by `service.reloader.open_engine`, as every later reload is; while the app runs, the reloader's
watcher polls CURRENT every `index_poll_seconds` and swaps new versions in. In router mode
(`shard_urls` set) only the model is loaded (`load_router_into`): no index, no watcher, no
bootstrap; the shard replicas hold the index.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
from fastapi import FastAPI

from index import IndexIntegrityError, IndexRejectedError, NoIndexError
from models.artifacts import ModelArtifactError
from service.engine import Admission, ArtifactMismatchError, Engine
from service.heap import freeze_heap
from service.metrics import IndexSnapshot
from service.reloader import Reloader, created_timestamp, open_engine
from service.router import load_router_model, make_router
from service.settings import Settings
from service.state import AppState

log = logging.getLogger(__name__)

FIX_MISSING = (
    "run `uniserve serve` (with bootstrap on it trains a model on the shipped sample and "
    "publishes an index) or `uniserve train` then `uniserve build-index`"
)
FIX_INDEX = "publish an index built from the loaded model with `uniserve build-index`"

# Artifact problems that bootstrap can repair; anything else is reported as is.
_REPAIRABLE = (ModelArtifactError, NoIndexError, IndexRejectedError)


def load_engine(settings: Settings, admission: Admission | None = None) -> Engine:
    """Load, check and warm the engine (blocking); bootstrap first when allowed and needed."""
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
    if settings.faiss_threads is not None:
        import faiss

        faiss.omp_set_num_threads(settings.faiss_threads)
    admission = admission or Admission.from_settings(settings)
    try:
        return open_engine(settings, admission)
    except _REPAIRABLE as exc:
        if not settings.bootstrap:
            raise
        log.warning("artifacts are not usable (%s); bootstrapping the embedded default", exc)
    from service.bootstrap import ensure_artifacts  # trains: only imported when needed

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


def not_ready_reason(exc: Exception) -> str:
    """What is wrong and how to fix it, for /readyz and 503 responses."""
    if isinstance(exc, ModelArtifactError | NoIndexError):
        return f"{exc}; {FIX_MISSING}"
    if isinstance(exc, IndexIntegrityError):
        return f"the live index is damaged: {exc}; {FIX_INDEX}"
    if isinstance(exc, ArtifactMismatchError):
        return f"{exc}; {FIX_INDEX}"
    if isinstance(exc, IndexRejectedError):
        return f"the live index was refused ({exc.reason.value}): {exc}; {FIX_INDEX}"
    return f"loading the model and index failed: {exc!r}; see the service log"


async def load_into(state: AppState) -> None:
    """Load the engine in a worker thread and publish it on `state` (or the reason it failed)."""
    admission = state.reloader.admission if state.reloader is not None else None
    try:
        engine = await anyio.to_thread.run_sync(load_engine, state.settings, admission)
    except Exception as exc:
        state.engine = None
        state.not_ready_reason = not_ready_reason(exc)
        if isinstance(exc, _REPAIRABLE):
            log.error("not ready: %s", state.not_ready_reason)
        else:
            log.exception("not ready: %s", state.not_ready_reason)
        return
    state.engine = engine
    state.not_ready_reason = ""
    freeze_heap()
    state.metrics.index_items.set(engine.index.count)
    state.metrics.index_created.set(created_timestamp(engine.manifest))
    log.info(
        "ready: model %s, index %s (%s, %d items, dim %d)",
        engine.model_version,
        engine.index_version,
        engine.index.index_type,
        engine.index.count,
        engine.dim,
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
        state.not_ready_reason = f"router mode: loading the model failed: {exc}; {fix}"
        log.error("not ready: %s", state.not_ready_reason)
        return
    state.metrics.track_shards(len(settings.shards))
    state.router = make_router(settings, embedder, admission, state.metrics.observe_shard)
    state.not_ready_reason = ""
    freeze_heap()
    log.info(
        "ready (router): model %s, %d shards: %s",
        embedder.version,
        len(settings.shards),
        ", ".join(settings.shards),
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: AppState = app.state.uniserve
    reloader = state.reloader = Reloader(state)
    admission = reloader.admission
    state.metrics.inflight.set_function(lambda: admission.inflight)
    state.metrics.queue_depth.labels("encode").set_function(lambda: admission.encoder.depth)
    state.metrics.queue_depth.labels("search").set_function(lambda: admission.searcher.depth)
    state.metrics.track_index(lambda: index_snapshot(state.engine))
    await state.open_backends()  # Redis down is logged, never fatal
    router_mode = bool(state.settings.shards)
    if router_mode:
        await load_router_into(state, admission)
    else:
        await load_into(state)
    try:
        async with anyio.create_task_group() as background:
            if state.settings.index_poll_seconds > 0 and not router_mode:
                background.start_soon(reloader.watch)
            yield
            background.cancel_scope.cancel()
    finally:
        state.engine = None
        router, state.router = state.router, None
        state.not_ready_reason = "the service is shutting down"
        state.metrics.index_items.set(0)
        state.metrics.index_created.set(0)
        await admission.aclose()
        if router is not None:
            await router.fanout.aclose()
        await state.close_backends()
