"""Request and response bodies of the v1 HTTP API (pydantic v2).

Requests forbid unknown fields. Ids (user, item, surface) may be JSON strings or integers and are
always strings inside the service and in responses; booleans, floats, null and empty strings are
rejected. Limits that come from settings (k, events, candidates, items per request) are checked
by `check_limits`, since request models are defined at import time and settings are not.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from service.errors import ErrorType, ServiceError
from service.events import Event
from service.settings import Settings

MAX_ID_CHARS = 256  # longest id accepted, so ids cannot bloat keys and logs


def _json_type(value: Any) -> str:
    return {
        bool: "boolean",
        float: "number",
        type(None): "null",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _to_id(value: Any) -> str:
    if isinstance(value, str):
        if not value:
            raise PydanticCustomError("empty_id", "must not be an empty string")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise PydanticCustomError(
        "id_type", "must be a string or an integer, got {kind}", {"kind": _json_type(value)}
    )


def _to_feature(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise PydanticCustomError(
        "feature_type", "must be a string or a number, got {kind}", {"kind": _json_type(value)}
    )


Id = Annotated[
    str,
    BeforeValidator(_to_id),
    Field(max_length=MAX_ID_CHARS),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
                {"type": "integer"},
            ]
        }
    ),
]
FeatureValue = Annotated[
    str,
    BeforeValidator(_to_feature),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}]}),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _too_many(field: str, got: int, limit: int, setting: str) -> ServiceError:
    return ServiceError(
        ErrorType.INVALID_INPUT,
        f"{field}: {got} given, at most {limit} allowed (UNISERVE_{setting.upper()})",
    )


# ---------------------------------------------------------------------------- requests
class EventIn(_Strict):
    item_id: Id
    surface: Id | None = None  # None when unknown
    ts: float | None = Field(None, allow_inf_nan=False)  # caller's timestamp, seconds

    def to_event(self) -> Event:
        return Event(self.item_id, self.surface or "", self.ts)


class _UserRequest(_Strict):
    """A user given by id (stored events), by events, or both (stored events first)."""

    user_id: Id | None = None
    events: list[EventIn] | None = Field(None, min_length=1)  # oldest first

    @model_validator(mode="after")
    def _user_or_events(self) -> _UserRequest:
        if self.user_id is None and self.events is None:
            raise PydanticCustomError("no_user", "give a user_id, events, or both")
        return self

    def request_events(self) -> list[Event] | None:
        return None if self.events is None else [e.to_event() for e in self.events]

    def check_limits(self, settings: Settings) -> None:
        if self.events is not None and len(self.events) > settings.max_events:
            raise _too_many("events", len(self.events), settings.max_events, "max_events")


class UserEmbedRequest(_UserRequest):
    pass


class EventsRequest(_Strict):
    user_id: Id
    events: list[EventIn] = Field(min_length=1)  # oldest first

    def check_limits(self, settings: Settings) -> None:
        if len(self.events) > settings.max_events:
            raise _too_many("events", len(self.events), settings.max_events, "max_events")


class RetrieveRequest(_UserRequest):
    k: StrictInt = Field(ge=1)
    surfaces: list[Id] | None = Field(None, min_length=1)  # None = every surface
    exclude: list[Id] = Field(default_factory=list)  # item ids never returned; unknown ignored
    exclude_seen: StrictBool = False  # also exclude every item in the user's history

    def check_limits(self, settings: Settings) -> None:
        super().check_limits(settings)
        if self.k > settings.max_k:
            raise ServiceError(
                ErrorType.INVALID_INPUT,
                f"k: {self.k} is above the limit of {settings.max_k} (UNISERVE_MAX_K)",
            )
        if len(self.exclude) > settings.max_candidates:
            raise _too_many("exclude", len(self.exclude), settings.max_candidates, "max_candidates")


class RankRequest(_UserRequest):
    candidates: list[Id] = Field(min_length=1)

    def check_limits(self, settings: Settings) -> None:
        super().check_limits(settings)
        if len(self.candidates) > settings.max_candidates:
            raise _too_many(
                "candidates", len(self.candidates), settings.max_candidates, "max_candidates"
            )


class ItemIn(_Strict):
    item_id: Id | None = None  # known id: adds its learnt embedding; absent/unknown: cold start
    surface: Id | None = None
    features: dict[str, FeatureValue] = Field(default_factory=dict)  # field -> value

    @model_validator(mode="after")
    def _something_to_embed(self) -> ItemIn:
        if self.item_id is None and self.surface is None and not self.features:
            raise PydanticCustomError("empty_item", "give an item_id, a surface or features")
        return self

    def to_spec(self) -> tuple[str | None, str | None, dict[str, str]]:
        return self.item_id, self.surface, self.features


class ItemEmbedRequest(_Strict):
    items: list[ItemIn] = Field(min_length=1)

    def check_limits(self, settings: Settings) -> None:
        if len(self.items) > settings.max_items:
            raise _too_many("items", len(self.items), settings.max_items, "max_items")


# ---------------------------------------------------------------------------- responses
class ScoredItem(_Strict):
    item_id: str
    score: float


class UserEmbedResponse(_Strict):
    embedding: list[float]
    model_version: str


class EventsResponse(_Strict):
    user_id: str
    stored: int  # events now stored for the user (bounded by UNISERVE_EVENTS_MAX_PER_USER)


class RetrieveResponse(_Strict):
    items: list[ScoredItem]  # score descending, distinct
    model_version: str
    index_version: str


class RankResponse(_Strict):
    items: list[ScoredItem]  # score descending, each known candidate once
    unknown: list[str]  # candidates not in the model's catalogue
    model_version: str
    index_version: str  # the model+index pair that served the request


class ItemEmbedResponse(_Strict):
    embeddings: list[list[float]]
    model_version: str


class IndexInfo(_Strict):
    model_version: str
    model_fingerprint: str
    index_version: str
    index_type: str
    metric: str
    dim: int
    count: int
    search_params: dict[str, int]
    recall_at_10: float | None
    created_at: str
    age_seconds: float  # since the index version was created (built)
    loaded_at: str  # when this process swapped it in, ISO-8601 UTC


class SwapResponse(_Strict):
    """Answer of POST /admin/reload and POST /admin/rollback."""

    changed: bool  # false: the version asked for was already live
    index_version: str  # live now
    model_version: str
    previous_index_version: str | None
    previous_model_version: str | None


class Health(_Strict):
    status: str


class Readiness(_Strict):
    status: str
    model_version: str
    index_version: str


class ErrorBody(_Strict):
    error: str
    error_type: ErrorType


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (404, 413, 422, 429, 503)
}
