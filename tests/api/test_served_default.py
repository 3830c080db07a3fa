"""A model trained with the new defaults (post-norm blocks, full softmax on the sample's small
catalogue, early stopping on validation) is served: /v1/retrieve returns the same top-k, with the
same scores, as exact offline scoring of its user vector against every item vector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.embedder import Embedder
from service.cli import main as cli_main
from service.jobs.pipeline import build_and_publish
from service.settings import Settings


@pytest.mark.anyio
async def test_default_model_retrieve_equals_offline_top_k(tmp_path: Path, serve, capsys) -> None:
    out = tmp_path / "default"
    args = ["train", "--data", "sample", "--out", str(out), "--epochs", "2", "--quiet"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "cooccurrence" in printed and "full_seen_removed" in printed  # both baselines
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["user"]["norm_first"] is False  # the new default layout
    assert config["training"]["loss"] == "full"  # 687 items: under the full-softmax limit
    root = tmp_path / "index"
    build_and_publish(out, root, index_type="Flat")
    embedder = Embedder.from_dir(out)
    settings = Settings(data_dir=tmp_path / "data", model_dir=out, index_root=root, bootstrap=False)
    histories = [embedder.item_ids[i : i + 7] for i in (0, 40, 300)]
    async with serve(settings) as served:
        for history in histories:
            events = [{"item_id": str(x)} for x in history]
            resp = await served.client.post("/v1/retrieve", json={"events": events, "k": 10})
            assert resp.status_code == 200, resp.text
            items = resp.json()["items"]
            user = embedder.user_vectors([(np.asarray(history), np.asarray([""] * 7))])[0]
            scores = embedder.item_vectors() @ user  # (N,) exact offline scores
            top = np.argsort(-scores, kind="stable")[:10]
            assert [it["item_id"] for it in items] == [str(embedder.item_ids[i]) for i in top]
            np.testing.assert_allclose(
                [it["score"] for it in items], scores[top], rtol=1e-4, atol=1e-5
            )
