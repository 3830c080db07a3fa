"""The lexical content channel (`train --content-dim K`): a fixed IDF-weighted random projection
of item text tokens, appended to item vectors, and the decayed sum of the history's channels,
times a learnt weight, appended to user vectors. Checked against a NumPy TF-IDF reference, for
consistency across every serving path, and for what it is for: brand-new items that share words
with a user's history rank above those that do not."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from models.artifacts import save_model
from models.corpus import Corpus
from models.data import load_corpus
from models.embedder import Embedder
from models.evaluate import evaluate_model, sampled_metrics
from models.holdout import make_cold
from models.item_encoder import FIRST_ITEM_ID, UNK_ID
from models.multi import item_facet_vectors
from models.train import TrainConfig, build_model, train
from tests.models.test_models import _grouped_corpus

K = 512  # projection dims: enough for the TF-IDF cosines to be checked to about +-0.1
DIM = 16


@pytest.fixture(scope="module")
def grouped() -> Corpus:
    return _grouped_corpus()


@pytest.fixture(scope="module")
def content_model(grouped: Corpus):
    torch.manual_seed(0)
    model, spec, vocab = build_model(
        grouped, TrainConfig(dim=DIM, max_len=10, content_dim=K, progress=False)
    )
    return model.eval(), spec, vocab


def _tfidf_cosines(titles: list[str]) -> np.ndarray:
    """Exact TF-IDF cosine matrix of whitespace-token bags, idf = log((1 + N) / (1 + df)) + 1."""
    bags = [Counter(t.split()) for t in titles]
    df = Counter(tok for bag in bags for tok in bag)
    vocab = sorted(df)
    col = {tok: j for j, tok in enumerate(vocab)}
    x = np.zeros((len(titles), len(vocab)))
    for i, bag in enumerate(bags):
        for tok, n in bag.items():
            x[i, col[tok]] = n * (np.log((1 + len(titles)) / (1 + df[tok])) + 1)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


def test_item_channel_approximates_tfidf_cosine(grouped: Corpus, content_model) -> None:
    model, _, _ = content_model
    titles = [str(t) for t in grouped.items.text["title"]]
    pick = np.arange(0, len(titles), 7)  # (P,) items across every topic
    exact = _tfidf_cosines(titles)[np.ix_(pick, pick)]  # (P, P)
    with torch.inference_mode():
        vecs = model.all_item_vectors()[:, -K:].numpy()[pick]  # (P, K) the channel
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    approx = vecs @ vecs.T
    assert np.abs(approx - exact).max() < 0.2
    same_topic = (pick[:, None] // 25) == (pick[None, :] // 25)
    off_diag = ~np.eye(len(pick), dtype=bool)
    assert approx[same_topic & off_diag].mean() > approx[~same_topic].mean() + 0.2


def test_served_vectors_carry_the_channel(grouped: Corpus, content_model) -> None:
    """dim = D + K; a user's last K columns are the learnt weight times the unit-norm decayed
    sum of their history items' channels (computed here from the parts); the score is the
    learnt cosine plus weight x channel cosine."""
    model, _, vocab = content_model
    assert model.dim == DIM + K
    decay = model.config.item.content_decay
    history = (["i3", "i7", "nope", "i30"], ["s0", "s1", "s2", "s0"])
    ids, surfaces, mask = vocab.batch([history], 10)
    with torch.inference_mode():
        user = model.user_vectors(ids, surfaces, mask)[0]  # (D + K,)
        items = model.all_item_vectors()  # (N, D + K)
        every = model.user_content(ids, mask)  # (1, T, K): what training uses
        torch.testing.assert_close(model.user_content(ids, mask, last=True), every[:, -1])
    rows = [3, 7, 30]  # "nope" is unknown: it adds nothing
    ages = [3, 2, 0]
    ref = sum(decay**a * items[r, -K:] for r, a in zip(rows, ages, strict=True))
    ref = ref / ref.norm()
    weight = float(model.content_weight.detach())
    torch.testing.assert_close(user[-K:], weight * ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(user[:DIM].norm(), torch.tensor(1.0))
    score = items @ user
    learnt = items[:, :DIM] @ user[:DIM]
    channel = items[:, -K:] @ ref
    torch.testing.assert_close(score, learnt + weight * channel, rtol=1e-4, atol=1e-4)


def test_content_model_round_trips_and_serves_new_items_by_their_words(
    grouped: Corpus, tmp_path: Path
) -> None:
    """A trained content model saved and loaded gives identical vectors (the fixed projection
    and IDF are rebuilt from the config and catalogue); brand-new items (unknown ids, metadata
    only) rank by their words: one titled like a user's topic above one of another topic."""
    cfg = TrainConfig(
        dim=DIM,
        epochs=3,
        batch_size=32,
        num_negatives=128,
        max_len=20,
        content_dim=128,
        progress=False,
    )
    result = train(grouped, cfg)
    assert float(result.model.content_weight.detach()) != 1.0  # the weight is learnt
    save_model(result.model, result.spec, result.vocab, grouped.items, tmp_path, name="content")
    emb = Embedder.from_dir(tmp_path)
    with torch.inference_mode():
        ref = result.model.all_item_vectors().numpy()
    np.testing.assert_allclose(emb.item_vectors(), ref, rtol=1e-5, atol=1e-6)
    assert emb.dim == DIM + 128

    wins = 0
    for g in range(20):
        history = ([f"i{g * 25 + j}" for j in range(5)], ["s0"] * 5)
        user = emb.user_vectors([history])[0]
        new = emb.embed_items(
            [
                (None, "s0", {"title": f"topic{g} brandnew"}),
                (None, "s0", {"title": f"topic{(g + 7) % 20} brandnew"}),
            ]
        )
        wins += int(new[0] @ user > new[1] @ user)
    assert wins >= 19
    # the evaluation paths score with the served vectors too
    full = evaluate_model(emb.model, result.vocab, grouped.test)["all"]["sampled"]
    assert sampled_metrics(emb.model, result.vocab, grouped.test)["ndcg@10"] == pytest.approx(
        full["ndcg@10"]
    )


