"""POST /v1/items/embed: item embeddings from id and/or metadata (cold start for new items)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service.api.deps import StateDep, serving_core
from service.api.routes._json import StrictJSONRoute, json_bytes
from service.api.schemas import ERROR_RESPONSES, ItemEmbedRequest, ItemEmbedResponse

router = APIRouter(tags=["items"], route_class=StrictJSONRoute)


@router.post("/v1/items/embed", response_model=ItemEmbedResponse, responses=ERROR_RESPONSES)
async def embed_items(req: ItemEmbedRequest, state: StateDep) -> Response:
    serving = serving_core(state)
    req.check_limits(state.settings)
    return json_bytes(await serving.embed_items([item.to_spec() for item in req.items]))
