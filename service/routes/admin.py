"""POST /admin/reload and POST /admin/rollback: swap the live index version.

Both answer once the swap is done or refused: the version is loaded, checked and warmed in a
worker thread while the old one keeps serving, then swapped in. A refusal is 409
`index_rejected` naming the reason, and the old version keeps serving. The routes need
`Authorization: Bearer <UNISERVE_ADMIN_TOKEN>`; with no token configured they answer 403.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header

from service.deps import ReloaderDep, SettingsDep
from service.errors import ErrorType, ServiceError
from service.reloader import ReloadError, SwapOutcome
from service.schemas import ErrorBody, SwapResponse

ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 403, 409, 503)
}


def require_admin(
    settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    """403 while no admin token is configured; 401 unless the request bears it."""
    if settings.admin_token is None:
        raise ServiceError(
            ErrorType.FORBIDDEN,
            "admin routes are disabled: set UNISERVE_ADMIN_TOKEN (16+ characters) and send "
            "it as 'Authorization: Bearer <token>'",
        )
    scheme, _, given = (authorization or "").partition(" ")
    expected = settings.admin_token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), expected):
        raise ServiceError(
            ErrorType.UNAUTHORIZED,
            "send the admin token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


router = APIRouter(
    prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)], responses=ADMIN_ERRORS
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
async def rollback(reloader: ReloaderDep) -> SwapResponse:
    """Swap back to the newest older version that loads, and point CURRENT at it."""
    return await _answer(reloader.rollback())
