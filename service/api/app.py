"""The app factory: settings in, a FastAPI app out; nothing is loaded until its lifespan runs.

`create_app` builds the full app: every route, the docs (whose OpenAPI document follows the
settings and the live model: `service.api.document`) and the lifespan. With `admin_port` set,
`uniserve serve` also builds `create_public_app` for the public listener: /v1, /healthz and
/readyz only, sharing the full app's state (one engine, one cache, one lifespan).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Security

from service.api.auth import API_KEY, AuthMiddleware, Keys
from service.api.document import install_document
from service.api.fastlane import FastLane, fast_routes
from service.api.handlers import install_error_handlers
from service.api.lifespan import lifespan
from service.api.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.api.routes import API_ROUTERS, PROBE_ROUTERS, ROUTERS
from service.api.schemas import AUTH_ERRORS
from service.api.shedding import ShedMiddleware
from service.api.state import AppState
from service.api.workers import Worker, WorkerMetrics
from service.settings import Settings


def create_app(settings: Settings | None = None, worker: Worker | None = None) -> FastAPI:
    """Build the app; settings default to the `UNISERVE_*` environment, read now. `worker`:
    this process's place among several (`service.api.runner.supervise`); its `/metrics` then
    answers for every worker (`service.api.workers`)."""
    settings = settings if settings is not None else Settings()
    app = FastAPI(
        title="uniserve",
        summary="Embedding serving for recommender systems: user embeddings, retrieval, ranking.",
        version="1",
        lifespan=lifespan,
        **_telemetry(settings),
    )
    state = app.state.uniserve = AppState.create(settings)
    if worker is not None:
        state.metrics.workers = WorkerMetrics(worker, state.metrics.registry)
    _mount(app, state, ROUTERS)
    # the OpenAPI document: the settings' limits and the live model's shape (service.api.document)
    install_document(app, settings, lambda: state.live)
    return app


def create_public_app(app: FastAPI) -> FastAPI:
    """The public listener's app when an admin port is set: /v1, /healthz and /readyz, no docs;
    `app`'s state and lifespan (run once, by whoever serves `app`) serve both."""
    public = FastAPI(
        title="uniserve",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        **_telemetry(app.state.uniserve.settings),
    )
    public.state.uniserve = app.state.uniserve
    _mount(public, app.state.uniserve, API_ROUTERS + PROBE_ROUTERS)
    return public


def _telemetry(settings: Settings) -> dict[str, Any]:
    """FastAPI's native OpenTelemetry switched as `otel_telemetry` says, where FastAPI has it."""
    if "telemetry" not in inspect.signature(FastAPI).parameters:
        return {}
    on = settings.otel_telemetry
    return {"telemetry": {"tracing": on, "metrics": on, "logs": on}}


def _mount(app: FastAPI, state: AppState, routers: Sequence[APIRouter]) -> None:
    settings = state.settings
    install_error_handlers(app)
    # The API key's scheme is in the OpenAPI document only when the key is required.
    api: dict[str, Any] = (
        {"dependencies": [Security(API_KEY)], "responses": AUTH_ERRORS} if settings.api_key else {}
    )
    for router in routers:
        app.include_router(router, **(api if router in API_ROUTERS else {}))
    # Added first = innermost of ours: hot routes skip the framework's routing (service.api.fastlane).
    app.add_middleware(
        FastLane, state=state, routes=fast_routes(r for router in routers for r in router.routes)
    )
    # Added last = outermost: metrics see every response, the 401s, 413s and shed 429s
    # included; keys are checked, then overload shed, before anything reads the body.
    app.add_middleware(ShedMiddleware, limit=state.pending)
    app.add_middleware(AuthMiddleware, keys=Keys.from_settings(settings))
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
