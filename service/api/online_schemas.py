"""Request and response models of the online-quality admin routes (`routes/online.py`):
loading a shadow, the online tally, and a promotion decision."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from service.api.schemas import VersionId, _Strict


class ShadowRequest(_Strict):
    """Body of POST /admin/shadow: the version to load as the shadow (`null`: unload it)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"version": "20250601T120000000000Z-1a2b3c", "sample": 0.1}]
        },
    )

    version: VersionId | None  # a published version under the live index root
    sample: Annotated[float, Field(ge=0.0, le=1.0)] | None = None  # default UNISERVE_SHADOW_SAMPLE


class ShadowResponse(_Strict):
    """The shadow now loaded (all null when none)."""

    index_version: str | None
    model_version: str | None
    sample: float | None


class PromoteRequest(_Strict):
    """Body of POST /admin/promote; each field defaults to its UNISERVE_PROMOTE_* setting."""

    min_events: Annotated[int, Field(ge=1, le=100_000_000)] | None = None
    confidence: Annotated[float, Field(ge=0.5, lt=1.0)] | None = None


class Arm(_Strict):
    """One side of a promotion decision: its versions and online HR@10 counts."""

    model_version: str
    index_version: str
    events: int  # matched events
    hits: int  # of which hits at 10
    hit_rate: float


class PromotionResponse(_Strict):
    """A promotion decision: promoted (the shadow is live and CURRENT now) or refused."""

    promoted: bool
    reason: str
    live: Arm
    shadow: Arm
    p_value: float  # one-sided two-proportion z-test, H1: shadow HR@10 > live HR@10
    confidence: float
    min_events: int


class VersionTally(_Strict):
    role: str  # live or shadow
    model_version: str
    index_version: str
    events: int
    hits: dict[str, int]  # k ("1", "5", "10", "served") -> hits


class OnlineResponse(_Strict):
    """Answer of GET /admin/online: matched events and hits per version since startup."""

    window_seconds: float
    pending: int  # background pieces queued or running
    shadow: ShadowResponse
    versions: list[VersionTally]
