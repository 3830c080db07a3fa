"""POST /admin/reload and POST /admin/rollback: swap the live index version; POST
/admin/items/upsert and /admin/items/retire: change the live catalogue.

Both answer once the swap is done or refused: the version is loaded, checked and warmed in a
worker thread while the old one keeps serving, then swapped in. A refusal is 409
`index_rejected` naming the reason, and the old version keeps serving. Rollback takes an
optional body `{"to": "<version>"}`; the id must match `index.VERSION_ID_PATTERN` (422
otherwise, before any file is touched). The routes need `Authorization: Bearer
<UNISERVE_ADMIN_KEY>`, checked by `service.api.auth.AuthMiddleware` before they run; with no admin
key configured they answer 403.

Catalogue changes (`service.core.catalogue.LiveCatalogue`) answer once the change is fsynced in
the index root's change log and live on this replica: 422 for a bad body (features the live
model does not read included), 409 `delta_full` over UNISERVE_DELTA_MAX_ITEMS (nothing
applied), 409 `unservable` on a router.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Security

from service.api.auth import ADMIN_KEY
from service.api.deps import CatalogueDep, ReloaderDep, StateDep
from service.api.routes._json import StrictJSONRoute
from service.api.schemas import (
    CatalogueChangeResponse,
    ErrorBody,
    RetireRequest,
    RollbackRequest,
    SwapResponse,
    UpsertRequest,
)
from service.core.catalogue import ChangeOutcome
from service.core.reloader import ReloadError, SwapOutcome
from service.errors import ErrorType, ServiceError

ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 403, 409, 413, 422, 503)
}

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Security(ADMIN_KEY)],  # documents the scheme; AuthMiddleware enforces it
    responses=ADMIN_ERRORS,
    route_class=StrictJSONRoute,
)


async def _answer(swap: Awaitable[SwapOutcome]) -> SwapResponse:
    try:
        outcome = await swap
    except ReloadError as exc:
        raise ServiceError(ErrorType.INDEX_REJECTED, exc.message) from exc
    return SwapResponse(
        changed=outcome.changed,
        index_version=outcome.index_version,
        model_version=outcome.model_version,
        previous_index_version=outcome.previous_index_version,
        previous_model_version=outcome.previous_model_version,
    )


@router.post("/reload")
async def reload(reloader: ReloaderDep) -> SwapResponse:
    """Load the version CURRENT names (with its model when it needs another) and swap it in."""
    return await _answer(reloader.reload())


@router.post("/rollback")
async def rollback(reloader: ReloaderDep, req: RollbackRequest | None = None) -> SwapResponse:
    """Swap to `to`, or back to the newest older version that loads; point CURRENT at it."""
    return await _answer(reloader.rollback(req.to if req is not None else None))


@router.post("/items/upsert")
async def upsert_items(
    req: UpsertRequest, state: StateDep, catalogue: CatalogueDep
) -> CatalogueChangeResponse:
    """Make items retrievable now, with vectors from the live model; durable and shared."""
    req.check_limits(state.settings)
    return _changed(await catalogue.upsert([item.to_item() for item in req.items]))


@router.post("/items/retire")
async def retire_items(
    req: RetireRequest, state: StateDep, catalogue: CatalogueDep
) -> CatalogueChangeResponse:
    """Never return these items again (until upserted again); durable and shared."""
    req.check_limits(state.settings)
    return _changed(await catalogue.retire(req.item_ids))


def _changed(outcome: ChangeOutcome) -> CatalogueChangeResponse:
    return CatalogueChangeResponse(**dataclasses.asdict(outcome))
