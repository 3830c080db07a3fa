"""Online quality's admin routes: POST /admin/shadow (load or unload the shadow model),
GET /admin/online (matched events and hits per version), POST /admin/promote (the gated
promotion: the shadow becomes live and CURRENT only when its online HR@10 wins; otherwise a
refusal with both rates, the counts and the p-value). Behind the admin key, like admin.py.
A promotion answers 200 either way (`promoted` says which); 409 `unservable` without a shadow
(or in router mode), 409 `index_rejected` when the swap itself is refused.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Security

from service.api.auth import ADMIN_KEY
from service.api.deps import ReloaderDep, StateDep
from service.api.online_schemas import (
    OnlineResponse,
    PromoteRequest,
    PromotionResponse,
    ShadowRequest,
    ShadowResponse,
    VersionTally,
)
from service.api.routes._json import StrictJSONRoute
from service.api.routes.admin import ADMIN_ERRORS
from service.api.state import AppState
from service.core import promotion
from service.core.online import K_LABELS
from service.core.reloader import ReloadError, reason_of
from service.core.shadow import ShadowSlot
from service.errors import ErrorType, ServiceError

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Security(ADMIN_KEY)],
    responses=ADMIN_ERRORS,
    route_class=StrictJSONRoute,
)


def _slot(state: AppState) -> ShadowSlot:
    if state.shadow is None:
        raise ServiceError(ErrorType.UNSERVABLE, "a router has no local index: no shadow model")
    return state.shadow


def _shadow_body(slot: ShadowSlot | None) -> ShadowResponse:
    shadow = slot.shadow if slot is not None else None
    if shadow is None:
        return ShadowResponse(index_version=None, model_version=None, sample=None)
    return ShadowResponse(
        index_version=shadow.index_version,
        model_version=shadow.model_version,
        sample=shadow.sample,
    )


@router.post("/shadow")
async def load_shadow(state: StateDep, req: ShadowRequest) -> ShadowResponse:
    """Load a published version of the live index root as the shadow (replacing any other),
    or unload it (`version` null). A version that does not load is 409, the live one unaffected."""
    slot = _slot(state)
    if req.version is None:
        await slot.unload()
        return _shadow_body(slot)
    try:
        await slot.load(req.version, sample=req.sample)
    except Exception as exc:
        message = f"shadow {req.version!r} refused ({reason_of(exc).value}): {exc}"
        log.warning("%s", message)
        raise ServiceError(ErrorType.INDEX_REJECTED, message) from exc
    return _shadow_body(slot)


@router.get("/online")
async def online(state: StateDep) -> OnlineResponse:
    """Matched events and hits per version (role live or shadow) since this replica started."""
    tracker = state.online
    versions = []
    if tracker is not None:
        tally = tracker.tally
        for version, events in sorted(tally.events.items()):
            hits = {k: tally.hits.get((version, k), 0) for k in K_LABELS}
            versions.append(VersionTally(**version._asdict(), events=events, hits=hits))
    return OnlineResponse(
        window_seconds=state.settings.online_window_seconds,
        pending=tracker.work.pending if tracker is not None else 0,
        shadow=_shadow_body(state.shadow),
        versions=versions,
    )


@router.post("/promote")
async def promote(
    state: StateDep, reloader: ReloaderDep, req: PromoteRequest | None = None
) -> PromotionResponse:
    """Make the shadow live and CURRENT when its online HR@10 beats the live one's with a
    one-sided test at `confidence` over at least `min_events` matched events each."""
    settings, tracker = state.settings, state.online
    if tracker is None:
        raise ServiceError(
            ErrorType.UNSERVABLE, "online quality is off (UNISERVE_ONLINE_WINDOW_SECONDS=0)"
        )
    req = req or PromoteRequest()
    try:
        decision = await promotion.promote(
            tracker,
            reloader,
            _slot(state),
            min_events=req.min_events or settings.promote_min_events,
            confidence=req.confidence or settings.promote_confidence,
        )
    except ReloadError as exc:
        raise ServiceError(ErrorType.INDEX_REJECTED, exc.message) from exc
    state.metrics.online.observe_decision(decision)
    body = decision.as_dict()
    return PromotionResponse(promoted=body.pop("promote"), **body)
