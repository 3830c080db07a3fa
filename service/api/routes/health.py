"""GET /healthz (the process answers) and GET /readyz (model and index loaded and warmed; in
router mode the model alone: shards may come and go, a missing one makes answers partial)."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import LiveEngineDep
from service.api.schemas import ERROR_RESPONSES, Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", responses=ERROR_RESPONSES)
async def readyz(engine: LiveEngineDep) -> Readiness:
    return Readiness(
        status="ok", model_version=engine.model_version, index_version=engine.index_version
    )
