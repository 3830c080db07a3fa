"""Request and response bodies of the v1 HTTP API (pydantic v2).

Requests forbid unknown fields. Ids (user, item, surface) may be JSON strings or integers (within
±(2**53 - 1); 5.0 counts as 5, as in JSON Schema) and are always strings inside the service and
in responses; booleans, fractional numbers, null and empty strings are rejected. Limits that come
from settings (k, events, candidates, items per request) are checked by `check_limits`, since
request models are defined at import time and settings are not; `settings_limits` puts them
into the OpenAPI document. Fixed bounds (id and feature lengths, features per item, surfaces per
request) are in the models themselves.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictFloat,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.config import JsonDict, JsonValue
from pydantic_core import PydanticCustomError

from index.paths import MAX_VERSION_CHARS, VERSION_ID_PATTERN
from service.errors import ErrorType, ServiceError
from service.settings import Settings
from service.store.changelog import CatalogueItem
from service.store.events import Event

MAX_ID_CHARS = 256  # longest id accepted, so ids cannot bloat keys and logs
# Integer ids are exact in every JSON parser (IEEE doubles): |id| < 2**53.
MIN_INT_ID, MAX_INT_ID = -(2**53 - 1), 2**53 - 1
# Fixed bounds on what one request may hold besides the settings' limits (k, events, candidates,
# items): each keeps the work and memory of a request proportional to what it is for.
MAX_SURFACES = 1000  # surfaces one retrieve may filter on
MAX_SHARD_HISTORY = 100  # recent item ids a router sends a shard for the blend's term
MAX_FEATURES = 64  # metadata fields of one item
MAX_FEATURE_CHARS = 10_000  # one metadata value (a title, a description)
MAX_VECTOR_DIM = 65_536  # dimensions of a user vector sent to POST /v1/shard/search
# |value| of one of its dimensions: far beyond any model's output, and small enough that the
# vector stays finite in float32, its norm and its inner products included
MAX_VECTOR_VALUE = 1e15
MAX_MODEL_FINGERPRINTS = 16  # models a shard search may say its vector can query


def _json_type(value: Any) -> str:
    return {
        bool: "boolean",
        float: "number",
        type(None): "null",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _integral(value: Any) -> Any:
    """A float with no fractional part as an int (JSON Schema counts 5.0 as an integer)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_INT_ID:
        return int(value)
    return value


