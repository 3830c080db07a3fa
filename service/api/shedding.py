"""Early load shedding: 429 `overloaded` before a compute request's body is read.

The batchers' bounded queues (`service.core.batcher`) reject work the model cannot take, but only
after the request has been read, parsed and validated on the event loop, which is the
expensive part on a small machine: under overload those requests queue *in front of* the
batchers, on the loop, and a rejection arrives as late as a success would. `ShedMiddleware`
counts the compute requests in progress (received and not yet answered) and rejects a new one
at once, from its headers alone, while the limit's worth are in progress. By Little's law that
bounds the time an admitted request waits to about the limit / throughput, and a rejection
costs the loop a fraction of a served request, so the service keeps its throughput under
twice its sustainable load instead of slowing every request down.

Only the routes that run the model or the index are counted and shed; probes, metrics, admin
and event ingestion never are.

How many may be in progress is `state.pending`, a `service.core.limit` object: by default
(`UNISERVE_ADMISSION=adaptive`) sized from the completion rate and latency this process
measures, so it sheds at the knee of whatever machine it runs on; `fixed`:
`UNISERVE_MAX_PENDING_REQUESTS`. The middleware reports each admitted request's entry and answer
times to it, and `watch_loop` how late the event loop runs (while shedding load, the adaptive
limit keeps that under `UNISERVE_ADMISSION_LAG_MS`, since a 429 waits for the loop like any
request); either way a rejection is decided from a counter, before the body is read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.handlers import ERROR_TYPE_SCOPE_KEY, error_response
from service.core.limit import Limit
from service.errors import ErrorType

# POST routes that compute (user encoder, item encoder, index); all have literal paths.
COMPUTE_ROUTES = frozenset(
    {"/v1/retrieve", "/v1/users/embed", "/v1/rank", "/v1/items/embed", "/v1/shard/search"}
)
_RETRY_AFTER = {"Retry-After": "1"}  # seconds: a shed request may be retried soon
TICK_S = 0.002  # how often `watch_loop` ticks (500 wake-ups a second)


@dataclass(frozen=True)
class ShedRoute:
    """What the metrics middleware reads as `scope["route"]` (its `path` is the template) for a
    request answered before routing."""

    path: str


class ShedMiddleware:
    def __init__(self, app: ASGIApp, limit: Limit) -> None:
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
                f"{self.limit.pending} requests are in progress ({self.limit.describe()}); "
                "retry shortly"
            )
            await error_response(ErrorType.OVERLOADED, message, _RETRY_AFTER)(scope, receive, send)
            return
        started = perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.limit.leave(started, perf_counter())


async def watch_loop(
    limit: Limit, observe: Callable[[float], None], interval: float = TICK_S
) -> None:
    """Tick on the event loop every `interval` seconds until cancelled, telling `limit` and
    `observe` how late (seconds) each tick ran: what any request, a 429 included, waits for the
    loop before its first line runs."""
    while True:
        start = perf_counter()
        await asyncio.sleep(interval)
        late = max(0.0, perf_counter() - start - interval)
        limit.note_lag(late)
        observe(late)
