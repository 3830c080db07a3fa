"""MUVERA multi-vector retrieval end to end: FDE candidates + exact Chamfer re-ranking
(`index/multi.py`), multi-vector users and items (`models/multi.py`), `uniserve build-index
--mode multi`, and POST /v1/retrieve with mode "multi" driven through the real app.

The retrieval test checks FDE retrieval + re-ranking against brute-force Chamfer top-10 on
seeded clustered point clouds; the API tests run the session's sample model over an index
published by the real CLI with `--mode multi`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch

from index import FDEConfig, build_multi_index, load_current, open_multi
from index.chamfer import chamfer, chamfer_topk
from index.multi import MULTI_FILES
from models.multi import interest_positions
from service.api.schemas import RetrieveResponse, UserEmbedResponse

if TYPE_CHECKING:
    from tests.conftest import Served, ServeFn

K = 10
# recall@10 of FDE retrieval (20 repetitions x 2^3 partitions x identity 16 = 2560 dims,
# exhaustive FDE search) + exact re-ranking of 200 candidates, against brute-force Chamfer
# top-10, on 2000 clustered documents of 2-8 vectors and 50 queries of 1-6 vectors in 16 dims.
# Measured 0.964-0.988 over seeds 0-5; random candidates (200 of 2000) would give about 0.1.
MIN_RECALL = 0.9


def clustered(
    rng: np.random.Generator, count: int, lo: int, hi: int, centres: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(count, hi, d) unit vectors around `centres`, padded, and their (count, hi) mask."""
    d = centres.shape[1]
    x = np.zeros((count, hi, d), np.float32)
    mask = np.zeros((count, hi), bool)
    for i in range(count):
        n = int(rng.integers(lo, hi + 1))
        v = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.standard_normal((n, d))
        x[i, :n] = v / np.linalg.norm(v, axis=1, keepdims=True)
        mask[i, :n] = True
    return x, mask


