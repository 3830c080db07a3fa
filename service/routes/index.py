"""GET /v1/index: the live model and index versions and the index's parameters."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import EngineDep
from service.schemas import ERROR_RESPONSES, IndexInfo

router = APIRouter(tags=["index"])


@router.get("/v1/index", responses=ERROR_RESPONSES)
async def index_info(engine: EngineDep) -> IndexInfo:
    manifest = engine.manifest
    return IndexInfo(
        model_version=engine.model_version,
        model_fingerprint=engine.embedder.fingerprint,
        index_version=manifest.version,
        index_type=engine.index.index_type,
        metric=engine.index.metric,
        dim=engine.index.dim,
        count=engine.index.count,
        search_params=engine.index.search_params,
        recall_at_10=manifest.recall_at_10,
        created_at=manifest.created_at,
    )
