"""One router per resource, grouped by who may reach them and on which listener.

`API_ROUTERS` (/v1, behind the API key when one is set) and `PROBE_ROUTERS` (/healthz, /readyz)
are what the public listener serves; `OPS_ROUTERS` (/metrics, /admin) join them on the full app,
which is the only app when no admin port is set and the admin listener's app when one is.
"""

from __future__ import annotations

from fastapi import APIRouter

from service.api.routes import (
    admin,
    events,
    health,
    index,
    items,
    metrics,
    online,
    rank,
    retrieve,
    shard,
    users,
)

API_ROUTERS: tuple[APIRouter, ...] = (
    users.router,
    events.router,
    retrieve.router,
    rank.router,
    items.router,
    index.router,
    shard.router,
)
PROBE_ROUTERS: tuple[APIRouter, ...] = (health.router,)
OPS_ROUTERS: tuple[APIRouter, ...] = (metrics.router, admin.router, online.router)
ROUTERS = API_ROUTERS + PROBE_ROUTERS + OPS_ROUTERS