def test_cold_boost_scales_only_items_without_a_trained_id(grouped: Corpus) -> None:
    """`--cold-boost S` multiplies the served channel of unknown ids and of held-out rows (made
    cold by the hold-out) by S, in eval mode only; trained items and the user side keep theirs."""
    torch.manual_seed(0)
    model, _, _ = build_model(
        grouped, TrainConfig(dim=DIM, max_len=10, content_dim=64, progress=False)
    )
    model.eval()
    make_cold(model, np.array([5]))
    assert model.item_encoder.metadata_only[FIRST_ITEM_ID + 5]
    ids = torch.tensor([FIRST_ITEM_ID + 3, FIRST_ITEM_ID + 5, UNK_ID])
    cat, tokens = model.item_cat[ids], model.item_tokens[ids]
    with torch.inference_mode():
        plain = model.item_encoder(ids, cat, tokens)
        model.config.item.content_cold_boost = 2.5
        boosted = model.item_encoder(ids, cat, tokens)
        model.item_encoder.train()
        training = model.item_encoder(ids, cat, tokens)
    torch.testing.assert_close(boosted[0], plain[0])  # a trained item
    torch.testing.assert_close(boosted[1:, -64:], 2.5 * plain[1:, -64:])  # held out, unknown
    torch.testing.assert_close(boosted[1:, :-64], plain[1:, :-64])
    torch.testing.assert_close(training[1:, -64:], plain[1:, -64:])  # not while training
    with pytest.raises(ValueError, match="cold_boost must be > 0"):
        TrainConfig(content_dim=8, cold_boost=0.0)


def test_content_channel_refusals(grouped: Corpus, content_model) -> None:
    with pytest.raises(ValueError, match="no content channel"):
        TrainConfig(content_dim=32, matryoshka=(16,))
    with pytest.raises(ValueError, match="needs item text fields"):  # the sample has no text
        build_model(load_corpus("sample"), TrainConfig(dim=8, content_dim=32, progress=False))
    model, _, _ = content_model
    with pytest.raises(ValueError, match="content channel"):
        item_facet_vectors(model, torch.arange(FIRST_ITEM_ID, FIRST_ITEM_ID + 3))
    with pytest.raises(ValueError, match="needs the users' histories"):
        model.query_vectors(torch.ones(1, DIM))
