"""POST /v1/users/embed: a user's embedding from their stored and/or given events."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service.api.deps import StateDep, serving_core
from service.api.routes._json import StrictJSONRoute, json_bytes
from service.api.schemas import ERROR_RESPONSES, UserEmbedRequest, UserEmbedResponse

router = APIRouter(tags=["users"], route_class=StrictJSONRoute)


@router.post("/v1/users/embed", response_model=UserEmbedResponse, responses=ERROR_RESPONSES)
async def embed_user(req: UserEmbedRequest, state: StateDep) -> Response:
    serving = serving_core(state)
    req.check_limits(state.settings)
    return json_bytes(await serving.embed_user(req.user_id, req.request_events(), multi=req.multi))
