"""One router per resource; `ROUTERS` is what the app factory mounts, in this order."""

from __future__ import annotations

from fastapi import APIRouter

from service.routes import admin, events, health, index, items, metrics, rank, retrieve, users

ROUTERS: tuple[APIRouter, ...] = (
    users.router,
    events.router,
    retrieve.router,
    rank.router,
    items.router,
    index.router,
    health.router,
    metrics.router,
    admin.router,
)
