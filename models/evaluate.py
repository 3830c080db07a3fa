"""Leave-last-out next-item evaluation: Recall@K and NDCG@K, three protocols.

- ``full``: the target is ranked against every catalogue item.
- ``full_seen_removed``: the same, with the items of the user's input history removed from the
  ranking (the target itself is never removed, also when the user had it before): the protocol
  of S3-Rec, BSARec and eSASRec, and uniserve's headline number (SPEC, "Quality protocol").
  With one target per user, Recall@K is the field's HR@K.
- ``sampled``: the target is ranked against ``num_negatives`` (100) items drawn uniformly from the
  catalogue, as in the AutoCDSR paper's protocol.

A target the catalogue does not contain (an item never seen in training, with no metadata row)
cannot be retrieved and counts as a miss in every protocol. Ties are broken pessimistically for
the model (an item scoring equal to the target ranks above it); the baselines' integer counts
are made tie-free with a fixed, seeded jitter so they are not penalised by the many ties.

Baselines: most-popular (`evaluate_popularity`) and item-to-item co-occurrence
(`Cooccurrence`, `evaluate_cooccurrence`). `evaluation_report` is the policy of
``uniserve evaluate``: which split, protocols, groups and baselines are measured for a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch

from models.blend import BETAS, Blend, ItemNeighbours
from models.corpus import Corpus, EvalSet, Sequences
from models.holdout import drop_items
from models.item_encoder import FIRST_ITEM_ID
from models.matryoshka import truncate_np
from models.recommender import Recommender
from models.vocab import Vocab

Scorer = Callable[[np.ndarray], "np.ndarray | torch.Tensor"]  # example indices (b,) -> (b, N)
PROTOCOLS = ("full", "full_seen_removed", "sampled")


def history_rows(vocab: Vocab, history: Sequences) -> tuple[np.ndarray, np.ndarray]:
    """Each history's catalogue rows in CSR form: (offsets (U + 1,), rows (E,)), -1 = unknown."""
    return history.offsets.astype(np.int64), vocab.item_rows(history.item_id)


