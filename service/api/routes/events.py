"""POST /v1/events: append events to a user's recent-event store (invalidates their cache)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service.api.deps import StateDep, serving_core
from service.api.routes._json import StrictJSONRoute, json_bytes
from service.api.schemas import ERROR_RESPONSES, EventsRequest, EventsResponse

router = APIRouter(tags=["events"], route_class=StrictJSONRoute)

# OpenAPI links: what a client (or schemathesis's stateful phase) may do next with the user
USER_LINKS = {
    f"{name}ForUser": {
        "operationRef": f"#/paths/~1v1~1{path.replace('/', '~1')}/post",
        "requestBody": {"user_id": "$response.body#/user_id"},
        "description": f"POST /v1/{path} for the user whose events were stored",
    }
    for name, path in (("Retrieve", "retrieve"), ("Rank", "rank"), ("Embed", "users/embed"))
}


@router.post(
    "/v1/events",
    response_model=EventsResponse,
    responses={**ERROR_RESPONSES, 200: {"links": USER_LINKS}},
)
async def append_events(req: EventsRequest, state: StateDep) -> Response:
    serving = serving_core(state)
    req.check_limits(state.settings)
    events = [e.to_event() for e in req.events]
    return json_bytes(await serving.record_events(req.user_id, events))
