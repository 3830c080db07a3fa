"""The app factory: settings in, a FastAPI app out; nothing is loaded until its lifespan runs."""

from __future__ import annotations

from fastapi import FastAPI

from service.errors import install_error_handlers
from service.lifespan import lifespan
from service.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.routes import ROUTERS
from service.settings import Settings
from service.state import AppState


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; settings default to the `UNISERVE_*` environment, read now."""
    settings = settings if settings is not None else Settings()
    app = FastAPI(
        title="uniserve",
        summary="Embedding serving for recommender systems: user embeddings, retrieval, ranking.",
        version="1",
        lifespan=lifespan,
    )
    app.state.uniserve = AppState.create(settings)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    # Added last = outermost: metrics see every response, the 413s included.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.uniserve.metrics)
    return app
