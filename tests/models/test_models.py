"""Encoders, training, evaluation and model artifacts, on real torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.artifacts import CONFIG_FILE, load_model, model_fingerprint, read_config, save_model
from models.corpus import Corpus, EvalSet, ItemTable, Sequences
from models.embedder import Embedder
from models.evaluate import evaluate_model, evaluate_popularity, metrics_from_ranks, sampled_metrics
from models.item_encoder import FIRST_ITEM_ID, UNK_ID, ItemEncoder, ItemEncoderConfig
from models.train import (
    TrainConfig,
    build_model,
    expected_negative_counts,
    sampled_softmax_loss,
    train,
)
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


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_user_encoder_encode_is_the_last_position_of_forward(layers: int) -> None:
    """`encode` (what serving calls) skips all but the last position in the last block: it
    must give forward's last position, with left padding and an empty history in the batch."""
    torch.manual_seed(layers)
    enc = UserEncoder(
        UserEncoderConfig(num_surfaces=4, dim=16, num_heads=2, max_len=12, num_layers=layers)
    ).eval()
    x = torch.randn(3, 9, 16)
    surfaces = torch.randint(0, 4, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, :4] = False  # a shorter history, left-padded
    mask[2, :] = False  # no events at all
    with torch.inference_mode():
        torch.testing.assert_close(
            enc.encode(x, surfaces, mask), enc(x, surfaces, mask)[:, -1], rtol=1e-5, atol=1e-6
        )


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


def test_item_text_fields_are_the_mean_of_their_tokens_padding_excluded() -> None:
    """Each text field adds the mean of its tokens' rows (padding left out, nothing for a
    field without tokens), checked against a plain loop, values and gradients."""
    torch.manual_seed(0)
    enc = ItemEncoder(ItemEncoderConfig(num_items=6, dim=8, num_text_fields=2, id_dropout=0.0))
    ids = torch.tensor([[2, 3, 4], [5, 6, 7]])  # (S=2, 3) items
    tokens = torch.randint(1, 50, (2, 3, 2, 5))  # (*S, F=2, L=5)
    tokens[0, 0, 0, 2:] = 0  # two tokens
    tokens[0, 1, 1] = 0  # an empty field
    tokens[1, 2, :, 0] = 0  # padding first
    out = enc(ids, torch.zeros(2, 3, 0, dtype=torch.long), tokens)
    expected = torch.zeros_like(out)
    for s in range(2):
        for j in range(3):
            expected[s, j] = enc.id_embedding.weight[ids[s, j]]
            for f in range(2):
                present = [t for t in tokens[s, j, f].tolist() if t > 0]
                if present:
                    expected[s, j] += enc.text.weight[present].mean(0)
    torch.testing.assert_close(out, expected)
    (got,) = torch.autograd.grad(out.square().sum(), enc.text.weight)
    (want,) = torch.autograd.grad(expected.square().sum(), enc.text.weight)
    torch.testing.assert_close(got, want)
    assert got[0].abs().sum() == 0  # the padding row never learns


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


