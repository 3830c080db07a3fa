"""The OpenAPI document of the live app: what the server accepts now, exactly.

FastAPI builds a generic document from the request models, which exist before any settings or
model. `install_document` replaces `app.openapi` with one that writes into it what decides
whether a request is served: the settings' limits (k, events, candidates, items, exclusions:
`schemas.settings_limits`) and the live model's shape (`ModelShape`: the metadata fields
`features` may hold, by name and kind, the length of a shard search's `vector` and of the user
and item vectors answered). The document is cached and rebuilt when the live model's shape
differs from the one it was built for: the first load (before it, the document describes the
generic shape) or a hot swap to a model with other features or another dimension; no hook in
the reloader is needed. In router mode the router's model defines it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from service.api.schemas import MAX_FEATURE_CHARS, settings_limits
from service.core.engine import ModelEngine
from service.settings import Settings

# what a metadata field of each kind does with its value (models.features.FeatureSpec)
KIND_DESCRIPTIONS = {
    "categorical": "categorical: one value of the model's vocabulary for this field; a value "
    "outside it counts as missing",
    "text": "text: a bag of whitespace-separated words, hashed; unseen words still count",
}


@dataclass(frozen=True)
class ModelShape:
    """What of a model the document depends on: its vector dimension and the metadata fields
    its item encoder reads, (name, kind) in the model's order."""

    dim: int
    features: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, engine: ModelEngine) -> ModelShape:
        return cls(engine.dim, tuple(engine.item_features.items()))


def feature_schema(kind: str) -> dict[str, Any]:
    """A metadata value of that kind: a string (numbers are read as their text)."""
    return {
        "anyOf": [{"type": "string", "maxLength": MAX_FEATURE_CHARS}, {"type": "number"}],
        "description": KIND_DESCRIPTIONS.get(kind, kind),
        "x-feature-kind": kind,
    }


def describe_model(components: Mapping[str, Any], shape: ModelShape) -> None:
    """Write the model's shape into the document's component schemas, in place."""
    item = components["ItemIn"]
    for model in ("ItemIn", "UpsertItem"):  # the metadata of items/embed and items/upsert
        if model not in components:
            continue
        features = components[model]["properties"]["features"]
        features.pop("propertyNames", None)
        features["properties"] = {name: feature_schema(kind) for name, kind in shape.features}
        features["additionalProperties"] = False
    if shape.features:
        example = {name: "example" for name, _ in shape.features}
        components["ItemEmbedRequest"].setdefault("examples", []).append(
            {"items": [{"surface": "1", "features": example}]}
        )
    else:  # only {} is valid: "features, not empty" cannot name an item
        item["anyOf"] = [
            branch for branch in item["anyOf"] if branch.get("required") != ["features"]
        ]
    shard = components["ShardSearchRequest"]
    vector = shard["properties"]["vector"]
    vector["minItems"] = vector["maxItems"] = shape.dim
    shard["examples"] = [{"vector": [0.1] * shape.dim, "k": 10}]
    # and what comes back: user and item vectors of the model's dimension
    embedding = components["UserEmbedResponse"]["properties"]["embedding"]
    embeddings = components["ItemEmbedResponse"]["properties"]["embeddings"]["items"]
    for vectors in (embedding, embeddings):
        vectors["minItems"] = vectors["maxItems"] = shape.dim


def describe_limits(components: Mapping[str, Any], settings: Settings) -> None:
    """Write the settings' limits into the document's component schemas, in place."""
    for model, fields in settings_limits(settings).items():
        properties = components.get(model, {}).get("properties", {})
        for name, keywords in fields.items():
            field = properties.get(name, {})
            for branch in field.get("anyOf", [field]):  # the array / integer branch
                if branch.get("type") in ("array", "integer"):
                    branch.update(keywords)


def install_document(
    app: FastAPI, settings: Settings, live: Callable[[], ModelEngine | None]
) -> None:
    """Serve `app`'s OpenAPI document with the settings' limits and the shape of the model
    `live()` returns (the generic shape while it returns None), rebuilt when that shape
    changes."""
    build = app.openapi  # FastAPI's: the generic document, cached in app.openapi_schema
    built_for: list[ModelShape | None] = []  # the shape the cached document describes

    def openapi() -> dict[str, Any]:
        engine = live()
        shape = None if engine is None else ModelShape.of(engine)
        if app.openapi_schema is None or built_for != [shape]:
            app.openapi_schema = None
            document = copy.deepcopy(build())  # FastAPI's cache is replaced below
            components = document.get("components", {}).get("schemas", {})
            describe_limits(components, settings)
            if shape is not None:
                describe_model(components, shape)
            app.openapi_schema, built_for[:] = document, [shape]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
