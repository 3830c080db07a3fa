"""Recommendation quality: the seen-items-removed full ranking against brute force, the
co-occurrence baseline against its definition, the losses on cases with a known value, early
stopping, the evaluation policy, the S3-Rec loaders, and a small training run per option."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import models.train as train_module
from models.data import load_corpus, load_s3rec
from models.evaluate import (
    Cooccurrence,
    evaluate_cooccurrence,
    evaluate_model,
    evaluation_report,
    history_rows,
    metrics_from_ranks,
    rank_targets,
    sample_negatives,
    user_vectors_for,
)
from models.item_encoder import FIRST_ITEM_ID
from models.matryoshka import truncate
from models.train import (
    TrainConfig,
    TrainResult,
    accidental_hits,
    build_model,
    contrastive_loss,
    full_softmax_loss,
    later_targets,
    sampled_softmax_loss,
    selection_key,
    train,
    uses_full_softmax,
    window_weights,
)
from models.vocab import Vocab
from tests.helpers import ring_corpus


def _brute_force_rank(scores: np.ndarray, target: int, history: list[int]) -> float:
    """Rank of ``target`` among the items not in ``history`` (the target always stays), ties
    pessimistic: every other remaining item scoring >= the target is ahead of it."""
    if target < 0:
        return math.inf
    removed = set(history) - {target}
    ahead = [j for j in range(len(scores)) if j != target and j not in removed]
    return float(sum(scores[j] >= scores[target] for j in ahead))


def test_seen_items_removed_ranking_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    n_items, n_users = 30, 50
    scores = rng.integers(0, 6, size=(n_users, n_items)).astype(np.float32)  # many ties
    histories = [list(rng.integers(0, n_items, size=rng.integers(0, 8))) for _ in range(n_users)]
    targets = rng.integers(0, n_items, size=n_users)
    targets[3] = histories[3][0] if histories[3] else targets[3]  # a target seen before
    histories[4] = [int(targets[4])]  # the target is the only history item: nothing removed
    targets[5] = -1  # unknown target: a miss
    targets[6], histories[6] = 0, [1, 2, 2, 0]  # an item seen twice is removed once
    scores[6] = -np.inf  # and removed when everything ties at -inf (the target too)
    scores[7, targets[7]] = -np.inf  # a target scoring below every item
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum([len(h) for h in histories], out=offsets[1:])
    flat = np.array([x for h in histories for x in h], dtype=np.int64)
    flat[:1] = -1 if len(flat) else flat[:1]  # an unknown history item is simply not removed
    negatives = sample_negatives(targets, n_items, 10, seed=0)
    full, unseen, sampled = rank_targets(
        lambda idx: scores[idx], targets, negatives, batch_size=7, seen=(offsets, flat)
    )
    hist_rows = [list(flat[offsets[u] : offsets[u + 1]]) for u in range(n_users)]
    expected = [_brute_force_rank(scores[u], targets[u], hist_rows[u]) for u in range(n_users)]
    np.testing.assert_array_equal(unseen, expected)
    np.testing.assert_array_equal(
        full, [_brute_force_rank(scores[u], targets[u], []) for u in range(n_users)]
    )
    assert np.all(unseen <= full)
    ok = targets >= 0
    np.testing.assert_array_equal(
        sampled[ok],
        [(scores[u, negatives[u]] >= scores[u, targets[u]]).sum() for u in np.flatnonzero(ok)],
    )
    assert math.isinf(unseen[5]) and math.isinf(full[5])
    # the same ranks from torch scores (how training validates on a GPU)
    torch_ranks = rank_targets(
        lambda idx: torch.from_numpy(scores[idx]), targets, negatives, seen=(offsets, flat)
    )
    np.testing.assert_array_equal(torch_ranks[1], unseen)


def test_user_vectors_come_back_in_the_users_order_whatever_their_lengths() -> None:
    """Histories are encoded shortest first in batches; each user's vector must be the one
    its history gives alone (histories of 4 to 10 events, most longer than max_len 6)."""
    corpus = ring_corpus()
    model, _, vocab = build_model(corpus, TrainConfig(dim=16, max_len=6, progress=False))
    model.eval()
    histories = corpus.test.history
    assert len(set(np.minimum(histories.lengths, 6).tolist())) > 2  # the order matters
    got = user_vectors_for(model, vocab, corpus.test, batch_size=7)
    with torch.inference_mode():
        alone = [
            model.user_vectors(*vocab.batch([histories.sequence(u)], 6))[0].numpy()
            for u in range(len(histories))
        ]
    np.testing.assert_allclose(got, np.stack(alone), atol=1e-5)


def test_cooccurrence_scores_match_their_definition() -> None:
    corpus = ring_corpus()
    vocab = Vocab(corpus.items.item_id, [])
    cooc = Cooccurrence.fit(corpus.train, vocab, window=2, last=2, decay=0.5)
    n = len(vocab)
    counts = np.zeros((n, n))
    for _, seq, _ in corpus.train:
        rows = vocab.item_rows(seq)
        for i in range(len(rows)):
            for gap in (1, 2):
                if i + gap < len(rows) and rows[i] != rows[i + gap]:
                    counts[rows[i], rows[i + gap]] += 1.0 / gap
    idx = np.arange(10)
    got = cooc.scores(corpus.test.history, vocab, idx).numpy()
    for j, u in enumerate(idx):
        recent = vocab.item_rows(corpus.test.history.sequence(u)[0])[::-1][:2]
        expected = sum(0.5**age * counts[r] for age, r in enumerate(recent))
        np.testing.assert_allclose(got[j], expected, atol=2e-4)  # + the popularity tie-break
    report = evaluate_cooccurrence(cooc, vocab, corpus.test)["all"]
    assert report["full_seen_removed"]["recall@10"] > 0.9  # the ring is predictable


def test_full_softmax_equals_sampled_softmax_with_every_item_as_negative() -> None:
    corpus = ring_corpus()
    model, _, vocab = build_model(corpus, TrainConfig(dim=16, progress=False))
    torch.manual_seed(0)
    queries = F.normalize(torch.randn(6, 16), dim=-1)
    targets = torch.tensor([2, 5, 5, 9, 30, 41])
    every = torch.arange(FIRST_ITEM_ID, len(vocab) + FIRST_ITEM_ID)  # each row once
    zero_log_q = torch.zeros(len(vocab) + FIRST_ITEM_ID)
    model.eval()
    full = full_softmax_loss(model, queries, targets, 0.1)
    sampled = sampled_softmax_loss(model, queries, targets, every, zero_log_q, 0.1)
    torch.testing.assert_close(full, sampled)
    items = model.all_item_vectors()
    by_hand = F.cross_entropy(queries @ items.T / 0.1, targets - FIRST_ITEM_ID)
    torch.testing.assert_close(full, by_hand)
    # a held-out row is no class: the same as dropping its column
    excluded = torch.tensor([7])
    keep = torch.tensor([i for i in range(len(vocab)) if i != 7 - FIRST_ITEM_ID])
    labels = torch.searchsorted(keep, targets - FIRST_ITEM_ID)
    torch.testing.assert_close(
        full_softmax_loss(model, queries, targets, 0.1, excluded=excluded),
        F.cross_entropy(queries @ items[keep].T / 0.1, labels),
    )


@settings(max_examples=200, deadline=None)
@given(
    negatives=st.lists(st.integers(0, 12), max_size=30),
    targets=st.lists(st.integers(0, 12), max_size=20),
)
def test_accidental_hits_are_every_equal_pair(negatives: list[int], targets: list[int]) -> None:
    """The binary search finds exactly the (row, column) pairs an (M, K) comparison finds,
    repeated negatives, repeated targets and empty sides included."""
    row, column = accidental_hits(
        torch.tensor(negatives, dtype=torch.long), torch.tensor(targets, dtype=torch.long)
    )
    found = sorted(zip(row.tolist(), column.tolist(), strict=True))
    assert found == [
        (m, k) for m, t in enumerate(targets) for k, n in enumerate(negatives) if n == t
    ]


@pytest.mark.parametrize(
    ("window", "dims"),
    [(torch.tensor([2, 5, 5, 9, 30, 41]), ()), (torch.tensor([[2, 5], [5, 0], [9, 9]]), (8,))],
)
def test_sampled_softmax_value_and_gradients_equal_the_plain_formula(
    window: torch.Tensor, dims: tuple[int, ...]
) -> None:
    """The loss masks accidental hits outside autograd: its value and every gradient must equal
    the plain formula's (hits masked inside the graph, logsumexp), with log q on, hits among the
    negatives (in-batch ones repeat the targets), a window of later targets and a Matryoshka
    prefix."""
    corpus = ring_corpus()
    model, _, vocab = build_model(corpus, TrainConfig(dim=16, progress=False))
    model.eval()
    torch.manual_seed(0)
    queries = F.normalize(torch.randn(len(window), 16), dim=-1)
    negatives = torch.tensor([5, 5, 9, 3, 17, 2, 40, 9])  # repeats and accidental hits
    log_q = torch.randn(len(vocab) + FIRST_ITEM_ID)

    def plain() -> torch.Tensor:
        targets = window[:, None] if window.dim() == 1 else window
        weights = window_weights(targets)
        rows = targets.clamp(min=FIRST_ITEM_ID)
        losses = []
        pos_items = model.item_vectors(rows.reshape(-1)).view(*rows.shape, -1)
        neg_items = model.item_vectors(negatives)
        for m in (*dims, None):
            q, p, n = (
                (queries, pos_items, neg_items)
                if m is None
                else (truncate(queries, m), truncate(pos_items, m), truncate(neg_items, m))
            )
            pos = (q[:, None, :] * p).sum(-1) / 0.1 - log_q[rows]
            neg = q @ n.T / 0.1 - log_q[negatives]
            nll = []
            for g in range(rows.shape[1]):
                hit = negatives[None, :] == rows[:, g, None]
                logits = torch.cat([pos[:, g, None], neg.masked_fill(hit, float("-inf"))], 1)
                nll.append(torch.logsumexp(logits, 1) - pos[:, g])
            losses.append((torch.stack(nll, 1) * weights).sum(1).mean())
        return torch.stack(losses).mean()

    grads = []
    for loss_fn in (
        lambda: sampled_softmax_loss(model, queries, window, negatives, log_q, 0.1, dims),
        plain,
    ):
        queries.requires_grad_(True)
        queries.grad = None
        model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        table = model.item_encoder.id_embedding.weight.grad
        grads.append((loss.detach(), queries.grad.clone(), table.to_dense().clone()))
    for ours, reference in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(ours, reference)
    assert grads[0][2].abs().sum() > 0  # the item table did get gradients


def test_later_targets_and_their_weights() -> None:
    pad = 0
    ids = torch.tensor([[pad, pad, 4, 5, 6], [3, 4, 5, 6, 7]])  # (B, T + 1), left-padded
    later = later_targets(ids, 3)  # (B, T, G)
    assert later.shape == (2, 4, 3)
    assert later[0].tolist() == [[pad, 4, 5], [4, 5, 6], [5, 6, pad], [6, pad, pad]]
    assert later[1].tolist() == [[4, 5, 6], [5, 6, 7], [6, 7, pad], [7, pad, pad]]
    assert torch.equal(later_targets(ids, 1)[..., 0], ids[:, 1:])  # next item only
    w = window_weights(later[1])
    torch.testing.assert_close(w[0], torch.tensor([1, 1 / 2, 1 / 3]) / (11 / 6))
    torch.testing.assert_close(w[2], torch.tensor([1, 1 / 2, 0]) / 1.5)
    torch.testing.assert_close(w[3], torch.tensor([1.0, 0, 0]))


def test_window_losses_are_the_weighted_cross_entropies() -> None:
    corpus = ring_corpus()
    model, _, vocab = build_model(corpus, TrainConfig(dim=16, progress=False))
    model.eval()
    torch.manual_seed(0)
    queries = F.normalize(torch.randn(4, 16), dim=-1)
    window = torch.tensor([[2, 5, 9], [5, 0, 0], [9, 30, 0], [41, 41, 3]])  # PAD = 0
    every = torch.arange(FIRST_ITEM_ID, len(vocab) + FIRST_ITEM_ID)
    zero_log_q = torch.zeros(len(vocab) + FIRST_ITEM_ID)
    full = full_softmax_loss(model, queries, window, 0.1)
    torch.testing.assert_close(
        full, sampled_softmax_loss(model, queries, window, every, zero_log_q, 0.1)
    )
    items = model.all_item_vectors()
    log_p = torch.log_softmax(queries @ items.T / 0.1, dim=1)  # (4, N)
    by_hand = 0.0
    for m, row in enumerate(window.tolist()):
        real = [(g, t) for g, t in enumerate(row) if t != 0]
        norm = sum(1 / (g + 1) for g, _ in real)
        by_hand += sum(-log_p[m, t - FIRST_ITEM_ID] / (g + 1) for g, t in real) / norm
    torch.testing.assert_close(full, by_hand / 4)
    # one column is the next-item loss, and a window of 1 from the training loop is that column
    torch.testing.assert_close(
        full_softmax_loss(model, queries, window[:, :1], 0.1),
        full_softmax_loss(model, queries, window[:, 0], 0.1),
    )


def test_contrastive_loss_known_values() -> None:
    same = torch.eye(4)
    # identical orthogonal views: logit 1/t on the diagonal, 0 elsewhere
    expected = -math.log(math.exp(1 / 0.5) / (math.exp(1 / 0.5) + 3))
    assert contrastive_loss(same, same, 0.5).item() == pytest.approx(expected, rel=1e-6)
    # views carrying no information: uniform over the batch
    ones = torch.ones(4, 3)
    assert contrastive_loss(ones, ones, 0.2).item() == pytest.approx(math.log(4), rel=1e-6)


def test_size_rule_picks_the_softmax() -> None:
    cfg = TrainConfig(loss="auto", full_softmax_max_items=1000)
    assert uses_full_softmax(cfg, 1000) and not uses_full_softmax(cfg, 1001)
    assert uses_full_softmax(TrainConfig(loss="full"), 10**7)
    assert not uses_full_softmax(TrainConfig(loss="sampled"), 10)
    with pytest.raises(ValueError, match="loss must be"):
        TrainConfig(loss="bce")
    with pytest.raises(ValueError, match="patience must be"):
        TrainConfig(patience=0)
    with pytest.raises(ValueError, match="at least one negative"):
        TrainConfig(in_batch_negatives=0, num_negatives=0)


def test_the_train_command_defaults_are_the_training_defaults() -> None:
    from service.cli.main import build_parser
    from service.cli.train import train_config

    args = build_parser().parse_args(["train", "--out", "unused"])
    assert train_config(args) == TrainConfig()  # one set of defaults, not two that drift
    args = build_parser().parse_args(["train", "--out", "x", "--norm", "pre", "--quiet"])
    assert train_config(args) == TrainConfig(norm="pre", progress=False)


def test_early_stopping_keeps_the_best_epoch_and_stops_after_the_patience(monkeypatch) -> None:
    corpus = ring_corpus()
    scripted = iter([0.10, 0.30, 0.20, 0.25, 0.90, 0.95])
    states: list[dict[str, torch.Tensor]] = []

    def fake_validation(model, vocab, corpus, cfg, counts):
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"full_seen_removed": next(scripted)}

    monkeypatch.setattr(train_module, "validation_ndcg", fake_validation)
    cfg = TrainConfig(
        dim=16, epochs=50, patience=2, select_on="full_seen_removed", norm="post",
        batch_size=32, max_len=12, progress=False,
    )  # fmt: skip
    result = train(corpus, cfg)
    assert result.valid_seen_removed_ndcg == [0.10, 0.30, 0.20, 0.25]  # stopped after epoch 4
    assert len(result.epoch_losses) == 4 and result.best_epoch == 2
    assert result.extra["stopped"] == "no improvement for 2 epochs"
    for name, value in result.model.state_dict().items():
        torch.testing.assert_close(value, states[1][name].cpu(), msg=name)  # epoch 2 kept


def test_a_full_ranking_with_too_few_hits_hands_the_choice_to_the_sampled_ndcg() -> None:
    cfg = TrainConfig(select_on="full_seen_removed", select_min_hits=20)
    sparse = {"full_seen_removed": 0.004, "sampled": 0.30, "hits": 3.0}
    sparser = {"full_seen_removed": 0.009, "sampled": 0.20, "hits": 7.0}
    resolved = {"full_seen_removed": 0.002, "sampled": 0.10, "hits": 20.0}
    # unresolved epochs are compared by the sampled NDCG@10, not by their noisy full one
    assert selection_key(cfg, sparse) > selection_key(cfg, sparser)
    # any resolved epoch outranks every unresolved one; then the full metric decides
    assert selection_key(cfg, resolved) > selection_key(cfg, sparse)
    assert selection_key(cfg, {**resolved, "full_seen_removed": 0.003}) > selection_key(
        cfg, resolved
    )
    # ties on the full metric are broken by the sampled one
    better = {**resolved, "sampled": 0.11}
    assert selection_key(cfg, better) > selection_key(cfg, resolved)
    # selecting on the sampled protocol never looks at hits
    on_sampled = TrainConfig(select_on="sampled")
    assert selection_key(on_sampled, {"sampled": 0.3}) == (True, 0.3, 0.3)
    with pytest.raises(ValueError, match="select_min_hits"):
        TrainConfig(select_min_hits=-1)


def test_epochs_are_kept_by_the_sampled_ndcg_until_the_full_ranking_resolves(monkeypatch) -> None:
    # (full seen removed, sampled, hits) per epoch: epochs 1-3 find under 20 targets
    script = [(0.009, 0.20, 5), (0.001, 0.31, 2), (0.008, 0.25, 6), (0.020, 0.28, 40)]
    script += [(0.030, 0.26, 55)] + [(0.010, 0.40, 30)] * 3
    states: list[dict[str, torch.Tensor]] = []

    def run(**options: object):
        scripted = iter(script)

        def fake_validation(model, vocab, corpus, cfg, counts):
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            full, sampled, hits = next(scripted)
            return {"full_seen_removed": full, "sampled": sampled, "hits": float(hits)}

        monkeypatch.setattr(train_module, "validation_ndcg", fake_validation)
        states.clear()
        base = dict(dim=16, norm="post", batch_size=32, max_len=12, progress=False)
        return train(ring_corpus(), TrainConfig(**base, **options))  # type: ignore[arg-type]

    result = run(epochs=3, patience=None)
    assert result.best_epoch == 2  # the sampled NDCG@10's best, not the full one's (epoch 1)
    assert str(result.extra["selected_on"]).startswith("sampled")
    for name, value in result.model.state_dict().items():
        torch.testing.assert_close(value, states[1][name].cpu(), msg=name)
    result = run(epochs=50, patience=3)  # epochs 6-8 resolve, below epoch 5 on the full one
    assert result.best_epoch == 5 and len(result.epoch_losses) == 8
    assert "selected_on" not in result.extra


def train_on_scripted_validation(monkeypatch, answers: list[dict], **options) -> TrainResult:
    """Train post-norm on the ring corpus while `validation_ndcg` gives ``answers`` in turn."""
    scripted = iter(answers)
    monkeypatch.setattr(train_module, "validation_ndcg", lambda *_args: next(scripted))
    base = dict(dim=16, norm="post", batch_size=32, max_len=12, progress=False)
    return train(ring_corpus(), TrainConfig(**{**base, **options}))  # type: ignore[arg-type]


def test_the_learning_rate_plateau_follows_the_selection_order(monkeypatch) -> None:
    # epoch 1 is unresolved (its sampled 0.30 is not comparable with a full NDCG@10); epoch 2
    # is the first resolved one, so an improvement; epochs 3 and 4 fall back: halved after 4
    script = [(0.002, 0.30, 5), (0.02, 0.2, 40), (0.01, 0.2, 40), (0.01, 0.2, 40)]
    answers = [{"full_seen_removed": f, "sampled": s, "hits": float(h)} for f, s, h in script]
    result = train_on_scripted_validation(
        monkeypatch, answers, epochs=4, patience=None, lr=1e-3, lr_decay=0.5
    )
    assert result.extra["lr_after_epoch"] == [1e-3, 1e-3, 1e-3, 5e-4]
    assert result.best_epoch == 2


def test_the_norm_race_keeps_the_layout_better_on_validation(monkeypatch) -> None:
    def scripted(post: list[float], pre: list[float]):
        scores = {False: iter(post), True: iter(pre)}

        def fake_validation(model, vocab, corpus, cfg, counts):
            return {"full_seen_removed": next(scores[model.config.user.norm_first])}

        return fake_validation

    base = dict(dim=16, epochs=5, patience=None, batch_size=32, max_len=12, progress=False)
    # pre-norm wins the race: it trains on alone, its curve is the result's
    monkeypatch.setattr(
        train_module, "validation_ndcg", scripted([0.2, 0.3], [0.1, 0.35, 0.4, 0.3, 0.2])
    )
    result = train(ring_corpus(), TrainConfig(**base, race_epochs=2))  # type: ignore[arg-type]
    assert result.model.config.user.norm_first is True
    assert result.extra["norm_race"] == {
        "epochs": 2,
        "kept": "pre",
        "post": {"full_seen_removed": [0.2, 0.3]},
        "pre": {"full_seen_removed": [0.1, 0.35]},
    }
    assert result.valid_seen_removed_ndcg == [0.1, 0.35, 0.4, 0.3, 0.2]
    assert result.best_epoch == 3 and len(result.epoch_losses) == 5
    # post-norm wins, on its best epoch (the first), not on its last
    monkeypatch.setattr(
        train_module, "validation_ndcg", scripted([0.5, 0.3, 0.1, 0.1, 0.1], [0.2, 0.4])
    )
    result = train(ring_corpus(), TrainConfig(**base, race_epochs=2))  # type: ignore[arg-type]
    assert (
        result.model.config.user.norm_first is False and result.extra["norm_race"]["kept"] == "post"
    )
    assert result.best_epoch == 1
    # each contender starts from the weights it would have alone
    torch.manual_seed(0)
    alone, _, _ = build_model(ring_corpus(), TrainConfig(**base, norm="pre"))  # type: ignore[arg-type]
    torch.manual_seed(0)
    raced, _, _ = build_model(ring_corpus(), TrainConfig(**base), norm="pre")  # type: ignore[arg-type]
    for name, value in alone.state_dict().items():
        torch.testing.assert_close(value, raced.state_dict()[name], msg=name)
    assert raced.config.user.norm_first is True
    with pytest.raises(ValueError, match="norm must be"):
        TrainConfig(norm="sandwich")
    with pytest.raises(ValueError, match="gated residuals need pre-norm"):
        TrainConfig(gated=True)


def test_without_a_validation_split_there_is_no_race() -> None:
    corpus = ring_corpus()
    cfg = TrainConfig(dim=16, epochs=2, batch_size=32, max_len=12, progress=False)
    result = train(corpus, replace(cfg, select_on_valid=False))
    assert "norm_race" not in result.extra and result.model.config.user.norm_first is False
    assert len(result.epoch_losses) == 2 and result.best_epoch is None


def test_learning_rate_decays_after_two_epochs_without_improvement(monkeypatch) -> None:
    scores = [0.10, 0.30, 0.20, 0.25, 0.90, 0.80, 0.85, 0.70]
    result = train_on_scripted_validation(
        monkeypatch,
        [{"full_seen_removed": x} for x in scores],
        epochs=8,
        patience=None,
        lr=1e-3,
        lr_decay=0.5,
    )
    # epochs 3 and 4 do not beat 0.30: halved; 5 improves; 6 and 7 do not: halved again
    assert result.extra["lr_after_epoch"] == [1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 2.5e-4, 2.5e-4]
    assert result.best_epoch == 5
    with pytest.raises(ValueError, match="lr_decay"):
        TrainConfig(lr_decay=0.0)


def test_epochs_tied_on_the_full_ranking_are_told_apart_by_the_sampled_metric(monkeypatch) -> None:
    # KuaiRand-like data: no full-ranking hit in any epoch; the sampled NDCG still rises
    sampled = [0.20, 0.25, 0.24, 0.26, 0.22, 0.21]
    answers = [{"full_seen_removed": 0.0, "full": 0.0, "sampled": x} for x in sampled]
    result = train_on_scripted_validation(monkeypatch, answers, epochs=10, patience=2)
    assert result.best_epoch == 4 and len(result.epoch_losses) == 6  # then 2 epochs of patience


OPTION_CONFIGS = {
    "full softmax": dict(loss="full"),
    "sampled uniform": dict(loss="sampled", in_batch_negatives=0, num_negatives=16),
    "in-batch only": dict(loss="sampled", in_batch_negatives=16, num_negatives=0),
    "post-norm": dict(norm="post"),
    "pre-norm": dict(norm="pre"),
    "norm race": dict(norm="race", race_epochs=2),
    "gated": dict(norm="pre", gated=True),
    "filter": dict(filter=True),
    "contrastive": dict(contrastive=0.1),
    "future window": dict(future_window=3),
    "future window, sampled": dict(future_window=3, loss="sampled", num_negatives=16),
    "lr decay": dict(lr_decay=0.5),
}


@pytest.mark.parametrize("option", list(OPTION_CONFIGS))
def test_small_training_run_per_option(option: str) -> None:
    corpus = ring_corpus()
    cfg = TrainConfig(
        dim=16, epochs=3, batch_size=32, max_len=12, select_on="full_seen_removed",
        progress=False, **OPTION_CONFIGS[option],  # type: ignore[arg-type]
    )  # fmt: skip
    result = train(corpus, cfg)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert len(result.valid_seen_removed_ndcg) == 3 and result.best_epoch is not None
    metrics = evaluate_model(result.model, result.vocab, corpus.test)["all"]
    assert set(metrics) == {"n", "full", "full_seen_removed", "sampled"}
    assert all(math.isfinite(v) for v in metrics["full_seen_removed"].values())


def test_evaluation_report_policy() -> None:
    corpus = ring_corpus()
    result = train(corpus, TrainConfig(dim=16, epochs=2, batch_size=32, max_len=12, progress=False))
    report = evaluation_report(result.model, result.vocab, corpus)
    metrics = report["metrics"]
    assert metrics["split"] == "test"
    assert set(metrics) == {"split", "model", "most_popular", "cooccurrence"}
    for who in ("model", "most_popular", "cooccurrence"):
        assert set(metrics[who]["all"]) == {"n", "full", "full_seen_removed", "sampled"}
    assert report["cooccurrence_valid_ndcg@10"]  # its parameters were chosen on validation
    sampled = evaluation_report(
        result.model, result.vocab, corpus, protocol="sampled100", split="valid"
    )["metrics"]
    assert set(sampled["model"]["all"]) == {"n", "sampled"} and "cooccurrence" not in sampled
    full = evaluation_report(result.model, result.vocab, corpus, protocol="full", baselines=False)
    assert set(full["metrics"]["model"]["all"]) == {"n", "full", "full_seen_removed"}
    cold = evaluation_report(result.model, result.vocab, corpus, cold_items=["i3"])
    assert "within_surface" in cold and "sampled_by_target_surface" in cold
    with pytest.raises(ValueError, match="protocol must be"):
        evaluation_report(result.model, result.vocab, corpus, protocol="sampled")


def test_s3rec_loaders_read_shared_data_or_say_where_it_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"amazon-toys: .*not found"):
        load_s3rec("amazon-toys", root=tmp_path)
    with pytest.raises(ValueError, match="unknown S3-Rec dataset"):
        load_s3rec("amazon-books")
    try:
        corpus = load_corpus("amazon-toys")
    except FileNotFoundError:
        pytest.skip("../shared/data/amazon-s3rec is absent here")
    assert (len(corpus.items), len(corpus.test)) == (11924, 19412)
    assert corpus.name == "amazon-toys" and "tags" in corpus.items.text
    seen = history_rows(Vocab(corpus.items.item_id, []), corpus.test.history)
    assert len(seen[0]) == len(corpus.test) + 1


def test_metrics_of_seen_removed_ranks_are_at_least_the_full_ones() -> None:
    ranks_full = np.array([0.0, 12.0, 3.0, np.inf])
    ranks_unseen = np.array([0.0, 9.0, 1.0, np.inf])
    full, unseen = metrics_from_ranks(ranks_full, (10,)), metrics_from_ranks(ranks_unseen, (10,))
    assert unseen["recall@10"] == pytest.approx(0.75) and full["recall@10"] == pytest.approx(0.5)
