"""POST /v1/retrieve: top-k items for a user by ANN search (single vector, or MUVERA + exact
Chamfer re-ranking in mode "multi"), with filters inside the search."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service.api.deps import StateDep, serving_core
from service.api.routes._json import StrictJSONRoute, json_bytes
from service.api.schemas import STATE_ERROR_RESPONSES, RetrieveRequest, RetrieveResponse

router = APIRouter(tags=["retrieval"], route_class=StrictJSONRoute)


@router.post("/v1/retrieve", response_model=RetrieveResponse, responses=STATE_ERROR_RESPONSES)
async def retrieve(req: RetrieveRequest, state: StateDep) -> Response:
    serving = serving_core(state)
    req.check_limits(state.settings)
    body = await serving.retrieve(
        req.user_id,
        req.request_events(),
        k=req.k,
        surfaces=req.surfaces,
        exclude=req.exclude,
        exclude_seen=req.exclude_seen,
        mode=req.mode,
    )
    return json_bytes(body)