def test_training_device_is_chosen_at_run_time(grouped: Corpus) -> None:
    """With "auto", training runs on CUDA when torch sees a GPU, else on the CPU, with the
    same result as asking for that device; "cuda" without a GPU is a clear error, not a crash
    mid-training; the trained model is handed back on the CPU either way."""
    cfg = TrainConfig(
        dim=16, epochs=1, batch_size=32, num_negatives=64, max_len=10, max_steps=3, progress=False
    )
    auto = train(grouped, cfg)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert auto.extra["device"] == expected
    assert {p.device.type for p in auto.model.parameters()} == {"cpu"}
    assert auto.model.item_cat.device.type == "cpu"
    explicit = train(grouped, TrainConfig(**{**cfg.__dict__, "device": expected}))
    for (name, pa), (_, pb) in zip(
        auto.model.state_dict().items(), explicit.model.state_dict().items(), strict=True
    ):
        assert torch.equal(pa, pb), name
    with pytest.raises(ValueError, match="device must be one of"):
        TrainConfig(device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            train(grouped, TrainConfig(**{**cfg.__dict__, "device": "cuda"}))


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


def _biased_model(grouped: Corpus, dim: int = 16):
    """An untrained model with the item bias on and random (non-zero) biases."""
    torch.manual_seed(0)
    model, spec, vocab = build_model(
        grouped, TrainConfig(dim=dim, max_len=10, item_bias=True, progress=False)
    )
    with torch.no_grad():
        model.item_encoder.bias.weight.normal_(0.0, 0.5)
    return model.eval(), spec, vocab


def test_item_bias_served_inner_product_is_temperature_times_logit(grouped: Corpus) -> None:
    """Served [u, 1] . [v, b] = cos(u, v) + b = temperature * the training logit, and the
    training loss is the softmax of exactly those logits (reference computed from the parts)."""
    model, _, vocab = _biased_model(grouped)
    temperature = 0.1
    histories = [(["i1", "i2", "i3"], ["s1", "s2", "s0"]), (["i40", "nope"], ["s1", "s1"])]
    ids, surfaces, mask = vocab.batch(histories, 10)
    rows = torch.arange(FIRST_ITEM_ID, len(vocab) + FIRST_ITEM_ID)
    with torch.inference_mode():
        served = model.user_vectors(ids, surfaces, mask) @ model.all_item_vectors().T  # (2, N)
        enc = model.item_encoder
        u = F.normalize(model.hidden(ids, surfaces, mask)[:, -1], dim=-1)  # (2, D)
        tokens = model.item_tokens[rows]  # (N, F, L)
        present = (tokens > 0).unsqueeze(-1).float()  # (N, F, L, 1)
        pooled = (enc.text(tokens) * present).sum(-2) / present.sum(-2).clamp(min=1)  # (N, F, D)
        raw = enc.id_embedding(rows) + pooled.sum(-2)  # (N, D)
        for c, emb in enumerate(enc.categorical):
            raw = raw + emb(model.item_cat[rows, c])
        v = F.normalize(raw, dim=-1)  # (N, D)
        logits = (u @ v.T + enc.bias.weight[rows, 0]) / temperature  # (2, N)
    assert model.dim == 17
    torch.testing.assert_close(served, temperature * logits, rtol=1e-5, atol=1e-5)

    targets = torch.tensor([FIRST_ITEM_ID + 5, FIRST_ITEM_ID + 7])
    negatives = torch.tensor([FIRST_ITEM_ID + i for i in (0, 5, 9, 300)])
    log_q = torch.linspace(-3.0, -1.0, len(vocab) + FIRST_ITEM_ID)
    with torch.inference_mode():
        loss = sampled_softmax_loss(
            model, model.user_vectors(ids, surfaces, mask), targets, negatives, log_q, temperature
        )
    ref = 0.0
    for m in range(2):
        t = int(targets[m]) - FIRST_ITEM_ID
        pos = logits[m, t] - log_q[targets[m]]
        negs = [
            logits[m, int(n) - FIRST_ITEM_ID] - log_q[n] for n in negatives if int(n) != targets[m]
        ]
        ref += float(torch.logsumexp(torch.stack([pos, *negs]), 0) - pos) / 2
    assert float(loss) == pytest.approx(ref, rel=1e-5)


def test_item_bias_serves_consistent_vectors(grouped: Corpus, tmp_path) -> None:
    """With the bias on, every Embedder method returns D + 1 columns; config.json carries the
    flag; the evaluation paths and the engine's scoring (item_vectors @ user) agree."""
    model, spec, vocab = _biased_model(grouped)
    save_model(model, spec, vocab, grouped.items, tmp_path, name="biased")
    assert read_config(tmp_path)["model"]["item"]["bias"] is True
    emb = Embedder.from_dir(tmp_path)
    assert emb.model.config.item.bias and emb.dim == 17
    items = emb.item_vectors()
    users = emb.user_vectors([(["i1", "i2"], ["s1", "s2"]), ([], [])])
    assert items.shape == (len(grouped.items), 17) and users.shape == (2, 17)
    np.testing.assert_array_equal(users[:, -1], 1.0)
    bias = model.item_encoder.bias.weight.detach().numpy()[:, 0]
    np.testing.assert_allclose(items[:, -1], bias[FIRST_ITEM_ID:], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(items[:, :-1], axis=1), 1.0, rtol=1e-5)
    # a known id gets its catalogue vector; an unknown one the metadata vector and UNK's bias
    title = str(grouped.items.text["title"][3])
    known, cold = emb.embed_items([("i3", "s0", {"title": title}), (None, "s0", {"title": "x"})])
    np.testing.assert_allclose(known, items[3], rtol=1e-5, atol=1e-6)
    assert cold.shape == (17,) and cold[-1] == pytest.approx(bias[UNK_ID])
    assert emb.embed_items([]).shape == (0, 17) and emb.user_vectors([]).shape == (0, 17)
    # evaluation scores with the served vectors: full-catalogue and per-epoch sampled paths agree
    loaded = emb.model
    full = evaluate_model(loaded, vocab, grouped.test)["all"]["sampled"]
    assert sampled_metrics(loaded, vocab, grouped.test)["ndcg@10"] == pytest.approx(full["ndcg@10"])
    # the engine's /v1/rank score is the same inner product
    scores = items @ users[0]
    with torch.inference_mode():
        ids, surfaces, mask = vocab.batch([(["i1", "i2"], ["s1", "s2"])], 10)
        ref = loaded.user_vectors(ids, surfaces, mask) @ loaded.all_item_vectors().T
    np.testing.assert_allclose(scores, ref[0].numpy(), rtol=1e-5, atol=1e-5)


def test_config_without_item_bias_key_loads_with_bias_off(
    grouped: Corpus, trained, tmp_path
) -> None:
    save_model(trained.model, trained.spec, trained.vocab, grouped.items, tmp_path, name="old")
    path = tmp_path / CONFIG_FILE
    raw = json.loads(path.read_text())
    del raw["model"]["item"]["bias"]  # a model directory written before the flag existed
    path.write_text(json.dumps(raw))
    emb = Embedder.from_dir(tmp_path)
    assert emb.model.config.item.bias is False and emb.dim == 32
    assert emb.item_vectors().shape == (len(grouped.items), 32)


def _zipf_corpus(n: int = 100, users: int = 200, length: int = 20) -> Corpus:
    """Events drawn i.i.d. from a Zipf law over ``n`` items: a history says nothing about the
    next item, so the best a model can do is rank by popularity."""
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, n + 1)
    items = ItemTable(
        np.array([f"z{i}" for i in range(n)], dtype=object), np.array(["s0"] * n, dtype=object)
    )
    seqs = [[f"z{i}" for i in rng.choice(n, size=length, p=p / p.sum())] for _ in range(users)]
    train_seqs = Sequences.from_lists(
        [f"u{u}" for u in range(users)], seqs, [["s0"] * length for _ in seqs]
    )
    empty = EvalSet(
        Sequences.from_lists([], [], []), *(np.array([], dtype=object) for _ in range(3))
    )
    return Corpus("zipf", items, train_seqs, empty, empty)