def _to_int(value: Any) -> int:
    value = _integral(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise PydanticCustomError(
        "int_type", "must be an integer, got {kind}", {"kind": _json_type(value)}
    )


def _to_id(value: Any) -> str:
    if isinstance(value, str):
        if not value:
            raise PydanticCustomError("empty_id", "must not be an empty string")
        return value
    value = _integral(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if not MIN_INT_ID <= value <= MAX_INT_ID:
            raise PydanticCustomError(
                "id_range", "an integer id must be within ±(2**53 - 1); send larger ids as strings"
            )
        return str(value)
    raise PydanticCustomError(
        "id_type", "must be a string or an integer, got {kind}", {"kind": _json_type(value)}
    )


def _to_number(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise PydanticCustomError(
        "number_type", "must be a number, got {kind}", {"kind": _json_type(value)}
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
                {"type": "integer", "minimum": MIN_INT_ID, "maximum": MAX_INT_ID},
            ]
        }
    ),
]
FeatureValue = Annotated[
    str,
    BeforeValidator(_to_feature),
    Field(max_length=MAX_FEATURE_CHARS),
    WithJsonSchema(
        {"anyOf": [{"type": "string", "maxLength": MAX_FEATURE_CHARS}, {"type": "number"}]}
    ),
]
VectorValue = Annotated[
    float,
    BeforeValidator(_to_number),
    Field(ge=-MAX_VECTOR_VALUE, le=MAX_VECTOR_VALUE),
    WithJsonSchema({"type": "number", "minimum": -MAX_VECTOR_VALUE, "maximum": MAX_VECTOR_VALUE}),
]
FeatureName = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
Fingerprint = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]  # sha256, hex
VersionId = Annotated[
    str, Field(min_length=1, max_length=MAX_VERSION_CHARS, pattern=VERSION_ID_PATTERN)
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
    # caller's timestamp, seconds; strict: true / "1.5" are not numbers
    ts: StrictFloat | None = Field(None, allow_inf_nan=False)

    def to_event(self) -> Event:
        return Event(self.item_id, self.surface or "", self.ts)


def _one_of_given(*fields: str, non_empty: str | None = None) -> dict[str, Any]:
    """JSON schema: at least one of `fields` present and not null (`non_empty`: and not {})."""

    def given(name: str) -> dict[str, Any]:
        rule: dict[str, Any] = {"not": {"type": "null"}}
        if name == non_empty:
            rule["minProperties"] = 1
        return {"required": [name], "properties": {name: rule}}

    return {"anyOf": [given(name) for name in fields]}


def _user_schema(*examples: JsonDict) -> ConfigDict:
    """The config of a request naming a user: a user id or events, with examples (the
    OpenAPI document's; unknown item ids are tolerated, so they hold for every model)."""
    return ConfigDict(
        extra="forbid",
        json_schema_extra={**_one_of_given("user_id", "events"), "examples": list(examples)},
    )


EXAMPLE_EVENTS: list[JsonValue] = [
    {"item_id": "42", "surface": "1"},
    {"item_id": "7", "ts": 1_700_000_000.0},
]


class _UserRequest(_Strict):
    """A user given by id (stored events), by events, or both (stored events first)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_of_given("user_id", "events"))
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
    model_config = _user_schema({"events": EXAMPLE_EVENTS}, {"user_id": "u1", "multi": True})
    multi: StrictBool = False  # also return the user's interest vectors (multi-vector mode)


class EventsRequest(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"user_id": "u1", "events": EXAMPLE_EVENTS}]},
    )
    user_id: Id
    events: list[EventIn] = Field(min_length=1)  # oldest first

    def check_limits(self, settings: Settings) -> None:
        if len(self.events) > settings.max_events:
            raise _too_many("events", len(self.events), settings.max_events, "max_events")


class RetrieveRequest(_UserRequest):
    model_config = _user_schema(
        {"events": EXAMPLE_EVENTS, "k": 10},
        {"user_id": "u1", "k": 5, "surfaces": ["1"], "exclude": ["42"], "exclude_seen": True},
    )
    k: Annotated[int, BeforeValidator(_to_int)] = Field(ge=1)
    surfaces: list[Id] | None = Field(None, min_length=1, max_length=MAX_SURFACES)  # None = all
    exclude: list[Id] = Field(default_factory=list)  # item ids never returned; unknown ignored
    exclude_seen: StrictBool = False  # also exclude every item in the user's history
    # single: ANN search with the user vector; multi: MUVERA candidates re-ranked by exact
    # Chamfer similarity of the user's interest vectors with the items' multi-vectors (needs an
    # index built with `uniserve build-index --mode multi`)
    mode: Literal["single", "multi"] = "single"

    def check_limits(self, settings: Settings) -> None:
        super().check_limits(settings)
        if self.k > settings.max_k:
            raise ServiceError(
                ErrorType.INVALID_INPUT,
                f"k: {self.k} is above the limit of {settings.max_k} (UNISERVE_MAX_K)",
            )
        if len(self.exclude) > settings.max_candidates:
            raise _too_many("exclude", len(self.exclude), settings.max_candidates, "max_candidates")


class ShardSearchRequest(_Strict):
    """Body of POST /v1/shard/search: what a router sends each shard replica."""

    # user vector (D,); the document says the live model's D (service.api.document)
    vector: list[VectorValue] = Field(min_length=1, max_length=MAX_VECTOR_DIM)
    k: Annotated[int, BeforeValidator(_to_int)] = Field(ge=1)
    surfaces: list[Id] | None = Field(None, min_length=1, max_length=MAX_SURFACES)  # None = all
    exclude: list[Id] = Field(default_factory=list)  # the retrieve's exclude and seen items
    # the user's most recent item ids, oldest first: a shard whose model is served with a
    # blend (models/blend.py) adds their co-occurrence term, as an unsharded retrieve does
    history: list[Id] = Field(default_factory=list, max_length=MAX_SHARD_HISTORY)
    # the models whose indexes the vector can query (a router's own model and those it was
    # trained compatible with); a live index built for another model answers 409 unservable.
    # None: not checked (the caller checks the `model_fingerprint` of the answer)
    model_fingerprints: list[Fingerprint] | None = Field(
        None, min_length=1, max_length=MAX_MODEL_FINGERPRINTS
    )

    def check_limits(self, settings: Settings, dim: int) -> None:
        if len(self.vector) != dim:
            raise ServiceError(
                ErrorType.INVALID_INPUT,
                f"vector: {len(self.vector)} dimensions given, the model's user vectors have "
                f"{dim} (is the router serving another model than this shard?)",
            )
        if self.k > settings.max_k:
            raise ServiceError(
                ErrorType.INVALID_INPUT,
                f"k: {self.k} is above the limit of {settings.max_k} (UNISERVE_MAX_K)",
            )
        limit = shard_exclude_limit(settings)
        if len(self.exclude) > limit:
            raise ServiceError(
                ErrorType.INVALID_INPUT,
                f"exclude: {len(self.exclude)} given, at most {limit} allowed "
                "(UNISERVE_MAX_CANDIDATES + UNISERVE_MAX_EVENTS + UNISERVE_EVENTS_MAX_PER_USER: "
                "a retrieve's exclude list and the user's seen items)",
            )

    def check_model(self, index_fingerprint: str) -> None:
        """`unservable` unless the vector's model can query an index built for that model."""
        if self.model_fingerprints is not None and index_fingerprint not in self.model_fingerprints:
            raise ServiceError(
                ErrorType.UNSERVABLE,
                f"the live index was built for model {index_fingerprint[:12]}..., which the "
                "sender's vectors cannot query (model_fingerprints: "
                + ", ".join(f"{f[:12]}..." for f in self.model_fingerprints)
                + "); serve the shard's model on the router, or this model's index here",
            )


def shard_exclude_limit(settings: Settings) -> int:
    """Ids a shard search may exclude: a retrieve's own limit plus every item a user may have
    seen (stored events and the request's), which `exclude_seen` adds."""
    return settings.max_candidates + settings.max_events + settings.events_max_per_user


class RankRequest(_UserRequest):
    model_config = _user_schema({"events": EXAMPLE_EVENTS, "candidates": ["42", "7", "1001"]})
    candidates: list[Id] = Field(min_length=1)

    def check_limits(self, settings: Settings) -> None:
        super().check_limits(settings)
        if len(self.candidates) > settings.max_candidates:
            raise _too_many(
                "candidates", len(self.candidates), settings.max_candidates, "max_candidates"
            )


class ItemIn(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=_one_of_given("item_id", "surface", "features", non_empty="features"),
    )

    item_id: Id | None = None  # known id: adds its learnt embedding; absent/unknown: cold start
    surface: Id | None = None
    features: dict[FeatureName, FeatureValue] = Field(default_factory=dict, max_length=MAX_FEATURES)

    @model_validator(mode="after")
    def _something_to_embed(self) -> ItemIn:
        if self.item_id is None and self.surface is None and not self.features:
            raise PydanticCustomError("empty_item", "give an item_id, a surface or features")
        return self

    def to_spec(self) -> tuple[str | None, str | None, dict[str, str]]:
        return self.item_id, self.surface, self.features


class ItemEmbedRequest(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"items": [{"item_id": "42"}, {"surface": "1"}]}]},
    )
    items: list[ItemIn] = Field(min_length=1)

    def check_limits(self, settings: Settings) -> None:
        if len(self.items) > settings.max_items:
            raise _too_many("items", len(self.items), settings.max_items, "max_items")


