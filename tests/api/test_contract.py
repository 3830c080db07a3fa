"""The published API contract (issue 23): the OpenAPI document says what the server accepts now.

The document describes the live model (the metadata fields `features` accepts, by name and
kind, and the length of a shard search's `vector`) and follows a hot swap to a model with
other features and another dimension; a request the document allows but the current state
cannot serve is 409 `unservable`, never 422. Two tiny real models are trained on the shipped
sample with different item metadata; every request goes through the real app and its lifespan.
The schemathesis run over the whole document is
`tests/api/test_security.py::test_schemathesis_finds_no_server_error_or_schema_violation`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from models.corpus import ItemTable
from models.data import load_corpus
from models.train import TrainConfig
from service.api.schemas import MAX_VECTOR_DIM
from service.core.fanout import ShardFanout
from service.jobs.pipeline import build_and_publish, train_to_dir
from service.settings import Settings

if TYPE_CHECKING:
    from tests.conftest import Served, ServeFn

ADMIN_KEY = "contract-admin-key-5e4d3c2b1a"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
OTHER_MODEL = "0" * 64  # a fingerprint no model here has


@dataclasses.dataclass(frozen=True)
class Model:
    path: Path
    dim: int
    features: dict[str, str]  # what embed_items reads: name -> kind


def _train(
    out: Path, dim: int, seed: int, categorical: tuple[str, ...], text: tuple[str, ...]
) -> Model:
    """A tiny model on the shipped sample whose items carry the given metadata fields.

    Categorical names sort after "surface", in order: `models.artifacts` writes config.json
    with sorted keys, so a model whose categorical fields are in another order does not load
    (a models/ bug, outside this issue)."""
    corpus = load_corpus("sample")
    items = corpus.items
    n = len(items)
    rows = np.arange(n)
    metadata = ItemTable(
        items.item_id,
        items.surface,
        categorical={
            name: np.asarray([f"{name}{i % 5}" for i in rows], object) for name in categorical
        },
        text={name: np.asarray([f"w{i % 7} w{i % 11}" for i in rows], object) for name in text},
    )
    cfg = TrainConfig(dim=dim, num_layers=1, max_len=20, epochs=1, max_steps=2, seed=seed)
    train_to_dir(dataclasses.replace(corpus, items=metadata), cfg, out, evaluate=False)
    kinds = {**dict.fromkeys(categorical, "categorical"), **dict.fromkeys(text, "text")}
    return Model(out, dim, kinds)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Model, Model]:
    """Two models of other shapes: their features and their dimensions differ."""
    root = tmp_path_factory.mktemp("contract-models")
    first = _train(root / "tints", 32, 3, categorical=("tint",), text=("title",))
    second = _train(root / "vendors", 16, 4, categorical=("vendor", "weight"), text=())
    return first, second


def _settings(data: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "data_dir": data,
        "bootstrap": False,
        "admin_key": ADMIN_KEY,
        "index_poll_seconds": 0,
    }
    return Settings(**(base | overrides))


async def _document(served: Served) -> dict[str, Any]:
    resp = await served.client.get("/openapi.json")
    assert resp.status_code == 200, resp.text
    schemas: dict[str, Any] = resp.json()["components"]["schemas"]
    return schemas


def _assert_describes(schemas: dict[str, Any], model: Model) -> None:
    features = schemas["ItemIn"]["properties"]["features"]
    assert features["additionalProperties"] is False
    assert {name: f["x-feature-kind"] for name, f in features["properties"].items()} == (
        model.features
    )
    for field in features["properties"].values():  # a string (a number is read as its text)
        assert {branch["type"] for branch in field["anyOf"]} == {"string", "number"}
    vector = schemas["ShardSearchRequest"]["properties"]["vector"]
    assert vector["minItems"] == vector["maxItems"] == model.dim
    assert len(schemas["ShardSearchRequest"]["examples"][0]["vector"]) == model.dim
    embedding = schemas["UserEmbedResponse"]["properties"]["embedding"]
    embeddings = schemas["ItemEmbedResponse"]["properties"]["embeddings"]["items"]
    assert embedding["maxItems"] == embeddings["minItems"] == model.dim


async def _embed(served: Served, features: dict[str, str]) -> httpx.Response:
    return await served.client.post(
        "/v1/items/embed", json={"items": [{"surface": "1", "features": features}]}
    )


@pytest.mark.anyio
async def test_the_document_describes_the_live_model_and_follows_a_swap(
    models: tuple[Model, Model], tmp_path: Path, serve: ServeFn
) -> None:
    first, second = models
    data = tmp_path / "data"
    build_and_publish(first.path, data / "indexes", index_type="Flat")
    async with serve(_settings(data, model_dir=first.path)) as served:
        before = await _document(served)
        _assert_describes(before, first)
        # what the document allows is served, what it does not is 422
        ok = await _embed(served, {"tint": "tint1", "title": "w1 w3"})
        assert ok.status_code == 200, ok.text
        assert len(ok.json()["embeddings"][0]) == first.dim
        refused = await _embed(served, {"vendor": "vendor1"})
        assert refused.status_code == 422 and "unknown field(s) ['vendor']" in refused.text
        vector = {"vector": [0.1] * first.dim, "k": 3}
        assert (await served.client.post("/v1/shard/search", json=vector)).status_code == 200

        # a hot swap to a model with other features and another dimension
        manifest = build_and_publish(second.path, data / "indexes", index_type="Flat")
        swap = await served.client.post("/admin/reload", headers=ADMIN)
        assert swap.status_code == 200 and swap.json()["index_version"] == manifest.version
        after = await _document(served)
        _assert_describes(after, second)
        assert (await _embed(served, {"vendor": "vendor2", "weight": "weight0"})).status_code == 200
        old = await _embed(served, {"tint": "tint1"})
        assert old.status_code == 422 and "unknown field(s) ['tint']" in old.text
        wrong = await served.client.post("/v1/shard/search", json=vector)  # the old length
        assert wrong.status_code == 422 and "dimensions" in wrong.json()["error"]
        short = {"vector": [0.1] * second.dim, "k": 3}
        assert (await served.client.post("/v1/shard/search", json=short)).status_code == 200

        # only the model's part changed: the settings' limits are in both documents
        for schemas in (before, after):
            assert schemas["RetrieveRequest"]["properties"]["k"]["maximum"] == 1000
            assert schemas["ItemEmbedRequest"]["properties"]["items"]["maxItems"] == 1000
        model_part = {
            "ItemIn",
            "UpsertItem",  # POST /admin/items/upsert: the same features as items/embed
            "ItemEmbedRequest",
            "ShardSearchRequest",
            "UserEmbedResponse",
            "ItemEmbedResponse",
        }
        assert all(before[name] != after[name] for name in model_part)
        for schemas in (before, after):
            upsert, embed = schemas["UpsertItem"], schemas["ItemIn"]
            assert upsert["properties"]["features"] == embed["properties"]["features"]
        assert {k: v for k, v in after.items() if k not in model_part} == {
            k: v for k, v in before.items() if k not in model_part
        }

        # and back: the document is the first model's again
        back = await served.client.post("/admin/rollback", headers=ADMIN)
        assert back.status_code == 200, back.text
        assert await _document(served) == before


@pytest.mark.anyio
async def test_a_model_without_metadata_accepts_only_empty_features(api: Served) -> None:
    schemas = await _document(api)
    item = schemas["ItemIn"]
    assert item["properties"]["features"]["properties"] == {}
    assert item["properties"]["features"]["additionalProperties"] is False
    # "an item_id, a surface or non-empty features": features alone cannot name an item here
    assert [branch["required"] for branch in item["anyOf"]] == [["item_id"], ["surface"]]
    resp = await api.client.post("/v1/items/embed", json={"items": [{"features": {"0": "1"}}]})
    assert resp.status_code == 422, resp.text  # the case schemathesis found: now off the document
    ok = await api.client.post(
        "/v1/items/embed", json={"items": [{"surface": "1", "features": {}}]}
    )
    assert ok.status_code == 200, ok.text


@pytest.mark.anyio
async def test_before_the_model_loads_the_document_is_the_generic_one(
    tmp_path: Path, serve: ServeFn
) -> None:
    async with serve(_settings(tmp_path / "empty")) as served:
        assert (await served.client.get("/readyz")).status_code == 503
        schemas = await _document(served)
    features = schemas["ItemIn"]["properties"]["features"]
    assert "properties" not in features and isinstance(features["additionalProperties"], dict)
    assert schemas["ShardSearchRequest"]["properties"]["vector"]["maxItems"] == MAX_VECTOR_DIM


# ---------------------------------------------------------------------------- 409 unservable
def _assert_unservable(resp: httpx.Response, *phrases: str) -> None:
    assert resp.status_code == 409, resp.text
    body = resp.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == "unservable"
    for phrase in phrases:
        assert phrase in body["error"]


@pytest.mark.anyio
async def test_mode_multi_without_a_multi_vector_index_is_409(api: Served) -> None:
    body = {"events": [{"item_id": "1"}], "k": 5, "mode": "multi"}
    _assert_unservable(await api.client.post("/v1/retrieve", json=body), "--mode multi")
    bad = await api.client.post("/v1/retrieve", json={**body, "mode": "many"})
    assert bad.status_code == 422  # off the document: still invalid input
    # the document documents the 409 where it can happen
    paths = (await api.client.get("/openapi.json")).json()["paths"]
    assert "409" in paths["/v1/retrieve"]["post"]["responses"]
    assert "409" in paths["/v1/shard/search"]["post"]["responses"]


@pytest.mark.anyio
async def test_a_router_answers_409_for_what_needs_a_local_index(
    uniserve_data_dir: Path, serve: ServeFn
) -> None:
    from models.embedder import Embedder

    model = Embedder.from_dir(uniserve_data_dir / "model")
    # no shard is contacted for any of these: the router refuses before a fan-out
    settings = _settings(uniserve_data_dir, shard_urls="http://127.0.0.1:9")
    async with serve(settings) as router:
        assert (await router.client.get("/readyz")).status_code == 200
        retrieve = {"events": [{"item_id": "1"}], "k": 5, "mode": "multi"}
        _assert_unservable(await router.client.post("/v1/retrieve", json=retrieve), "router")
        search = {"vector": [0.1] * model.dim, "k": 5}
        _assert_unservable(await router.client.post("/v1/shard/search", json=search), "router")
        for admin in ("/admin/reload", "/admin/rollback"):
            _assert_unservable(await router.client.post(admin, headers=ADMIN), "router")
        # the router's model defines its document
        vector = (await _document(router))["ShardSearchRequest"]["properties"]["vector"]
        assert vector["maxItems"] == model.dim


@pytest.mark.anyio
async def test_a_shard_refuses_a_router_of_another_model_with_409(api: Served) -> None:
    engine = api.state.engine
    assert engine is not None
    own = engine.manifest.model_fingerprint
    body = {"vector": [0.1] * engine.dim, "k": 3}
    _assert_unservable(
        await api.client.post(
            "/v1/shard/search", json={**body, "model_fingerprints": [OTHER_MODEL]}
        ),
        "model_fingerprints",
    )
    mine = await api.client.post(
        "/v1/shard/search", json={**body, "model_fingerprints": [OTHER_MODEL, own]}
    )
    assert mine.status_code == 200 and len(mine.json()["items"]) == 3
    # a vector off the document is 422 whatever the fingerprints say
    short = {**body, "vector": [0.1], "model_fingerprints": [OTHER_MODEL]}
    assert (await api.client.post("/v1/shard/search", json=short)).status_code == 422
    bad = await api.client.post(
        "/v1/shard/search", json={**body, "model_fingerprints": ["not-a-fingerprint"]}
    )
    assert bad.status_code == 422

    # a router of another model sends its fingerprints: the shard refuses, the router leaves
    # it out (missing), as any shard that answers an error
    fanout = ShardFanout(
        ["http://shard"], 10, model_fingerprints=[OTHER_MODEL], transport=_asgi(api)
    )
    try:
        merged = await fanout.search(np.full(engine.dim, 0.1, np.float32), 3)
    finally:
        await fanout.aclose()
    assert merged.missing == [0] and merged.item_ids == []
    status = fanout.status[0]
    assert (
        status.outcome == "error" and "HTTP 409" in status.detail and "unservable" in status.detail
    )


def _asgi(served: Served) -> httpx.AsyncBaseTransport:
    return httpx.ASGITransport(app=served.app)