def rank_targets(
    scorer: Scorer,
    target_rows: np.ndarray,
    negatives: np.ndarray,
    batch_size: int = 128,
    seen: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """0-based ranks of each target: (full, full with seen items removed, sampled); ``inf`` for
    unknown targets. The one computation of every ranking metric, for models and baselines.

    target_rows (U,) catalogue rows (-1 = unknown), negatives (U, K) catalogue rows, seen the
    histories' rows in CSR form (`history_rows`; None: nothing removed). Scores may be NumPy or
    torch (on any device); the ranking runs in torch where the scores are.
    """
    u = len(target_rows)
    full, unseen, sampled = (np.full(u, np.inf) for _ in range(3))
    for lo in range(0, u, batch_size):
        idx = np.arange(lo, min(u, lo + batch_size))
        rows = target_rows[idx]
        known = rows >= 0
        scores = _scores(scorer, idx)  # (b, N) float tensor, only read
        dev = scores.device
        safe = torch.from_numpy(np.maximum(rows, 0)).to(dev)  # (b,)
        target = scores.gather(1, safe[:, None])  # (b, 1)
        full_b = (scores >= target).sum(1) - 1  # items other than the target scoring >= it
        neg = scores.gather(1, torch.from_numpy(negatives[idx]).to(dev))  # (b, K)
        sampled_b = (neg >= target).sum(1)
        unseen_b = full_b
        if seen is not None:  # less the seen items full_b counted, each item once
            which, cols = _seen_pairs(seen, idx, rows, scores.shape[1])  # (e,) each
            which_t, cols_t = torch.from_numpy(which).to(dev), torch.from_numpy(cols).to(dev)
            above = scores[which_t, cols_t] >= target[which_t, 0]  # (e,)
            unseen_b = full_b - torch.bincount(which_t[above], minlength=len(idx))
        for out, vals in ((full, full_b), (unseen, unseen_b), (sampled, sampled_b)):
            out[idx[known]] = vals.cpu().numpy()[known]
    return full, unseen, sampled


def _seen_pairs(
    seen: tuple[np.ndarray, np.ndarray], idx: np.ndarray, rows: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (batch row, catalogue row) pairs of the histories of users ``idx`` (B,),
    leaving out unknown items and each user's own target ``rows`` (B,): never removed."""
    offsets, hist = seen
    starts, ends = offsets[idx], offsets[idx + 1]
    lengths = ends - starts  # (b,)
    which = np.repeat(np.arange(len(idx)), lengths)  # (e,) batch row of each event
    first = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)  # (e,)
    cols = hist[first + np.arange(len(which))]  # (e,) catalogue rows
    keep = (cols >= 0) & (cols != rows[which])
    pairs = np.unique(which[keep] * np.int64(n_items) + cols[keep])  # an item seen twice: once
    return pairs // n_items, pairs % n_items


def _scores(scorer: Scorer, idx: np.ndarray) -> torch.Tensor:
    raw = scorer(idx)
    if isinstance(raw, torch.Tensor):
        return raw.float()
    return torch.from_numpy(np.asarray(raw, dtype=np.float32))


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float((ranks < k).mean()) if len(ranks) else 0.0
        out[f"ndcg@{k}"] = float(ndcg_gains(ranks, k).mean()) if len(ranks) else 0.0
    return out


def sample_negatives(target_rows: np.ndarray, n_items: int, k: int, seed: int) -> np.ndarray:
    """(U, k) uniform catalogue rows, never equal to the row's target."""
    rng = np.random.default_rng(seed)
    neg = rng.integers(0, n_items, size=(len(target_rows), k))
    clash = neg == target_rows[:, None]
    neg[clash] = (neg[clash] + 1) % n_items
    return neg


def _report(eval_set: EvalSet, ranks: dict[str, np.ndarray], ks: Sequence[int]) -> dict:
    """{group: {"n", protocol: metrics}} for "all" and each of the eval set's groups."""
    report: dict[str, dict[str, object]] = {}
    groups = ["all", *sorted(set(eval_set.group.tolist()) - {"all"})]
    for group in groups:
        sel = np.ones(len(eval_set), bool) if group == "all" else eval_set.group == group
        report[group] = {
            "n": int(sel.sum()),
            **{name: metrics_from_ranks(r[sel], ks) for name, r in ranks.items()},
        }
    return report


def all_ranks(
    scorer: Scorer,
    vocab: Vocab,
    eval_set: EvalSet,
    num_negatives: int,
    seed: int,
    batch_size: int = 128,
) -> dict[str, np.ndarray]:
    """{protocol: ranks (U,)} of every protocol for the targets of ``eval_set``."""
    rows = vocab.item_rows(eval_set.target_item)
    negatives = sample_negatives(rows, len(vocab), num_negatives, seed)
    seen = history_rows(vocab, eval_set.history)
    ranks = rank_targets(scorer, rows, negatives, batch_size=batch_size, seen=seen)
    return dict(zip(PROTOCOLS, ranks, strict=True))


@torch.inference_mode()
def user_vectors_for(
    model: Recommender, vocab: Vocab, histories: EvalSet, batch_size: int = 256
) -> np.ndarray:
    """User vectors for every history of an eval set: (U, D) float32.

    Histories are encoded shortest first, so each batch pads only to its own longest (padding
    never changes a vector: `models.user_encoder`); on Amazon, where most histories are a few
    events and a random batch of 256 almost always holds one of ``max_len``, this runs the
    encoder over a fraction of the positions."""
    model.eval()
    max_len = model.config.user.max_len
    seqs = histories.history
    out = np.zeros((len(seqs), model.dim), np.float32)
    order = np.argsort(np.minimum(seqs.lengths, max_len), kind="stable")  # (U,)
    device = model.item_cat.device  # training may run on a GPU
    for lo in range(0, len(order), batch_size):
        rows = order[lo : lo + batch_size]
        ids, surfaces, mask = vocab.batch([seqs.sequence(int(i)) for i in rows], max_len)
        vecs = model.user_vectors(ids.to(device), surfaces.to(device), mask.to(device))
        out[rows] = vecs.float().cpu().numpy()
    return out


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
    blend: Blend | None = None,
) -> dict:
    """Metrics of the model on ``eval_set``, overall and per group; with ``dim``, of the
    Matryoshka prefix of that many dimensions; with ``item_model`` (same catalogue), this
    model's user vectors against that model's item vectors (backward compatibility); without
    ``full_ranking``, the sampled protocol only (cheap: no scoring of the whole catalogue);
    with ``blend``, of the served score (`models.blend`: the model's plus the co-occurrence
    term of each history)."""
    users, items = _vectors(model, vocab, eval_set, dim)
    if item_model is not None:
        with torch.inference_mode():
            items = item_model.eval().all_item_vectors().cpu().numpy()  # (N, D)
        if items.shape != (len(vocab), users.shape[1]):
            raise ValueError(
                f"item model vectors {items.shape} do not fit {len(vocab)} items x "
                f"{users.shape[1]} dims"
            )
    if blend is not None:
        scorer = blended_scorer(users, items, blend, vocab, eval_set)
        named = all_ranks(scorer, vocab, eval_set, num_negatives, seed, _sparse_batch(vocab))
        if not full_ranking:
            named = {"sampled": named["sampled"]}
        return _report(eval_set, named, ks)
    rows = vocab.item_rows(eval_set.target_item)
    negatives = sample_negatives(rows, len(vocab), num_negatives, seed)
    if not full_ranking:  # the sampled protocol alone: 1 + K scores per user, not N
        candidates = np.concatenate([np.maximum(rows, 0)[:, None], negatives], axis=1)
        scores = np.einsum("ud,ukd->uk", users, items[candidates])  # (U, 1 + K)
        sampled = (scores[:, 1:] >= scores[:, :1]).sum(1).astype(np.float64)
        sampled[rows < 0] = np.inf
        return _report(eval_set, {"sampled": sampled}, ks)
    users_t, items_t = torch.from_numpy(users), torch.from_numpy(items)
    scorer = lambda idx: users_t[idx] @ items_t.T  # noqa: E731  (b, N)
    return _report(eval_set, all_ranks(scorer, vocab, eval_set, num_negatives, seed), ks)


