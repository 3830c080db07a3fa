"""POST /v1/rank: score a caller's candidates for a user; unknown candidates are reported."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service.deps import ServingDep, SettingsDep
from service.routes._json import StrictJSONRoute, json_bytes
from service.schemas import ERROR_RESPONSES, RankRequest, RankResponse

router = APIRouter(tags=["retrieval"], route_class=StrictJSONRoute)


@router.post("/v1/rank", response_model=RankResponse, responses=ERROR_RESPONSES)
async def rank(req: RankRequest, serving: ServingDep, settings: SettingsDep) -> Response:
    req.check_limits(settings)
    return json_bytes(await serving.rank(req.user_id, req.request_events(), req.candidates))
