"""Leave-last-out next-item evaluation: Recall@K and NDCG@K, two protocols.

- ``full``: the target is ranked against every catalogue item.
- ``sampled``: the target is ranked against ``num_negatives`` (100) items drawn uniformly from the
  catalogue, as in the AutoCDSR paper's protocol.

A target the catalogue does not contain (an item never seen in training, with no metadata row)
cannot be retrieved and counts as a miss in both protocols. Ties are broken pessimistically for
the model (an item scoring equal to the target ranks above it); the popularity baseline's integer
counts are made tie-free with a fixed, seeded jitter so it is not penalised by the many ties.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from models.corpus import Corpus, EvalSet
from models.item_encoder import FIRST_ITEM_ID
from models.recommender import Recommender
from models.vocab import Vocab

Scorer = Callable[[np.ndarray], np.ndarray]  # example indices (b,) -> scores (b, N)


def rank_targets(
    scorer: Scorer, target_rows: np.ndarray, negatives: np.ndarray, batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of each target, full and sampled; ``inf`` for unknown targets.

    target_rows (U,) catalogue rows (-1 = unknown), negatives (U, K) catalogue rows.
    """
    u = len(target_rows)
    full = np.full(u, np.inf)
    sampled = np.full(u, np.inf)
    for lo in range(0, u, batch_size):
        idx = np.arange(lo, min(u, lo + batch_size))
        scores = scorer(idx)  # (b, N)
        rows = target_rows[idx]
        known = rows >= 0
        target = scores[np.arange(len(idx)), np.maximum(rows, 0)][:, None]  # (b, 1)
        full_b = (scores >= target).sum(1) - 1  # items other than the target scoring >= it
        neg = np.take_along_axis(scores, negatives[idx], axis=1)  # (b, K)
        sampled_b = (neg >= target).sum(1)
        full[idx[known]] = full_b[known]
        sampled[idx[known]] = sampled_b[known]
    return full, sampled


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        gain = np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 0) + 2.0), 0.0)
        out[f"ndcg@{k}"] = float(gain.mean()) if len(ranks) else 0.0
    return out


def sample_negatives(target_rows: np.ndarray, n_items: int, k: int, seed: int) -> np.ndarray:
    """(U, k) uniform catalogue rows, never equal to the row's target."""
    rng = np.random.default_rng(seed)
    neg = rng.integers(0, n_items, size=(len(target_rows), k))
    clash = neg == target_rows[:, None]
    neg[clash] = (neg[clash] + 1) % n_items
    return neg


def _report(eval_set: EvalSet, full: np.ndarray, sampled: np.ndarray, ks: Sequence[int]) -> dict:
    report: dict[str, dict[str, object]] = {}
    groups = ["all", *sorted(set(eval_set.group.tolist()) - {"all"})]
    for group in groups:
        sel = np.ones(len(full), bool) if group == "all" else eval_set.group == group
        report[group] = {
            "n": int(sel.sum()),
            "full": metrics_from_ranks(full[sel], ks),
            "sampled": metrics_from_ranks(sampled[sel], ks),
        }
    return report


@torch.inference_mode()
def user_vectors_for(
    model: Recommender, vocab: Vocab, histories: EvalSet, batch_size: int = 256
) -> np.ndarray:
    """User vectors for every history of an eval set: (U, D) float32."""
    model.eval()
    max_len = model.config.user.max_len
    out = []
    seqs = histories.history
    for lo in range(0, len(seqs), batch_size):
        batch = [seqs.sequence(i) for i in range(lo, min(len(seqs), lo + batch_size))]
        ids, surfaces, mask = vocab.batch(batch, max_len)
        out.append(model.user_vectors(ids, surfaces, mask).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.dim), np.float32)


def evaluate_model(
    model: Recommender,
    vocab: Vocab,
    eval_set: EvalSet,
    *,
    ks: Sequence[int] = (10, 20),
    num_negatives: int = 100,
    seed: int = 0,
) -> dict:
    """Metrics of the model on ``eval_set``, overall and per group."""
    with torch.inference_mode():
        model.eval()
        items = model.all_item_vectors().numpy()  # (N, D)
    users = user_vectors_for(model, vocab, eval_set)  # (U, D)
    rows = vocab.item_rows(eval_set.target_item)
    negatives = sample_negatives(rows, len(vocab), num_negatives, seed)
    full, sampled = rank_targets(lambda idx: users[idx] @ items.T, rows, negatives)
    return _report(eval_set, full, sampled, ks)


@torch.inference_mode()
def sampled_metrics(
    model: Recommender,
    vocab: Vocab,
    eval_set: EvalSet,
    *,
    ks: Sequence[int] = (10,),
    num_negatives: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """The sampled protocol alone, without scoring the whole catalogue: cheap enough to run
    after every training epoch (model selection on the validation split)."""
    users = torch.from_numpy(user_vectors_for(model, vocab, eval_set))  # (U, D)
    rows = vocab.item_rows(eval_set.target_item)
    negatives = sample_negatives(rows, len(vocab), num_negatives, seed)  # (U, K)
    candidates = np.concatenate([np.maximum(rows, 0)[:, None], negatives], axis=1)  # (U, 1 + K)
    items = model.item_vectors(torch.from_numpy(candidates + FIRST_ITEM_ID))  # (U, 1 + K, D)
    scores = torch.einsum("ud,ukd->uk", users, items).numpy()  # (U, 1 + K)
    ranks = (scores[:, 1:] >= scores[:, :1]).sum(1).astype(np.float64)
    ranks[rows < 0] = np.inf
    return metrics_from_ranks(ranks, ks)


def evaluate_popularity(
    corpus: Corpus,
    vocab: Vocab,
    eval_set: EvalSet,
    *,
    ks: Sequence[int] = (10, 20),
    num_negatives: int = 100,
    seed: int = 0,
) -> dict:
    """The most-popular baseline: every user gets the items ranked by training frequency."""
    train_rows = vocab.item_rows(corpus.train.item_id)
    counts = np.bincount(train_rows[train_rows >= 0], minlength=len(vocab)).astype(np.float64)
    counts += np.random.default_rng(seed + 1).uniform(0, 0.5, len(vocab))  # tie-break
    rows = vocab.item_rows(eval_set.target_item)
    negatives = sample_negatives(rows, len(vocab), num_negatives, seed)
    full, sampled = rank_targets(
        lambda idx: np.broadcast_to(counts, (len(idx), len(counts))), rows, negatives
    )
    return _report(eval_set, full, sampled, ks)