def test_expected_negative_counts_match_simulated_draws() -> None:
    """q is the mean number of copies of each item in a step's negatives (with replacement,
    so above 1 for popular items), checked against simulated draws."""
    rng = np.random.default_rng(0)
    counts = np.array([0, 0, 500, 200, 50, 10, 1, 0], dtype=np.float64)  # rows 0, 1: pad, UNK
    q = expected_negative_counts(counts, in_batch=16, uniform=8)
    draws = np.zeros(len(counts))
    trials = 20_000
    for _ in range(trials):
        by_freq = rng.choice(len(counts), size=16, p=counts / counts.sum())
        uniform = rng.integers(FIRST_ITEM_ID, len(counts), size=8)
        draws += np.bincount(np.concatenate([by_freq, uniform]), minlength=len(counts))
    np.testing.assert_allclose(q[FIRST_ITEM_ID:], draws[FIRST_ITEM_ID:] / trials, rtol=0.03)
    assert q[FIRST_ITEM_ID] > 1.0


def test_training_with_item_bias_learns_popularity() -> None:
    """With popularity the only signal, the learnt biases (sparse optimiser) and the served
    scores follow training frequency, with the default popularity-drawn negatives too."""
    corpus = _zipf_corpus()
    cfg = TrainConfig(dim=16, epochs=3, batch_size=32, num_negatives=64, max_len=20)
    result = train(corpus, TrainConfig(**{**cfg.__dict__, "item_bias": True, "progress": False}))
    assert result.model.dim == 17
    log_counts = np.log1p(
        np.bincount(result.vocab.item_rows(corpus.train.item_id), minlength=len(result.vocab))
    )
    bias = result.model.item_encoder.bias.weight.detach().numpy()[FIRST_ITEM_ID:, 0]
    assert np.corrcoef(log_counts, bias)[0, 1] > 0.35
    ids, surfaces, mask = result.vocab.batch([(["z5", "z3"], ["s0", "s0"])], 20)
    with torch.inference_mode():
        model = result.model
        scores = (model.user_vectors(ids, surfaces, mask) @ model.all_item_vectors().T)[0]
    assert np.corrcoef(log_counts, scores.numpy())[0, 1] > 0.5


def test_popularity_prior_adds_log_counts_to_the_trained_bias() -> None:
    """The prior is added after training: the same run without it differs only in the bias,
    by exactly weight * log(1 + training count); UNK (cold start) gets none."""
    corpus = _zipf_corpus()
    cfg = TrainConfig(
        dim=16, batch_size=32, num_negatives=64, max_len=20, max_steps=3, progress=False
    )
    plain = train(corpus, TrainConfig(**{**cfg.__dict__, "item_bias": True}))
    prior = train(
        corpus, TrainConfig(**{**cfg.__dict__, "item_bias": True, "popularity_prior": 0.2})
    )
    # every sequence fits one left-padded window, so each event is counted once
    counts = np.bincount(prior.vocab.item_rows(corpus.train.item_id), minlength=len(prior.vocab))
    added = (prior.model.item_encoder.bias.weight - plain.model.item_encoder.bias.weight).detach()[
        :, 0
    ]  # (N + 2,)
    np.testing.assert_allclose(added[FIRST_ITEM_ID:], 0.2 * np.log1p(counts), rtol=1e-5)
    assert added[UNK_ID] == 0.0
    for name, value in plain.model.state_dict().items():
        if name != "item_encoder.bias.weight":
            assert torch.equal(value, prior.model.state_dict()[name]), name
    with pytest.raises(ValueError, match="needs item_bias"):
        TrainConfig(popularity_prior=0.2)


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
