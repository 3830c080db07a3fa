"""Pure-ASGI middleware: request metrics with a last-resort 500, and the request body limit.

`MetricsMiddleware` is the outermost of ours: it times every HTTP request, labels it by route
template, counts 429s and 503s by the error type the error handler (or the load shedder)
recorded, and turns an exception that escaped every handler into a logged 500 `internal` error
in the usual JSON shape. `BodyLimitMiddleware` makes reading a body over the limit fail with 413
`too_large`: at once from the Content-Length header when it is declared, otherwise as soon as
the bytes read pass the limit.
"""

from __future__ import annotations

import logging
import time

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.handlers import ERROR_TYPE_SCOPE_KEY, error_response
from service.api.metrics import UNMATCHED_ROUTE, Metrics
from service.errors import ErrorType

log = logging.getLogger(__name__)


def route_template(scope: Scope) -> str:
    """The path template of the route that served `scope`, or UNMATCHED_ROUTE; never the raw path."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_and_watch(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            status = 500
            if response_started:
                raise  # too late for an error body; the server closes the connection
            await error_response(ErrorType.INTERNAL, "internal error")(scope, receive, send)
        finally:
            self.metrics.observe_request(
                route_template(scope), status, time.perf_counter() - started
            )
            self.metrics.observe_rejection(status, scope.get(ERROR_TYPE_SCOPE_KEY))


class BodyLimitMiddleware:
    """413 `too_large` for bodies over `max_body_bytes`, checked when the route reads the body.

    A declared Content-Length over the limit fails the first read without reading anything; a
    body without one (chunked) or with a false one fails as soon as the bytes read pass the
    limit. Raising from `receive` lets the route's error handling answer (the metrics then see
    the route's template), and routes that read no body are unaffected.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        too_large = declared.isdigit() and int(declared) > self.max_body_bytes
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if too_large:
                raise self._error()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._error()
            return message

        await self.app(scope, limited_receive, send)

    def _error(self) -> StarletteHTTPException:
        # `Connection: close`: the server drops the connection after the 413 instead of reading
        # (and discarding) the rest of the body, so a client streaming 1 GB is cut off early.
        return StarletteHTTPException(
            413,
            f"request body is larger than {self.max_body_bytes} bytes (UNISERVE_MAX_BODY_BYTES)",
            headers={"Connection": "close"},
        )
