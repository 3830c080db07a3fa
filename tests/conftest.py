"""Shared fixtures: small real artifacts made once per session, and the real app over them.

The API tests drive `service.api.app.create_app` through its lifespan with httpx's ASGITransport; the
model and index are real (the embedded default: trained on the shipped sample, indexed and
published by `service.jobs.bootstrap.ensure_artifacts`), never mocked. `service` is imported inside the fixtures so other suites do not
pay for torch and faiss at collection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from fastapi import FastAPI

if TYPE_CHECKING:
    from service.api.state import AppState
    from service.settings import Settings


@dataclass
class Served:
    app: FastAPI
    client: httpx.AsyncClient

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.uniserve
        return state


ServeFn = Callable[["Settings"], AbstractAsyncContextManager[Served]]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def uniserve_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir made exactly as the embedded default's first start makes it.

    `ensure_artifacts` trains the default model on the shipped sample (seconds) and builds and
    publishes its index; the API tests and the sample training test share the result.
    """
    from service.jobs.bootstrap import ensure_artifacts
    from service.settings import Settings

    settings = Settings(data_dir=tmp_path_factory.mktemp("uniserve-data"))
    ensure_artifacts(settings)
    return settings.data_dir


@asynccontextmanager
async def _serve(settings: Settings) -> AsyncIterator[Served]:
    from service.api.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://uniserve") as client:
            yield Served(app, client)


@pytest.fixture(scope="session")
def serve() -> ServeFn:
    """`async with serve(settings) as served:` runs a fresh app, lifespan included."""
    return _serve


@pytest.fixture(scope="session")
async def api(uniserve_data_dir: Path) -> AsyncIterator[Served]:
    """One app over the session artifacts, shared by the API tests (use distinct user ids)."""
    from service.settings import Settings

    async with _serve(Settings(data_dir=uniserve_data_dir, bootstrap=False)) as served:
        yield served
