"""A model with categorical fields whose names sort before "surface" survives a save and load
(config.json is written with sorted keys, so the field order must not depend on the table's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.artifacts import load_model, save_model
from models.corpus import ItemTable
from models.features import FeatureSpec
from models.train import TrainConfig, train
from tests.models.test_models import _grouped_corpus


def test_feature_spec_field_order_is_the_order_a_saved_config_restores() -> None:
    items = ItemTable(
        np.array(["a", "b"], dtype=object),
        np.array(["s1", "s2"], dtype=object),
        categorical={
            "zone": np.array(["z1", "z2"], dtype=object),
            "brand": np.array(["acme", "bolt"], dtype=object),
        },
    )
    spec = FeatureSpec.from_table(items)
    assert list(spec.categorical) == ["brand", "surface", "zone"]


def test_a_model_with_a_brand_field_loads_and_scores_as_trained(tmp_path: Path) -> None:
    corpus = _grouped_corpus()
    n = len(corpus.items.item_id)
    corpus.items.categorical["brand"] = np.array([f"b{i % 5}" for i in range(n)], dtype=object)
    cfg = TrainConfig(dim=16, epochs=1, batch_size=32, max_len=10, max_steps=3, progress=False)
    trained = train(corpus, cfg)
    save_model(trained.model, trained.spec, trained.vocab, corpus.items, tmp_path, name="brand")
    model, spec, _, _ = load_model(tmp_path)
    assert list(spec.categorical) == list(trained.spec.categorical)
    ids = torch.arange(2, 10)
    with torch.no_grad():
        torch.testing.assert_close(model.item_vectors(ids), trained.model.item_vectors(ids))
