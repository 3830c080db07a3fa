"""Encoders, training, evaluation and model artifacts, on real torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.artifacts import load_model, model_fingerprint, read_config, save_model
from models.corpus import Corpus, EvalSet, ItemTable, Sequences
from models.embedder import Embedder
from models.evaluate import evaluate_model, evaluate_popularity, metrics_from_ranks
from models.item_encoder import UNK_ID
from models.train import TrainConfig, build_model, train
from models.user_encoder import UserEncoder, UserEncoderConfig

N_GROUPS = 20
GROUP_SIZE = 25


def _grouped_corpus(seed: int = 0) -> Corpus:
    """Items belong to topical groups named by a title word; users stay inside one group.

    The title is the only thing a brand-new item shares with its group, so it tests the
    metadata (cold-start) path of the item encoder.
    """
    rng = np.random.default_rng(seed)
    n_items = N_GROUPS * GROUP_SIZE
    item_ids = np.array([f"i{i}" for i in range(n_items)], dtype=object)
    titles = np.array([f"topic{i // GROUP_SIZE} item{i}" for i in range(n_items)], dtype=object)
    surfaces = np.array([f"s{i % 3}" for i in range(n_items)], dtype=object)
    items = ItemTable(item_ids, surfaces, text={"title": titles})
    users, seqs = [], []
    for u in range(400):
        g = rng.integers(N_GROUPS)
        members = rng.integers(g * GROUP_SIZE, (g + 1) * GROUP_SIZE, size=rng.integers(8, 30))
        users.append(f"u{u}")
        seqs.append([f"i{m}" for m in members])
    train_seqs = Sequences.from_lists(
        users[:300],
        [s for s in seqs[:300]],
        [[f"s{int(x[1:]) % 3}" for x in s] for s in seqs[:300]],
    )
    hist = [s[:-1] for s in seqs[300:]]
    history = Sequences.from_lists(
        users[300:], hist, [[f"s{int(x[1:]) % 3}" for x in s] for s in hist]
    )
    targets = np.array([s[-1] for s in seqs[300:]], dtype=object)
    test = EvalSet(
        history,
        targets,
        np.array(["s0"] * 100, dtype=object),
        np.array(["all"] * 100, dtype=object),
    )
    return Corpus("grouped", items, train_seqs, test, test)


@pytest.fixture(scope="module")
def grouped() -> Corpus:
    return _grouped_corpus()


@pytest.fixture(scope="module")
def trained(grouped: Corpus):
    return train(
        grouped,
        TrainConfig(dim=32, epochs=8, batch_size=32, num_negatives=128, max_len=20, progress=False),
    )


def _encoder(seed: int = 0) -> UserEncoder:
    torch.manual_seed(seed)
    return UserEncoder(
        UserEncoderConfig(num_surfaces=4, dim=16, num_heads=2, max_len=12, dropout=0.0)
    ).eval()


def test_user_encoder_shapes() -> None:
    enc = _encoder()
    x = torch.randn(3, 7, 16)
    surfaces = torch.randint(0, 4, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.bool)
    assert enc(x, surfaces, mask).shape == (3, 7, 16)
    assert enc.encode(x, surfaces, mask).shape == (3, 16)


def test_user_encoder_is_causal() -> None:
    enc = _encoder()
    x = torch.randn(1, 8, 16)
    surfaces = torch.randint(0, 4, (1, 8))
    mask = torch.ones(1, 8, dtype=torch.bool)
    before = enc(x, surfaces, mask)
    x2, s2 = x.clone(), surfaces.clone()
    x2[0, 5:] = torch.randn(3, 16)  # change the future
    s2[0, 5:] = (s2[0, 5:] + 1) % 4
    after = enc(x2, s2, mask)
    torch.testing.assert_close(before[0, :5], after[0, :5])
    assert not torch.allclose(before[0, 5:], after[0, 5:])


def test_user_encoder_padding_invariance() -> None:
    enc = _encoder()
    x = torch.randn(1, 5, 16)
    surfaces = torch.randint(0, 4, (1, 5))
    short = enc.encode(x, surfaces, torch.ones(1, 5, dtype=torch.bool))
    padded_x = torch.cat([torch.randn(1, 4, 16), x], dim=1)  # garbage in the padding
    padded_s = torch.cat([torch.randint(0, 4, (1, 4)), surfaces], dim=1)
    mask = torch.tensor([[False] * 4 + [True] * 5])
    long = enc.encode(padded_x, padded_s, mask)
    torch.testing.assert_close(short, long, rtol=1e-5, atol=1e-5)


def test_user_encoder_rejects_long_sequences() -> None:
    with pytest.raises(ValueError, match="exceeds max_len"):
        _encoder()(
            torch.randn(1, 13, 16),
            torch.zeros(1, 13, dtype=torch.long),
            torch.ones(1, 13, dtype=torch.bool),
        )


def test_item_vectors_shapes_and_unknown_ids(grouped: Corpus) -> None:
    model, _, vocab = build_model(grouped, TrainConfig(dim=16, max_len=10, progress=False))
    model.eval()
    assert model.all_item_vectors().shape == (len(grouped.items), 16)
    tokens = vocab.item_tokens(["i0", "never-seen"])
    assert tokens[1] == UNK_ID
    ids, surfaces, mask = vocab.batch([(["i0", "never-seen"], ["s0", "new-surface"]), ([], [])], 10)
    out = model.user_vectors(ids, surfaces, mask)
    assert out.shape == (2, 16) and torch.isfinite(out).all()
    # scores are cosines: user and (default) item vectors are unit-norm
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(
        model.all_item_vectors().norm(dim=-1), torch.ones(len(grouped.items))
    )


def test_training_is_deterministic(grouped: Corpus) -> None:
    cfg = TrainConfig(
        dim=16, epochs=1, batch_size=32, num_negatives=64, max_len=10, max_steps=5, progress=False
    )
    a, b = train(grouped, cfg), train(grouped, cfg)
    for (name, pa), (_, pb) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert torch.equal(pa, pb), name
    c = train(grouped, TrainConfig(**{**cfg.__dict__, "seed": 1}))
    assert not torch.equal(
        a.model.item_encoder.id_embedding.weight, c.model.item_encoder.id_embedding.weight
    )


def test_training_learns_and_beats_popularity(grouped: Corpus, trained) -> None:
    assert trained.epoch_losses[-1] < trained.epoch_losses[0]
    model_metrics = evaluate_model(trained.model, trained.vocab, grouped.test)["all"]
    pop = evaluate_popularity(grouped, trained.vocab, grouped.test)["all"]
    assert model_metrics["full"]["recall@10"] > pop["full"]["recall@10"] + 0.1
    assert model_metrics["sampled"]["recall@10"] > pop["sampled"]["recall@10"]


def test_cold_start_item_is_near_its_metadata_group(grouped: Corpus, trained, tmp_path) -> None:
    save_model(trained.model, trained.spec, trained.vocab, grouped.items, tmp_path, name="grouped")
    emb = Embedder.from_dir(tmp_path)
    items = emb.item_vectors()
    normed = items / np.linalg.norm(items, axis=1, keepdims=True)
    wins = 0
    for g in range(N_GROUPS):
        vec = emb.embed_items([("brand-new", "s1", {"title": f"topic{g} newthing"})])[0]
        assert np.isfinite(vec).all()
        vec = vec / np.linalg.norm(vec)
        sims = normed @ vec
        same = sims[g * GROUP_SIZE : (g + 1) * GROUP_SIZE].mean()
        others = np.delete(sims, np.arange(g * GROUP_SIZE, (g + 1) * GROUP_SIZE)).mean()
        wins += same > others
    assert wins >= N_GROUPS - 1  # the metadata path alone places new items with their group
    with pytest.raises(ValueError, match="unknown metadata fields"):
        emb.embed_items([(None, None, {"colour": "red"})])


def test_artifact_round_trip_is_exact(grouped: Corpus, trained, tmp_path) -> None:
    fingerprint = save_model(
        trained.model, trained.spec, trained.vocab, grouped.items, tmp_path, name="grouped"
    )
    assert fingerprint == model_fingerprint(tmp_path)
    model, _spec, vocab, config = load_model(tmp_path)
    assert config["name"] == "grouped"
    for key, value in trained.model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    assert list(vocab.item_ids) == list(trained.vocab.item_ids)
    assert vocab.surfaces == trained.vocab.surfaces
    with torch.inference_mode():
        torch.testing.assert_close(
            model.all_item_vectors(), trained.model.all_item_vectors(), rtol=0, atol=0
        )
    history = [(["i1", "i2", "i3"], ["s1", "s2", "s0"])]
    ids, surfaces, mask = vocab.batch(history, 20)
    with torch.inference_mode():
        torch.testing.assert_close(
            model.user_vectors(ids, surfaces, mask),
            trained.model.user_vectors(ids, surfaces, mask),
            rtol=0,
            atol=0,
        )


def test_metrics_from_ranks_matches_definitions() -> None:
    ranks = np.array([0, 1, 9, 10, 19, np.inf])
    m = metrics_from_ranks(ranks, ks=(10,))
    assert m["recall@10"] == pytest.approx(3 / 6)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11)) / 6)


def test_embedded_default_training_on_the_sample_beats_most_popular(uniserve_data_dir) -> None:
    """The model `uniserve serve` trains on first start (session fixture) learns the sample:
    loss falls and test Recall@10 (full ranking) beats the most-popular baseline."""
    config = read_config(uniserve_data_dir / "model")
    losses = config["training"]["epoch_losses"]
    assert losses[-1] < losses[0]
    metrics = config["metrics"]
    assert metrics["split"] == "test" and metrics["model"]["all"]["n"] == 400
    model, pop = metrics["model"]["all"]["full"], metrics["most_popular"]["all"]["full"]
    assert model["recall@10"] > pop["recall@10"]
    assert model["ndcg@10"] > pop["ndcg@10"]