class RollbackRequest(_Strict):
    """Body of POST /admin/rollback; without one, the newest older version that loads."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"to": "20250601T120000000000Z-1a2b3c"}]}
    )

    to: VersionId  # the version to make live and CURRENT


class UpsertItem(_Strict):
    """An item of POST /admin/items/upsert: its vector is computed by the live model (the
    id's learnt embedding when the model knows the id, else metadata only, as for a catalogue
    item `build-index` encodes)."""

    item_id: Id
    surface: Id | None = None
    features: dict[FeatureName, FeatureValue] = Field(default_factory=dict, max_length=MAX_FEATURES)

    def to_item(self) -> CatalogueItem:
        return CatalogueItem(self.item_id, self.surface, self.features)


class UpsertRequest(_Strict):
    """Body of POST /admin/items/upsert; an id given twice: the later one wins."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"items": [{"item_id": "new-1", "surface": "1"}]}]},
    )
    items: list[UpsertItem] = Field(min_length=1)

    def check_limits(self, settings: Settings) -> None:
        if len(self.items) > settings.max_items:
            raise _too_many("items", len(self.items), settings.max_items, "max_items")


class RetireRequest(_Strict):
    """Body of POST /admin/items/retire."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"item_ids": ["42", "new-1"]}]}
    )
    item_ids: list[Id] = Field(min_length=1)

    def check_limits(self, settings: Settings) -> None:
        if len(self.item_ids) > settings.max_candidates:
            raise _too_many(
                "item_ids", len(self.item_ids), settings.max_candidates, "max_candidates"
            )


# ---------------------------------------------------------------------------- the fast lane's
# The hot requests again with string ids only, which pydantic-core checks without calling Python
# (`Id` calls `_to_id` per id: two calls per event, 100 for a 50-event history, about half of
# a retrieve's validation time). `service.api.fastlane` tries these first and the models above when
# they refuse a body (integer ids, and every invalid body), so no answer or error message
# changes: a body either validates to equal values under both or goes to the model above.
# tests/api/test_fastlane.py checks that on generated bodies.
StrId = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]


class StrIdEventIn(EventIn):
    item_id: StrId
    surface: StrId | None = None


class _StrIdUser(_UserRequest):
    user_id: StrId | None = None
    # narrower items than the base's list[EventIn]; the lists are only read
    events: list[StrIdEventIn] | None = Field(None, min_length=1)  # type: ignore[assignment]


class StrIdUserEmbedRequest(_StrIdUser, UserEmbedRequest):
    pass


class StrIdEventsRequest(EventsRequest):
    user_id: StrId
    events: list[StrIdEventIn] = Field(min_length=1)  # type: ignore[assignment]


class StrIdRetrieveRequest(_StrIdUser, RetrieveRequest):
    surfaces: list[StrId] | None = Field(None, min_length=1, max_length=MAX_SURFACES)
    exclude: list[StrId] = Field(default_factory=list)


class StrIdRankRequest(_StrIdUser, RankRequest):
    candidates: list[StrId] = Field(min_length=1)


STR_ID_MODELS: dict[type[BaseModel], type[BaseModel]] = {
    UserEmbedRequest: StrIdUserEmbedRequest,
    EventsRequest: StrIdEventsRequest,
    RetrieveRequest: StrIdRetrieveRequest,
    RankRequest: StrIdRankRequest,
}


def settings_limits(settings: Settings) -> dict[str, dict[str, dict[str, int]]]:
    """The settings' per-request limits as JSON-schema keywords by request model and field, for
    the OpenAPI document (the models are built at import, before any settings exist)."""
    events = {"events": {"maxItems": settings.max_events}}
    return {
        "UserEmbedRequest": events,
        "EventsRequest": events,
        "RetrieveRequest": {
            **events,
            "k": {"maximum": settings.max_k},
            "exclude": {"maxItems": settings.max_candidates},
        },
        "RankRequest": {**events, "candidates": {"maxItems": settings.max_candidates}},
        "ItemEmbedRequest": {"items": {"maxItems": settings.max_items}},
        "UpsertRequest": {"items": {"maxItems": settings.max_items}},
        "RetireRequest": {"item_ids": {"maxItems": settings.max_candidates}},
        "ShardSearchRequest": {
            "k": {"maximum": settings.max_k},
            "exclude": {"maxItems": shard_exclude_limit(settings)},
        },
    }


# ---------------------------------------------------------------------------- responses
class ScoredItem(_Strict):
    item_id: str
    score: float


class UserEmbedResponse(_Strict):
    embedding: list[float]
    interests: list[list[float]] | None = None  # with "multi": true, interest 0 = embedding
    model_version: str


class EventsResponse(_Strict):
    user_id: str
    stored: int  # events now stored for the user (bounded by UNISERVE_EVENTS_MAX_PER_USER)


class RetrieveResponse(_Strict):
    items: list[ScoredItem]  # score descending, distinct
    model_version: str
    index_version: str  # router mode: the answering shards' versions joined by "+"
    # router mode only: true when shards were left out (timed out or failed), named by their
    # position in UNISERVE_SHARD_URLS; a partial answer holds the top-k of the other shards
    partial: bool | None = None
    missing_shards: list[int] | None = None


class ShardSearchResponse(_Strict):
    items: list[ScoredItem]  # score descending, the shard's k best eligible items
    model_version: str
    model_fingerprint: str  # of the model the index was built for
    index_version: str
    shard: dict[str, Any] | None  # the manifest's extra["shard"]; None: an unsharded index


class RankResponse(_Strict):
    items: list[ScoredItem]  # score descending, each known candidate once
    unknown: list[str]  # candidates neither the model, the live index nor its delta holds
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


class ShardReport(_Strict):
    """What a router knows of one shard: what it last reported and how its last call went."""

    shard: int  # position in UNISERVE_SHARD_URLS
    url: str
    outcome: str  # of the last call: ok, timeout, error; unknown before the first
    index_version: str | None  # of the last successful answer
    spec: dict[str, Any] | None  # the shard's manifest extra["shard"] (index, count, build_id)
    detail: str  # why the last call failed; "" after a success
    reported_at: str | None  # when the last call ended, ISO-8601 UTC


class RouterInfo(_Strict):
    """GET /v1/index in router mode: the model and the shard replicas."""

    mode: Literal["router"]
    model_version: str
    model_fingerprint: str
    index_version: str  # the shards' last reported versions joined by "+"
    shard_timeout_seconds: float
    shards: list[ShardReport]


class SwapResponse(_Strict):
    """Answer of POST /admin/reload and POST /admin/rollback."""

    changed: bool  # false: the version asked for was already live
    index_version: str  # live now
    model_version: str
    previous_index_version: str | None
    previous_model_version: str | None


class CatalogueChangeResponse(_Strict):
    """Answer of POST /admin/items/upsert and /admin/items/retire, sent once the change is
    in the change log (fsynced) and live on this replica."""

    upserted: int  # items upserted by this call
    retired: int  # ids retired by this call
    delta_size: int  # distinct items changed since the live index version was built
    index_version: str  # the live version the change was applied to
    seq: int  # the change's sequence number in the index root's change log


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
# routes whose valid requests the replica's state may keep it from serving (409 unservable)
STATE_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    409: {"model": ErrorBody},
}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 403)}