def _sparse_batch(vocab: Vocab) -> int:
    """Histories per batch when co-occurrence scores are made: each batch holds a few dense
    (N, b) float arrays (the recent-item profile, the scores), so b shrinks as N grows."""
    return max(16, min(512, 20_000_000 // max(len(vocab), 1)))


def blended_scorer(
    users: np.ndarray, items: np.ndarray, blend: Blend, vocab: Vocab, eval_set: EvalSet
) -> Callable[[np.ndarray], torch.Tensor]:
    """Scores (b, N) of the served blend for the eval set's histories ``idx``: user vectors
    (U, D) against item vectors (N, D), plus ``beta * log(1 + c)`` of each history."""
    users_t, items_t = torch.from_numpy(users), torch.from_numpy(items)
    counts_t = blend.neighbours.transposed()

    def scorer(idx: np.ndarray) -> torch.Tensor:
        c = blend.neighbours.batch_scores(eval_set.history, vocab, idx, counts_t)  # (b, N)
        return users_t[idx] @ items_t.T + blend.bonus(c)

    return scorer


def choose_beta(
    model: Recommender,
    vocab: Vocab,
    eval_set: EvalSet,
    neighbours: ItemNeighbours,
    betas: Sequence[float] = BETAS,
    batch_size: int | None = None,
) -> tuple[float, dict[str, float], float]:
    """The blend weight whose served score gives the best NDCG@10 (full ranking, seen items
    removed) on ``eval_set`` (the validation split), and each tried beta's NDCG@10. One pass
    over the users: each batch's model scores and co-occurrence term are computed once and
    ranked for every beta. Ties keep the smaller beta; and the best beta is kept only when its
    gain over the model alone (beta 0, which must be among ``betas``) is more than twice its
    standard error over the users (a paired comparison): a gain within noise, as where
    validation scores a few hits in a thousand, serves the model alone. Returns (beta, each
    beta's NDCG@10, the best beta's gain in standard errors; 0 when the best is beta 0)."""
    users, items = _vectors(model, vocab, eval_set, None)
    users_t, items_t = torch.from_numpy(users), torch.from_numpy(items)
    counts_t = neighbours.transposed()
    rows = vocab.item_rows(eval_set.target_item)  # (U,)
    offsets, hist = history_rows(vocab, eval_set.history)
    no_negatives = np.zeros((len(rows), 1), np.int64)  # the sampled protocol is not used
    ordered = sorted(set(betas))
    ranks = {beta: np.full(len(rows), np.inf) for beta in ordered}
    batch = batch_size or _sparse_batch(vocab)
    for lo in range(0, len(rows), batch):
        idx = np.arange(lo, min(len(rows), lo + batch))
        model_scores = users_t[idx] @ items_t.T  # (b, N)
        term = torch.log1p(neighbours.batch_scores(eval_set.history, vocab, idx, counts_t))
        for beta in ordered:
            _, unseen, _ = rank_targets(
                lambda _, b=beta, m=model_scores, t=term: m + b * t,  # type: ignore[misc]
                rows[idx],
                no_negatives[idx],
                batch_size=len(idx),
                seen=(offsets[lo : idx[-1] + 2], hist),
            )
            ranks[beta][idx] = unseen
    tried = {
        f"{beta:g}": round(metrics_from_ranks(r, (10,))["ndcg@10"], 5) for beta, r in ranks.items()
    }
    best = max(ordered, key=lambda beta: (tried[f"{beta:g}"], -beta))
    if best == 0.0 or 0.0 not in ranks:
        return best, tried, 0.0
    gain = ndcg_gains(ranks[best], 10) - ndcg_gains(ranks[0.0], 10)  # (U,) paired, per user
    se = gain.std(ddof=1) / np.sqrt(len(gain)) if len(gain) > 1 else np.inf
    z = float(gain.mean() / se) if se > 0 else (np.inf if gain.mean() > 0 else 0.0)
    return (best if z > 2.0 else 0.0), tried, round(z, 2)


def ndcg_gains(ranks: np.ndarray, k: int) -> np.ndarray:
    """Each user's NDCG@k (U,) from 0-based ranks (inf: a miss), one target per user."""
    hit = ranks < k
    return np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 0) + 2.0), 0.0)


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
    counts = popularity_scores(corpus, vocab, seed)  # (N,)
    scorer = lambda idx: np.broadcast_to(counts, (len(idx), len(counts)))  # noqa: E731
    return _report(eval_set, all_ranks(scorer, vocab, eval_set, num_negatives, seed), ks)


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
    blend: Blend | None = None,
) -> dict[str, dict[str, object]]:
    """Full ranking within the target's surface, per target surface (and warm / cold target).

    Scores by the model (with ``blend``, the served blend), or by ``popularity`` (N,) when
    ``model`` is None. Groups: "all",
    "surface=S", and with ``cold_items`` (ids never trained on) "warm", "cold", "S/warm",
    "S/cold". Each group: {"n", metrics...}.
    """
    rows = vocab.item_rows(eval_set.target_item)
    if model is not None:
        users, items = _vectors(model, vocab, eval_set, dim)
        scorer: Scorer = lambda idx: users[idx] @ items.T  # noqa: E731  (b, N)
        if blend is not None:
            blended = blended_scorer(users, items, blend, vocab, eval_set)
            scorer = lambda idx: blended(idx).numpy()  # noqa: E731
        ranks = within_surface_ranks(scorer, rows, eval_set.target_surface, item_surfaces)
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


