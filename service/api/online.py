"""Wiring of online quality for the lifespan: the served-list store (in Redis when the app's
cache is, else in process), the tracker reporting to the metrics, and the shadow slot with the
shadow `UNISERVE_SHADOW_VERSION` names loaded at startup (a shadow that does not load is logged
and left out: the live service starts and serves as without it)."""

from __future__ import annotations

import logging

from service.api.state import AppState
from service.core.online import OnlineTracker, VersionKey
from service.core.shadow import ShadowSlot
from service.store.served import InProcessServedStore, ServedStore

log = logging.getLogger(__name__)


def make_online(state: AppState) -> OnlineTracker | None:
    """The tracker (None when `online_window_seconds` is 0), with a shadow slot unless in
    router mode; both also put on `state`."""
    settings, metrics = state.settings, state.metrics.online
    if not settings.shards:
        state.shadow = ShadowSlot(
            settings,
            on_outcome=metrics.observe_shadow,
            on_change=metrics.shadow_changed,
            # the shadow yields while live requests fill half their admission limit or more
            live_busy=lambda: 2 * state.pending.pending >= state.pending.limit,
        )
    if settings.online_window_seconds <= 0:
        return None
    store: ServedStore
    if state.redis is not None:
        from service.store.redis_served import RedisServedStore

        store = RedisServedStore(
            state.redis,
            max_lists=settings.online_max_lists,
            window_seconds=settings.online_window_seconds,
        )
    else:
        store = InProcessServedStore(
            max_lists=settings.online_max_lists,
            max_users=settings.online_max_users,
            window_seconds=settings.online_window_seconds,
        )
    tracker = state.online = OnlineTracker(
        store,
        window_seconds=settings.online_window_seconds,
        max_pending=settings.online_queue_size,
        budget=state.redis.budget if state.redis is not None else None,
        on_match=metrics.observe_match,
        on_drop=metrics.observe_drop,
        on_served=metrics.track_version,
        shadow=state.shadow,
    )
    metrics.pending.set_function(lambda: tracker.work.pending)
    metrics.track_catalogue(lambda: state.engine)
    if (live := state.engine) is not None:  # its series at 0 from the first scrape
        metrics.track_version(VersionKey("live", live.model_version, live.index_version))
    return tracker


async def load_configured_shadow(state: AppState) -> None:
    """Load `shadow_version` as the shadow, when set and the live engine is loaded."""
    settings = state.settings
    if state.shadow is None or settings.shadow_version is None:
        return
    try:
        await state.shadow.load(settings.shadow_version, root=settings.shadow_index_root)
    except Exception as exc:
        log.error("shadow %r not loaded: %s; serving without it", settings.shadow_version, exc)


async def close_online(state: AppState) -> None:
    if state.online is not None:
        await state.online.aclose()
    if state.shadow is not None:
        await state.shadow.unload()
