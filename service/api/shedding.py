"""Early load shedding: 429 `overloaded` before a compute request's body is read.

The batchers' bounded queues (`service.core.batcher`) reject work the model cannot take, but only
after the request has been read, parsed and validated on the event loop, which is the
expensive part on a small machine: under overload those requests queue *in front of* the
batchers, on the loop, and a rejection arrives as late as a success would. `ShedMiddleware`
counts the compute requests in progress (received and not yet answered) and rejects a new one
at once, from its headers alone, while `max_pending` are in progress. By Little's law that
bounds the time an admitted request waits to about `max_pending` / throughput, and a rejection
costs the loop a fraction of a served request, so the service keeps its throughput under
twice its sustainable load instead of slowing every request down.

Only the routes that run the model or the index are counted and shed; probes, metrics, admin
and event ingestion never are.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.handlers import ERROR_TYPE_SCOPE_KEY, error_response
from service.errors import ErrorType

# POST routes that compute (user encoder, item encoder, index); all have literal paths.
COMPUTE_ROUTES = frozenset(
    {"/v1/retrieve", "/v1/users/embed", "/v1/rank", "/v1/items/embed", "/v1/shard/search"}
)
_RETRY_AFTER = {"Retry-After": "1"}  # seconds: a shed request may be retried soon


@dataclass(frozen=True)
class ShedRoute:
    """What the metrics middleware reads as `scope["route"]` (its `path` is the template) for a
    request answered before routing."""

    path: str


class PendingLimit:
    """How many compute requests are in progress, and whether one more may start; one per app
    state, shared by the public and admin listeners."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the pending-request limit must be >= 1, got {limit}")
        self.limit = limit
        self.pending = 0

    def try_enter(self) -> bool:
        if self.pending >= self.limit:
            return False
        self.pending += 1
        return True

    def leave(self) -> None:
        self.pending -= 1


class ShedMiddleware:
    def __init__(self, app: ASGIApp, limit: PendingLimit) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path") if scope["type"] == "http" else None
        if path not in COMPUTE_ROUTES or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        if not self.limit.try_enter():
            scope["route"] = ShedRoute(path)
            scope[ERROR_TYPE_SCOPE_KEY] = ErrorType.OVERLOADED.value
            message = (
                f"{self.limit.pending} requests are in progress (UNISERVE_MAX_PENDING_REQUESTS="
                f"{self.limit.limit}); retry shortly"
            )
            await error_response(ErrorType.OVERLOADED, message, _RETRY_AFTER)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.limit.leave()
