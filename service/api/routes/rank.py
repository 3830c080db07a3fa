"""POST /v1/rank: score a caller's candidates for a user; unknown candidates are reported."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service.api.deps import StateDep, serving_core
from service.api.routes._json import StrictJSONRoute, json_bytes
from service.api.schemas import ERROR_RESPONSES, RankRequest, RankResponse

router = APIRouter(tags=["retrieval"], route_class=StrictJSONRoute)


@router.post("/v1/rank", response_model=RankResponse, responses=ERROR_RESPONSES)
async def rank(req: RankRequest, state: StateDep) -> Response:
    serving = serving_core(state)
    req.check_limits(state.settings)
    return json_bytes(await serving.rank(req.user_id, req.request_events(), req.candidates))