# ---------------------------------------------------------------------------------------------
# Item-to-item co-occurrence baseline
# ---------------------------------------------------------------------------------------------


@dataclass
class Cooccurrence:
    """A model-free retriever: items that follow the user's recent items in training sequences.

    The counts are an `ItemNeighbours` table (`models.blend`): how often b comes within
    ``window`` events after a in a training sequence, weighted ``1 / gap`` (item-based CF on
    sequences, as in the session kNN baselines of Ludewig & Jannach, 2018). A user's score for
    item b is sum over the last ``last`` history events e (newest first, age 0, 1, ...) of
    ``decay ** age * counts[e, b]``, plus a popularity tie-break far below one count.
    """

    neighbours: ItemNeighbours
    counts_t: torch.Tensor  # (N, N) sparse CSR float32: counts transposed, [b, a]
    popularity: torch.Tensor  # (N,) float32 tie-break, < 1e-3

    @property
    def params(self) -> tuple[int, int, float]:
        """(window, last, decay)."""
        nb = self.neighbours
        return nb.window, nb.last, nb.decay

    @staticmethod
    def fit(
        train: Sequences,
        vocab: Vocab,
        *,
        window: int = 3,
        last: int = 3,
        decay: float = 0.5,
        two_way: bool = False,
    ) -> Cooccurrence:
        """The baseline counts b after a (``two_way``: before a as well, `ItemNeighbours.fit`)."""
        neighbours = ItemNeighbours.fit(
            train, vocab, window=window, last=last, decay=decay, two_way=two_way
        )
        rows = vocab.item_rows(train.item_id)  # (E,)
        pop = np.bincount(rows[rows >= 0], minlength=len(vocab)).astype(np.float64)
        popularity = torch.from_numpy(1e-4 * pop / max(pop.max(), 1.0)).float()
        return Cooccurrence(neighbours, neighbours.transposed(), popularity)

    def scores(self, histories: Sequences, vocab: Vocab, idx: np.ndarray) -> torch.Tensor:
        """Scores of every item for the histories ``idx``: (b, N) float32."""
        counts = self.neighbours.batch_scores(histories, vocab, idx, self.counts_t)  # (b, N)
        return counts + self.popularity


