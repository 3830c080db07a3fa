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
from models.matryoshka import truncate_np
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
        ids, surfaces, mask = vocab.batch(batch, max_len)  # (B, T) each, on the CPU
        device = model.item_cat.device  # training may run on a GPU
        vecs = model.user_vectors(ids.to(device), surfaces.to(device), mask.to(device))
        out.append(vecs.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.dim), np.float32)


def evaluate_model(
    model: Recommender,
    vocab: Vocab,
    eval_set: EvalSet,
    *,
    ks: Sequence[int] = (10, 20),
    num_negatives: int = 100,
    seed: int = 0,
    dim: int | None = None,
    item_model: Recommender | None = None,
    full_ranking: bool = True,
) -> dict:
    """Metrics of the model on ``eval_set``, overall and per group; with ``dim``, of the
    Matryoshka prefix of that many dimensions; with ``item_model`` (same catalogue), this
    model's user vectors against that model's item vectors (backward compatibility); without
    ``full_ranking``, the sampled protocol only (cheap: no scoring of the whole catalogue)."""
    users, items = _vectors(model, vocab, eval_set, dim)
    if item_model is not None:
        with torch.inference_mode():
            items = item_model.eval().all_item_vectors().cpu().numpy()  # (N, D)
        if items.shape != (len(vocab), users.shape[1]):
            raise ValueError(
                f"item model vectors {items.shape} do not fit {len(vocab)} items x "
                f"{users.shape[1]} dims"
            )
    rows = vocab.item_rows(eval_set.target_item)
    negatives = sample_negatives(rows, len(vocab), num_negatives, seed)
    if not full_ranking:  # the sampled protocol alone: 1 + K scores per user, not N
        candidates = np.concatenate([np.maximum(rows, 0)[:, None], negatives], axis=1)
        scores = np.einsum("ud,ukd->uk", users, items[candidates])  # (U, 1 + K)
        sampled = (scores[:, 1:] >= scores[:, :1]).sum(1).astype(np.float64)
        sampled[rows < 0] = np.inf
        report = _report(eval_set, sampled, sampled, ks)
        for res in report.values():
            res.pop("full")
        return report
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
    device = model.item_cat.device
    items = model.item_vectors(torch.from_numpy(candidates + FIRST_ITEM_ID).to(device))
    scores = torch.einsum("ud,ukd->uk", users.to(device), items).cpu().numpy()  # (U, 1 + K)
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


def _vectors(
    model: Recommender, vocab: Vocab, eval_set: EvalSet, dim: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(users (U, d), items (N, d)) float32: served vectors, or their ``dim`` prefix."""
    with torch.inference_mode():
        model.eval()
        items = model.all_item_vectors().cpu().numpy()  # (N, D)
    users = user_vectors_for(model, vocab, eval_set)  # (U, D)
    if dim is not None and dim != model.dim:
        norm = model.config.item.normalize
        users, items = truncate_np(users, dim, norm), truncate_np(items, dim, norm)
    return users, items


def popularity_scores(corpus: Corpus, vocab: Vocab, seed: int = 0) -> np.ndarray:
    """Training frequency of each catalogue item (N,), with the seeded tie-breaking jitter."""
    train_rows = vocab.item_rows(corpus.train.item_id)
    counts = np.bincount(train_rows[train_rows >= 0], minlength=len(vocab)).astype(np.float64)
    return counts + np.random.default_rng(seed + 1).uniform(0, 0.5, len(vocab))


def within_surface_ranks(
    scorer: Scorer,
    target_rows: np.ndarray,
    target_surfaces: np.ndarray,
    item_surfaces: np.ndarray,
    batch_size: int = 128,
) -> np.ndarray:
    """0-based rank of each target among the catalogue items of its own surface (U,).

    What ``/v1/retrieve`` with ``surfaces=[s]`` ranks: only items whose catalogue surface is
    the target event's surface. A target unknown to the catalogue, or listed under another
    surface, is a miss (``inf``).
    """
    ranks = np.full(len(target_rows), np.inf)
    for surface in sorted(set(target_surfaces.tolist())):
        cols = np.flatnonzero(item_surfaces == surface)  # (N_s,)
        members = np.flatnonzero(target_surfaces == surface)
        ok = members[(target_rows[members] >= 0)]
        ok = ok[item_surfaces[target_rows[ok]] == surface]
        for lo in range(0, len(ok), batch_size):
            idx = ok[lo : lo + batch_size]
            scores = scorer(idx)  # (b, N)
            target = scores[np.arange(len(idx)), target_rows[idx]][:, None]  # (b, 1)
            ranks[idx] = (scores[:, cols] >= target).sum(1) - 1
    return ranks


def evaluate_within_surface(
    model: Recommender | None,
    vocab: Vocab,
    item_surfaces: np.ndarray,
    eval_set: EvalSet,
    *,
    popularity: np.ndarray | None = None,
    cold_items: Sequence[str] = (),
    ks: Sequence[int] = (10, 20),
    dim: int | None = None,
) -> dict[str, dict[str, object]]:
    """Full ranking within the target's surface, per target surface (and warm / cold target).

    Scores by the model, or by ``popularity`` (N,) when ``model`` is None. Groups: "all",
    "surface=S", and with ``cold_items`` (ids never trained on) "warm", "cold", "S/warm",
    "S/cold". Each group: {"n", metrics...}.
    """
    rows = vocab.item_rows(eval_set.target_item)
    if model is not None:
        users, items = _vectors(model, vocab, eval_set, dim)
        ranks = within_surface_ranks(
            lambda idx: users[idx] @ items.T, rows, eval_set.target_surface, item_surfaces
        )
    else:
        if popularity is None:
            raise ValueError("give a model or popularity scores")
        scores = popularity
        ranks = within_surface_ranks(
            lambda idx: np.broadcast_to(scores, (len(idx), len(scores))),
            rows,
            eval_set.target_surface,
            item_surfaces,
        )
    surf = eval_set.target_surface.astype(str)
    labels: dict[str, np.ndarray] = {"all": np.ones(len(rows), bool)}
    for s in sorted(set(surf.tolist())):
        labels[f"surface={s}"] = surf == s
    if len(cold_items):
        cold = np.isin(eval_set.target_item.astype(str), np.asarray(cold_items, dtype=str))
        labels["warm"], labels["cold"] = ~cold, cold
        for s in sorted(set(surf.tolist())):
            labels[f"{s}/warm"] = (surf == s) & ~cold
            labels[f"{s}/cold"] = (surf == s) & cold
    return {
        name: {"n": int(sel.sum()), **metrics_from_ranks(ranks[sel], ks)}
        for name, sel in labels.items()
    }
