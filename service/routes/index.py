"""GET /v1/index: the live model and index versions, the index's age, count and parameters."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter

from service.deps import EngineDep
from service.reloader import created_timestamp
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
        age_seconds=round(max(0.0, time.time() - created_timestamp(manifest)), 3),
        loaded_at=datetime.fromtimestamp(engine.loaded_at, UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
    )