# ---------------------------------------------------------------------------- retrieval vs exact
@pytest.mark.parametrize("seed", [0, 1])
def test_fde_retrieval_and_rerank_recall_against_exact_chamfer(seed: int) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((32, 16))
    docs, dmask = clustered(rng, 2000, 2, 8, centres)
    queries, qmask = clustered(rng, 50, 1, 6, centres)
    config = FDEConfig(20, 3, seed=seed)
    ids = [f"item-{i}" for i in range(len(docs))]
    multi = build_multi_index(docs, dmask, ids, config=config, index_type="Flat")
    _, exact = chamfer_topk(queries, docs, K, qmask, dmask)
    scores, rows = multi.search(queries, K, query_mask=qmask, candidates=200)
    recall = np.mean([len(set(r) & set(e)) / K for r, e in zip(rows, exact, strict=True)])
    assert recall >= MIN_RECALL, recall
    # returned scores are the exact Chamfer similarities of the returned rows, descending
    full = chamfer(queries, docs, qmask, dmask)
    np.testing.assert_allclose(scores, np.take_along_axis(full, rows, axis=1), rtol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_multi_search_honours_the_filter_and_returns_k_when_k_are_eligible() -> None:
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((8, 8))
    docs, dmask = clustered(rng, 300, 1, 4, centres)
    queries, qmask = clustered(rng, 5, 1, 3, centres)
    multi = build_multi_index(
        docs, dmask, [str(i) for i in range(300)], config=FDEConfig(4, 2, seed=1)
    )
    allowed = np.zeros(300, bool)
    allowed[rng.choice(300, 12, replace=False)] = True
    _, rows = multi.search(queries, K, query_mask=qmask, candidates=5, allowed=allowed)
    assert (rows >= 0).all() and allowed[rows].all()
    assert all(len(set(r)) == K for r in rows)
    _, rows = multi.search(queries, 20, query_mask=qmask, allowed=allowed)  # only 12 eligible
    assert ((rows >= 0).sum(axis=1) == 12).all()


def test_interest_positions_take_the_last_event_then_each_surface_then_segments() -> None:
    # left-padded: 2 pads, then surfaces 1 1 2 1 3 1 (most recent last)
    surfaces = np.array([[0, 0, 1, 1, 2, 1, 3, 1]])
    mask = surfaces > 0
    pos, valid = interest_positions(surfaces, mask, 4)
    assert valid.all()
    assert pos[0].tolist()[:3] == [7, 6, 4]  # last event, last of surface 3, last of surface 2
    _, empty_valid = interest_positions(np.zeros((1, 3), int), np.zeros((1, 3), bool), 2)
    assert empty_valid.tolist() == [[True, False]]
    with pytest.raises(ValueError, match="0"):
        interest_positions(surfaces, mask, 0)


# ---------------------------------------------------------------------------- build + API
@pytest.fixture(scope="module")
def multi_settings(uniserve_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Settings of an app serving the session's sample model over an index published by
    `uniserve build-index --mode multi` (the real CLI)."""
    from service.cli import main
    from service.settings import Settings

    root = tmp_path_factory.mktemp("multi-index") / "indexes"
    model = uniserve_data_dir / "model"
    argv = ["build-index", "--model", str(model), "--index-root", str(root), "--mode", "multi"]
    assert main([*argv, "--type", "Flat", "--seed", "5", "--quiet"]) == 0
    return Settings(
        data_dir=uniserve_data_dir,
        model_dir=model,
        index_root=root,
        bootstrap=False,
        multi_candidates=50,
    )


@pytest.fixture
async def multi_api(serve: ServeFn, multi_settings: Any) -> AsyncIterator[Served]:
    async with serve(multi_settings) as served:
        yield served


def events(served: Served, n: int = 8) -> list[dict[str, str]]:
    engine = served.state.engine
    assert engine is not None
    ids, surfaces = engine.index.item_ids, engine.index.surfaces
    rows = np.arange(n) * 11 % len(ids)
    return [{"item_id": str(ids[r]), "surface": str(surfaces[r] or "feed")} for r in rows]


async def retrieve_multi(served: Served, **body: Any) -> RetrieveResponse:
    resp = await served.client.post("/v1/retrieve", json={**body, "mode": "multi"})
    assert resp.status_code == 200, resp.text
    out = RetrieveResponse.model_validate(resp.json())
    scores = [it.score for it in out.items]
    assert scores == sorted(scores, reverse=True)
    assert len({it.item_id for it in out.items}) == len(out.items)
    return out


def test_build_index_mode_multi_records_the_fde_config_and_seed(multi_settings: Any) -> None:
    index, manifest = load_current(multi_settings.index_path)
    muvera = manifest.extra["muvera"]
    assert muvera["fde_config"]["seed"] == muvera["seed"] == 5
    assert FDEConfig.from_dict(muvera["fde_config"]).output_dim(index.dim) == muvera["fde_dim"]
    assert set(MULTI_FILES) <= set(manifest.files)  # every file hashed
    assert 0.0 <= muvera["recall_at_10"] <= 1.0
    multi = open_multi(multi_settings.index_path, manifest, index)
    assert multi is not None and multi.count == index.count
    assert multi.fde_index.item_ids.tolist() == index.item_ids.tolist()


@pytest.mark.anyio
async def test_multi_mode_returns_k_items_scored_by_exact_chamfer(multi_api: Served) -> None:
    evs = events(multi_api)
    out = await retrieve_multi(multi_api, events=evs, k=K)
    assert len(out.items) == K
    engine = multi_api.state.engine
    assert engine is not None and engine.multi is not None
    assert out.index_version == engine.index_version
    history = ([e["item_id"] for e in evs], [e["surface"] for e in evs])
    vecs, mask = engine.embedder.user_multi_vectors([history], 4)
    rows = engine.index.row_of([it.item_id for it in out.items])
    exact = chamfer(vecs, engine.multi.vectors[rows], mask, engine.multi.mask[rows])[0]
    np.testing.assert_allclose([it.score for it in out.items], exact, rtol=1e-4, atol=1e-5)
    metrics = (await multi_api.client.get("/metrics")).text
    assert 'stage="rerank"' in metrics
    single = await multi_api.client.post("/v1/retrieve", json={"events": evs, "k": K})
    assert single.status_code == 200 and len(single.json()["items"]) == K  # single still served


@pytest.mark.anyio
async def test_multi_mode_honours_surface_and_exclude_filters(multi_api: Served) -> None:
    engine = multi_api.state.engine
    assert engine is not None
    ids, surfaces = engine.index.item_ids, engine.index.surfaces
    surface_of = dict(zip(ids.tolist(), surfaces.tolist(), strict=True))
    counts = Counter(surfaces.tolist())
    rare = min((s for s, c in counts.items() if c >= K), key=lambda s: counts[s])
    evs = events(multi_api)
    out = await retrieve_multi(multi_api, events=evs, k=K, surfaces=[rare])
    assert len(out.items) == K and {surface_of[it.item_id] for it in out.items} == {rare}
    top = [it.item_id for it in (await retrieve_multi(multi_api, events=evs, k=K)).items]
    out = await retrieve_multi(multi_api, events=evs, k=K, exclude=top)
    assert len(out.items) == K and not set(top) & {it.item_id for it in out.items}
    out = await retrieve_multi(multi_api, events=evs, k=K, exclude_seen=True)
    seen = {e["item_id"] for e in evs}
    assert len(out.items) == K and not seen & {it.item_id for it in out.items}
    k_all = counts[rare] + 3  # more than the surface holds: all of them, none elsewhere
    out = await retrieve_multi(multi_api, events=evs, k=k_all, surfaces=[rare])
    assert sorted(it.item_id for it in out.items) == sorted(ids[surfaces == rare].tolist())


@pytest.mark.anyio
async def test_users_embed_multi_returns_interests(multi_api: Served) -> None:
    evs = events(multi_api, 12)
    resp = await multi_api.client.post("/v1/users/embed", json={"events": evs, "multi": True})
    assert resp.status_code == 200, resp.text
    out = UserEmbedResponse.model_validate(resp.json())
    assert out.interests is not None and 1 <= len(out.interests) <= 4
    np.testing.assert_allclose(out.interests[0], out.embedding, rtol=1e-5, atol=1e-6)
    plain = await multi_api.client.post("/v1/users/embed", json={"events": evs})
    assert "interests" not in plain.json()


@pytest.mark.anyio
async def test_multi_mode_on_an_index_without_multi_vectors_is_a_clear_409(api: Served) -> None:
    # valid (the document allows mode "multi"), but this index cannot serve it: 409, not 422
    resp = await api.client.post(
        "/v1/retrieve", json={"events": [{"item_id": "x"}], "k": K, "mode": "multi"}
    )
    assert resp.status_code == 409, resp.text
    body = resp.json()
    assert body["error_type"] == "unservable" and "--mode multi" in body["error"]
    bad = await api.client.post(
        "/v1/retrieve", json={"events": [{"item_id": "x"}], "k": K, "mode": "many"}
    )
    assert bad.status_code == 422 and bad.json()["error_type"] == "invalid_input"


def test_item_facets_add_up_to_the_served_vector(uniserve_data_dir: Path) -> None:
    from models.embedder import Embedder

    emb = Embedder.from_dir(uniserve_data_dir / "model")
    vecs, mask = emb.item_multi_vectors(batch_size=100)
    served = emb.item_vectors()
    np.testing.assert_allclose(vecs[:, 0], served, atol=1e-5)
    parts = np.where(mask[:, 1:, None], vecs[:, 1:], 0.0).sum(axis=1)
    np.testing.assert_allclose(parts, served, atol=1e-5)
    histories = [(emb.item_ids[:5].tolist(), ["feed"] * 5)]
    interests, imask = emb.user_multi_vectors(histories, 3)
    np.testing.assert_allclose(interests[0, 0], emb.user_vectors(histories)[0], atol=1e-5)
    assert imask[0, 0] and torch.is_tensor(torch.from_numpy(interests))