COOCCURRENCE_GRID = (
    (1, 1, 1.0),
    (3, 3, 0.5),
    (5, 5, 0.7),
    (10, 5, 0.7),
    (20, 10, 0.8),
)  # (window, last, decay)


def choose_cooccurrence(
    corpus: Corpus, vocab: Vocab, grid: Sequence[tuple[int, int, float]] = COOCCURRENCE_GRID
) -> tuple[Cooccurrence, dict[str, float]]:
    """The co-occurrence baseline whose (window, last, decay) gives the best validation NDCG@10
    (full ranking, seen items removed): the baseline is tuned on validation, like the model.
    Returns it and each grid point's validation NDCG@10."""
    if not len(corpus.valid):
        return Cooccurrence.fit(corpus.train, vocab), {}
    tried: dict[str, float] = {}
    best: tuple[float, Cooccurrence] | None = None
    for window, last, decay in grid:
        cooc = Cooccurrence.fit(corpus.train, vocab, window=window, last=last, decay=decay)
        value = cooccurrence_ndcg(cooc, vocab, corpus.valid)
        tried[f"window={window},last={last},decay={decay}"] = round(value, 5)
        if best is None or value > best[0]:
            best = (value, cooc)
    assert best is not None
    return best[1], tried


def cooccurrence_ndcg(cooc: Cooccurrence, vocab: Vocab, eval_set: EvalSet) -> float:
    """NDCG@10, full ranking with seen items removed: what a co-occurrence table is chosen on."""
    found = evaluate_cooccurrence(cooc, vocab, eval_set, ks=(10,), sampled=False)
    return float(found["all"]["full_seen_removed"]["ndcg@10"])


def evaluate_cooccurrence(
    cooc: Cooccurrence,
    vocab: Vocab,
    eval_set: EvalSet,
    *,
    ks: Sequence[int] = (10, 20),
    num_negatives: int = 100,
    seed: int = 0,
    sampled: bool = True,
) -> dict:
    """The co-occurrence baseline's metrics, like `evaluate_popularity`'s."""
    batch = _sparse_batch(vocab)
    scorer = lambda idx: cooc.scores(eval_set.history, vocab, idx)  # noqa: E731  (b, N)
    named = all_ranks(scorer, vocab, eval_set, num_negatives, seed, batch_size=batch)
    if not sampled:
        named.pop("sampled")
    return _report(eval_set, named, ks)


# ---------------------------------------------------------------------------------------------
# What `uniserve evaluate` measures
# ---------------------------------------------------------------------------------------------


def baseline_metrics(
    corpus: Corpus,
    vocab: Vocab,
    eval_set: EvalSet,
    *,
    seed: int = 0,
    cooccurrence: bool = True,
    chosen: tuple[Cooccurrence, dict[str, float]] | None = None,
) -> dict[str, object]:
    """Both baselines on ``eval_set``: {"most_popular", "cooccurrence",
    "cooccurrence_valid_ndcg@10" (its grid on the validation split)}; ``corpus.train`` is
    what they count (without held-out items, if any). ``chosen``: the co-occurrence retriever
    `choose_cooccurrence` already picked for this corpus, and its grid (not chosen again)."""
    out: dict[str, object] = {
        "most_popular": evaluate_popularity(corpus, vocab, eval_set, seed=seed)
    }
    if cooccurrence:
        cooc, tried = chosen or choose_cooccurrence(corpus, vocab)
        out["cooccurrence"] = evaluate_cooccurrence(cooc, vocab, eval_set, seed=seed)
        out["cooccurrence_valid_ndcg@10"] = tried
    return out


