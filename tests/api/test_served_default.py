"""A model trained with the defaults is served as offline scoring says: /v1/retrieve returns
the same top-k, with the same scores, as exact offline scoring of every item by the served
score (the model's inner product plus the blend's co-occurrence term, `models.blend`), here
recomputed by brute force from the training sequences; /v1/rank gives the same scores; with
the blend file removed, the model's vectors alone are served."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.blend import BETAS, NEIGHBOURS_FILE
from models.data import load_corpus
from models.embedder import Embedder
from service.cli import main as cli_main
from service.cli.common import print_report
from service.jobs.pipeline import build_and_publish
from service.settings import Settings


@pytest.fixture(scope="module")
def default_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("served") / "default"
    args = ["train", "--data", "sample", "--out", str(out), "--epochs", "2", "--quiet"]
    assert cli_main(args) == 0
    return out


def brute_force_cooccurrence(window: int) -> tuple[dict[str, dict[str, float]], list[str]]:
    """counts[a][b]: sum of 1 / gap over the sample's training sequences where b comes `gap`
    <= window events after a (a != b), counted one pair at a time."""
    corpus = load_corpus("sample")
    counts: dict[str, dict[str, float]] = {}
    for _, items, _ in corpus.train:
        items = [str(x) for x in items]
        for i, a in enumerate(items):
            for gap in range(1, window + 1):
                if i + gap < len(items) and items[i + gap] != a:
                    row = counts.setdefault(a, {})
                    row[items[i + gap]] = row.get(items[i + gap], 0.0) + 1.0 / gap
    return counts, [str(x) for x in corpus.items.item_id]


def offline_scores(embedder: Embedder, history: list[str], blend: dict | None) -> np.ndarray:
    """(N,) served scores of every model item for a history, computed without models.blend."""
    user = embedder.user_vectors([(np.asarray(history), np.asarray([""] * len(history)))])[0]
    scores = embedder.item_vectors() @ user  # (N,)
    if blend is None:
        return scores
    counts, _ = brute_force_cooccurrence(blend["window"])
    c = np.zeros(len(scores))
    row_of = {str(x): i for i, x in enumerate(embedder.item_ids)}
    for age, item in enumerate(reversed(history[-blend["last"] :])):
        for b, weight in counts.get(item, {}).items():
            c[row_of[b]] += blend["decay"] ** age * weight
    return scores + blend["beta"] * np.log1p(c)


async def check_served(
    served, embedder: Embedder, blend: dict | None, k: int = 10
) -> list[tuple[list[str], list[str]]]:
    """Retrieve (plain, then seen items and one surface filtered) and rank for three
    histories; every answer equal to offline scoring. Returns (served top-k, model-only
    top-k) per history."""
    ids = [str(x) for x in embedder.item_ids]
    surfaces = np.asarray(embedder.item_surfaces, dtype=str)
    seen_pairs = []
    for start in (0, 40, 300):
        history = ids[start : start + 7]
        events = [{"item_id": x} for x in history]
        scores = offline_scores(embedder, history, blend)  # (N,)
        top = np.argsort(-scores, kind="stable")[:k]
        resp = await served.client.post("/v1/retrieve", json={"events": events, "k": k})
        assert resp.status_code == 200, resp.text
        items = resp.json()["items"]
        assert [it["item_id"] for it in items] == [ids[i] for i in top]
        np.testing.assert_allclose([it["score"] for it in items], scores[top], rtol=1e-4, atol=1e-4)

        surface = surfaces[top[0]]  # filters apply to the blend's neighbours too
        eligible = (surfaces == surface) & ~np.isin(ids, history)
        filtered = np.flatnonzero(eligible)[np.argsort(-scores[eligible], kind="stable")][:k]
        body = {"events": events, "k": k, "surfaces": [surface], "exclude_seen": True}
        resp = await served.client.post("/v1/retrieve", json=body)
        assert resp.status_code == 200, resp.text
        assert [it["item_id"] for it in resp.json()["items"]] == [ids[i] for i in filtered]

        candidates = [ids[i] for i in (5, 17, 99, 250, 600)] + ["no-such-item"]
        resp = await served.client.post(
            "/v1/rank", json={"events": events, "candidates": candidates}
        )
        assert resp.status_code == 200, resp.text
        ranked = resp.json()
        assert ranked["unknown"] == ["no-such-item"]
        got = {it["item_id"]: it["score"] for it in ranked["items"]}
        want = {ids[i]: scores[i] for i in (5, 17, 99, 250, 600)}
        assert sorted(got) == sorted(want)
        np.testing.assert_allclose(
            [got[x] for x in want], list(want.values()), rtol=1e-4, atol=1e-4
        )
        model_only = offline_scores(embedder, history, None)
        seen_pairs.append(
            ([ids[i] for i in top], [ids[i] for i in np.argsort(-model_only, kind="stable")[:k]])
        )
    return seen_pairs


@pytest.mark.anyio
async def test_default_model_is_served_as_scored_offline(
    default_model: Path, tmp_path: Path, serve, capsys: pytest.CaptureFixture[str]
) -> None:
    config = json.loads((default_model / "config.json").read_text())
    race = config["training"]["norm_race"]  # the default races the two layouts
    assert race["kept"] in ("post", "pre") and race["epochs"] == 2
    assert len(race["post"]["full_seen_removed"]) == len(race["pre"]["full_seen_removed"]) == 2
    assert config["model"]["user"]["norm_first"] is (race["kept"] == "pre")
    capsys.readouterr()
    print_report(config)  # what `uniserve train` prints
    assert f"norm race over 2 epochs (post-norm {race['post']}" in capsys.readouterr().out
    assert config["training"]["loss"] == "full"  # 687 items: under the full-softmax limit
    blend = config["blend"]
    assert blend["beta"] > 0 and (default_model / NEIGHBOURS_FILE).is_file()
    assert blend["beta"] in BETAS[1:]
    by_beta = blend["valid_ndcg@10_by_beta"]
    assert by_beta[f"{blend['beta']:g}"] == max(by_beta.values()) > by_beta["0"]
    assert "model_alone" in config["metrics"] and "cooccurrence" in config["metrics"]

    root = tmp_path / "index"
    build_and_publish(default_model, root, index_type="Flat")
    embedder = Embedder.from_dir(default_model)
    assert embedder.blend is not None and embedder.blend.beta == blend["beta"]
    settings = Settings(
        data_dir=tmp_path / "data", model_dir=default_model, index_root=root, bootstrap=False
    )
    async with serve(settings) as served:
        pairs = await check_served(served, embedder, blend)
    # the blend changes what is served: some item of a served top-k is outside the model's
    # own top-k, so the search must have found it among the recent items' neighbours
    assert any(set(blended) - set(alone) for blended, alone in pairs)


@pytest.mark.anyio
async def test_a_model_without_its_blend_file_serves_its_vectors_alone(
    default_model: Path, tmp_path: Path, serve
) -> None:
    alone = tmp_path / "alone"
    shutil.copytree(default_model, alone)
    (alone / NEIGHBOURS_FILE).unlink()
    root = tmp_path / "index"
    build_and_publish(alone, root, index_type="Flat")
    embedder = Embedder.from_dir(alone)
    assert embedder.blend is None
    assert embedder.fingerprint != Embedder.from_dir(default_model).fingerprint
    settings = Settings(
        data_dir=tmp_path / "data", model_dir=alone, index_root=root, bootstrap=False
    )
    async with serve(settings) as served:
        pairs = await check_served(served, embedder, None)
    assert all(blended == model_only for blended, model_only in pairs)
