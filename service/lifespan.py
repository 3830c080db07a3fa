"""Startup and shutdown: load the model and the live index, check they match, warm them up.

When artifacts are missing or unusable the app still starts, not ready: `/readyz` and every data
route answer 503 `not_ready` with a message saying what is wrong and which command fixes it.
With `bootstrap` on, missing artifacts are first made by `service.bootstrap.ensure_artifacts`
(a small model trained on the shipped sample, and an index built from it).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from index import IndexIntegrityError, NoIndexError
from models.artifacts import ModelArtifactError
from service.engine import ArtifactMismatchError, Engine
from service.settings import Settings
from service.state import AppState

log = logging.getLogger(__name__)

FIX_MISSING = (
    "run `uniserve serve` (with bootstrap on it trains a model on the shipped sample and "
    "publishes an index) or `uniserve train` then `uniserve build-index`"
)
FIX_INDEX = "publish an index built from the loaded model with `uniserve build-index`"

# Artifact problems that bootstrap can repair; anything else is reported as is.
_REPAIRABLE = (ModelArtifactError, NoIndexError, IndexIntegrityError, ArtifactMismatchError)


def _load_once(settings: Settings) -> Engine:
    engine = Engine.load(
        settings.model_path, settings.index_path, max_inflight=settings.max_inflight
    )
    engine.warm_up()
    return engine


def load_engine(settings: Settings) -> Engine:
    """Load, check and warm the engine (blocking); bootstrap first when allowed and needed."""
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
    try:
        return _load_once(settings)
    except _REPAIRABLE as exc:
        if not settings.bootstrap:
            raise
        log.warning("artifacts are not usable (%s); bootstrapping the embedded default", exc)
    from service.bootstrap import ensure_artifacts  # trains: only imported when needed

    ensure_artifacts(settings)
    return _load_once(settings)


def not_ready_reason(exc: Exception) -> str:
    """What is wrong and how to fix it, for /readyz and 503 responses."""
    if isinstance(exc, ModelArtifactError | NoIndexError):
        return f"{exc}; {FIX_MISSING}"
    if isinstance(exc, IndexIntegrityError):
        return f"the live index is damaged: {exc}; {FIX_INDEX}"
    if isinstance(exc, ArtifactMismatchError):
        return f"{exc}; {FIX_INDEX}"
    return f"loading the model and index failed: {exc!r}; see the service log"


async def load_into(state: AppState) -> None:
    """Load the engine in a worker thread and publish it on `state` (or the reason it failed)."""
    try:
        engine = await anyio.to_thread.run_sync(load_engine, state.settings)
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
    state.metrics.index_items.set(engine.index.count)
    log.info(
        "ready: model %s, index %s (%s, %d items, dim %d)",
        engine.model_version,
        engine.index_version,
        engine.index.index_type,
        engine.index.count,
        engine.dim,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: AppState = app.state.uniserve
    state.metrics.inflight.set_function(lambda: state.engine.inflight if state.engine else 0)
    await load_into(state)
    try:
        yield
    finally:
        state.engine = None
        state.not_ready_reason = "the service is shutting down"
        state.metrics.index_items.set(0)