def evaluation_report(
    model: Recommender,
    vocab: Vocab,
    corpus: Corpus,
    *,
    split: str = "test",
    protocol: str = "both",
    cold_items: Sequence[str] = (),
    by_surface: bool = False,
    baselines: bool = True,
    dim: int | None = None,
    item_model: Recommender | None = None,
    seed: int = 0,
    blend: Blend | None = None,
    cooccurrence: tuple[Cooccurrence, dict[str, float]] | None = None,
) -> dict:
    """The evaluation policy: what is measured for a model on a corpus, and how.

    - ``split`` "test" or "valid" (choices are made on "valid").
    - ``protocol``: "both" (full ranking, with and without the seen items, and sampled-100),
      "full" (the two full rankings) or "sampled100" (sampled alone: no full scoring).
    - Items the model never trained on (``cold_items``, from ``--holdout-items``) are removed
      from the baselines' training data too, and force the per-surface report (warm / cold
      targets within their surface; sampled per target surface), as ``by_surface`` does.
    - ``baselines``: most-popular and item-to-item co-occurrence (its parameters chosen on the
      validation split), measured with the same protocols; ``cooccurrence``: that choice
      when already made (`choose_cooccurrence` on the same corpus).
    - ``blend`` (`models.blend`, saved with the model): "model" is the served score (model
      plus co-occurrence term), and "model_alone" the model's vectors without it.
    """
    if split not in ("test", "valid"):
        raise ValueError(f"split must be test or valid, got {split!r}")
    if protocol not in ("both", "full", "sampled100"):
        raise ValueError(f"protocol must be both, full or sampled100, got {protocol!r}")
    if cold_items:  # the model never saw these items: neither do the baselines
        corpus = replace(corpus, train=drop_items(corpus.train, list(cold_items)))
    eval_set = corpus.test if split == "test" else corpus.valid
    full = protocol != "sampled100"
    measure = partial(
        evaluate_model, model, vocab, seed=seed, dim=dim, item_model=item_model, blend=blend
    )
    metrics: dict[str, object] = {"split": split, "model": measure(eval_set, full_ranking=full)}
    if blend is not None:
        metrics["model_alone"] = measure(eval_set, full_ranking=full, blend=None)
    report: dict[str, object] = {"metrics": metrics}
    if blend is not None:
        report["blend"] = blend.to_json()
    if baselines:
        found = baseline_metrics(
            corpus, vocab, eval_set, seed=seed, cooccurrence=full, chosen=cooccurrence
        )
        report["cooccurrence_valid_ndcg@10"] = found.pop("cooccurrence_valid_ndcg@10", None)
        metrics.update(found)
        if not full:
            report.pop("cooccurrence_valid_ndcg@10")
    if by_surface or cold_items:
        report["sampled_by_target_surface"] = measure(
            replace(eval_set, group=eval_set.target_surface.astype(object)), full_ranking=False
        )
        if full:
            surfaces = corpus.items.surface.astype(str)
            report["within_surface"] = {
                "split": split,
                "model": evaluate_within_surface(
                    model, vocab, surfaces, eval_set, cold_items=cold_items, dim=dim, blend=blend
                ),
                "most_popular": evaluate_within_surface(
                    None,
                    vocab,
                    surfaces,
                    eval_set,
                    popularity=popularity_scores(corpus, vocab, seed),
                    cold_items=cold_items,
                ),
            }
    if protocol != "both":
        drop = ("sampled",) if protocol == "full" else ("full", "full_seen_removed")
        for who in ("model", "model_alone", "most_popular", "cooccurrence"):
            for res in metrics.get(who, {}).values():  # type: ignore[attr-defined]
                for name in drop:
                    res.pop(name, None)
    return report
