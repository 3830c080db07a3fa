"""GET /v1/index: the live model and index versions, the index's age, count and parameters; in
router mode the model and what each shard replica last reported."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter

from service.api.deps import LiveEngineDep
from service.api.schemas import ERROR_RESPONSES, IndexInfo, RouterInfo, ShardReport
from service.core.reloader import created_timestamp
from service.core.router import RouterEngine

router = APIRouter(tags=["index"])


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@router.get("/v1/index", responses=ERROR_RESPONSES)
async def index_info(engine: LiveEngineDep) -> IndexInfo | RouterInfo:
    if isinstance(engine, RouterEngine):
        return _router_info(engine)
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
        loaded_at=_iso(engine.loaded_at),
    )


def _router_info(engine: RouterEngine) -> RouterInfo:
    fanout = engine.fanout
    return RouterInfo(
        mode="router",
        model_version=engine.model_version,
        model_fingerprint=engine.embedder.fingerprint,
        index_version=engine.index_version,
        shard_timeout_seconds=fanout.timeout,
        shards=[
            ShardReport(
                shard=i,
                url=s.url,
                outcome=s.outcome,
                index_version=s.index_version,
                spec=s.shard,
                detail=s.detail,
                reported_at=None if s.at is None else _iso(s.at),
            )
            for i, s in enumerate(fanout.status)
        ],
    )
