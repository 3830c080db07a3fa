"""The fast lane: hot POST routes served without FastAPI's per-request routing and dependency
solving, answering exactly as the routes themselves do.

Under load the event loop is the bottleneck of a small machine (all its work holds the GIL that
the encoder and search threads also need), and for a retrieve request about a third of the
loop's time went to the framework: route matching through the included routers, Starlette's
exception and exit-stack middleware, FastAPI's request handler and its dependency solver
(profiled with py-spy, `uniserve bench service`). `FastLane` sits inside our own middleware
(metrics, body limit, API key, load shedding all still apply) and in front of all of that. For
a POST to an eligible route with a JSON body it reads the body, parses it strictly
(`parse_json`), validates the route's body model (first its string-id variant,
`service.api.schemas.STR_ID_MODELS`, which pydantic-core checks without a Python call per id) and
awaits the endpoint with the app state, the same function FastAPI would call.

Only the happy path is taken here. When anything before the endpoint fails (no JSON content
type, a body that is not JSON or does not validate, reading the body fails, e.g. 413) the
request goes on to the full app with its body replayed, so every such error is answered by the
one error path there, word for word as before. A `ServiceError` from the endpoint is answered
as the app's handler answers it; anything else propagates to the metrics middleware (500).

A route is eligible when its `route_class` is `StrictJSONRoute`, its only method is POST, and
its parameters are one body model plus `StateDep`: `endpoint(req, state)`. Everything else,
including the OpenAPI document, is FastAPI's as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import get_state
from service.api.handlers import service_error_response
from service.api.routes._json import StrictJSONRoute, parse_json
from service.api.schemas import STR_ID_MODELS
from service.api.state import AppState
from service.errors import ServiceError


@dataclass(frozen=True)
class FastRoute:
    route: APIRoute  # what the metrics middleware reads as scope["route"] (path = template)
    models: tuple[type[BaseModel], ...]  # tried in order: the str-id variant, then the model
    call: Callable[..., Awaitable[Response]]
    body_param: str
    state_param: str


def fast_route(route: Any) -> FastRoute | None:
    """`route` as a FastRoute when the fast lane can serve it (see the module doc), else None."""
    if not isinstance(route, StrictJSONRoute) or route.methods != {"POST"}:
        return None
    d = route.dependant
    if d.path_params or d.query_params or d.header_params or d.cookie_params:
        return None
    if (
        len(d.body_params) != 1
        or len(d.dependencies) != 1
        or d.dependencies[0].call is not get_state
    ):
        return None
    if d.request_param_name or d.response_param_name or d.background_tasks_param_name:
        return None
    body = d.body_params[0]
    model = body.field_info.annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    if getattr(body.field_info, "embed", None):
        return None
    state_param = d.dependencies[0].name
    assert d.call is not None and state_param is not None
    models = (STR_ID_MODELS[model], model) if model in STR_ID_MODELS else (model,)
    return FastRoute(route, models, d.call, body.name, state_param)


def fast_routes(routes: Iterable[Any]) -> dict[str, FastRoute]:
    """path -> FastRoute for the eligible routes among `routes`."""
    return {r.path: fr for r in routes if (fr := fast_route(r)) is not None}


def _is_json(scope: Scope) -> bool:
    """Whether the request declares a JSON body (application/json or application/*+json)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or (
                media.startswith(b"application/") and media.endswith(b"+json")
            )
    return False


class FastLane:
    def __init__(self, app: ASGIApp, state: AppState, routes: dict[str, FastRoute]) -> None:
        self.app = app
        self.state = state
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if fast is None or scope["method"] != "POST" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        try:
            body = await _read_body(receive)
        except Exception as exc:  # e.g. 413 from the body limit: the full app answers it
            await self.app(scope, _raising(exc, receive), send)
            return
        req = _validate(fast.models, body)
        if req is None:  # the full app answers with its own error, from the same bytes
            await self.app(scope, _replaying(body, receive), send)
            return
        scope["route"] = fast.route
        try:
            response = await fast.call(**{fast.body_param: req, fast.state_param: self.state})
        except ServiceError as exc:
            response = service_error_response(scope, exc)
        await response(scope, receive, send)


def _validate(models: tuple[type[BaseModel], ...], body: bytes) -> BaseModel | None:
    """The body as the first of `models` that accepts it; None when it is empty, not strict
    JSON, or no model accepts it."""
    try:
        value = parse_json(body) if body else None
    except ValueError:  # json.JSONDecodeError
        return None
    if value is None:
        return None
    for model in models:
        try:
            return model.model_validate(value)
        except ValidationError:
            continue
    return None


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # disconnected: let the full app see it
            raise _Disconnected(message)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class _Disconnected(Exception):
    def __init__(self, message: Message) -> None:
        super().__init__("client disconnected")
        self.message = message


def _replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` that first returns `body` as the whole request, then defers to `receive`."""
    return _first_then(lambda: {"type": "http.request", "body": body, "more_body": False}, receive)


def _raising(exc: Exception, receive: Receive) -> Receive:
    """`receive` whose first call fails as reading the body did (or reports the disconnect)."""

    def again() -> Message:
        if isinstance(exc, _Disconnected):
            return exc.message
        raise exc

    return _first_then(again, receive)


def _first_then(first: Callable[[], Message], receive: Receive) -> Receive:
    """`receive` whose first call is answered by `first()`, every later one by `receive`."""
    used = False

    async def wrapped() -> Message:
        nonlocal used
        if not used:
            used = True
            return first()
        return await receive()

    return wrapped
