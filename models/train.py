"""Training: next-item prediction, full or sampled softmax, early stopping on validation.

Every position of a training window predicts the next event's item (SASRec). The loss is a
softmax over

- the whole catalogue (``loss="full"``; SASRec+CE / gSASRec's finding that a full softmax beats
  BCE with one negative by far, Klenitskiy & Vasilev, RecSys 2023; Petrov & Macdonald, RecSys
  2023), what ``loss="auto"`` picks up to ``full_softmax_max_items`` items; or
- the target plus one negative set shared by the batch (``loss="sampled"``, what "auto" picks
  above that size, so a step's cost does not grow with the catalogue and KuaiRand's ~730k items
  train on two CPU cores): ``in_batch_negatives`` items drawn from the batch's own targets (so
  roughly by popularity) and ``num_negatives`` drawn uniformly from the catalogue, each logit
  corrected by ``-log q(item)``, q being the item's expected number of copies in the negative
  set (Yi et al., RecSys 2019; mixed negatives as in Yang et al., WWW 2020). The eSASRec study
  (Tikhonov et al., 2025) found in-batch-only negatives collapse quality on Amazon data; the
  default draws 4,096 uniform negatives and adds 1,024 from the batch: on a catalogue of
  ~12k items the uniform ones already cover a third of it each step and the in-batch ones change
  little (Toys), on 730k items they cover 0.6% and miss the popular items a ranking must get
  past, which the in-batch ones bring (KuaiRand-1K, BENCHMARKS.md).

Optional regulariser: ``contrastive`` > 0 adds DuoRec's model-level augmentation (Qiu et al.,
WSDM 2022): two dropout-perturbed passes of each window, InfoNCE between their last-position
states across the batch (DuoRec's supervised positives, other sequences with the same target,
are not used).

Stopping (``patience``): after every epoch the model is measured on the validation split only
(``select_on``, default full-ranking NDCG@10 with the user's seen items removed); training stops
when it has not improved for ``patience`` epochs, or at ``epochs`` (the maximum) or
``time_budget_s``, and the best epoch's weights are kept. The test split is never looked at. A
full ranking that finds fewer than ``select_min_hits`` validation targets in its top 10 cannot
tell one epoch from the next; such epochs are judged by the sampled NDCG@10 instead
(`selection_key`).

Layer norm (``norm``): post-norm (SASRec's layout) won the Amazon ablation and converges there
in fewer epochs; pre-norm won by far on KuaiRand-1K (BENCHMARKS.md). Neither is a safe default
for data never seen, so by default (``norm="race"``) one model of each trains side by side on
the same batches for ``race_epochs`` epochs, and the one whose best validation epoch ranks
higher trains on alone (its curve is the result's; the race is in ``extra["norm_race"]``).

The id table (and the optional item bias) gets sparse gradients and SparseAdam; the rest AdamW.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models.autocdsr import cross_surface_attention_loss, pareto_combine
from models.compat import OldModel, compatibility_loss
from models.corpus import Corpus, Sequences
from models.device import DEVICES, select_device
from models.evaluate import (
    PROTOCOLS,
    all_ranks,
    metrics_from_ranks,
    sampled_metrics,
    user_vectors_for,
)
from models.features import FeatureSpec
from models.holdout import hold_out_items, make_cold
from models.item_encoder import FIRST_ITEM_ID, PAD_ID, ItemEncoderConfig
from models.matryoshka import truncate
from models.recommender import Recommender, RecommenderConfig
from models.user_encoder import UserEncoderConfig
from models.vocab import Vocab

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    max_len: int = 50  # events per training window and per served user
    dropout: float = 0.3  # chosen by ablation (BENCHMARKS.md, "Recommendation quality")
    norm: str = "race"  # "post": layer norm after each residual branch (SASRec; won the
    # Amazon ablation), "pre": before it (won on KuaiRand-1K), "race": train one of each side by
    # side for ``race_epochs`` and keep the one better on validation (BENCHMARKS.md)
    race_epochs: int = 2
    gated: bool = False  # LiGR-style gated residuals (eSASRec's layers)
    filter: bool = False  # a causal frequency-domain filter beside attention (FMLP/BSARec-like)
    future_window: int = 1  # each position learns the next this-many events, weighted 1/gap
    # (1: next item only, SASRec's objective)
    id_dropout: float = 0.1  # trains the metadata (cold-start) path and the UNK token
    normalize_items: bool = True  # cosine scores; False: item norms may encode popularity
    item_bias: bool = False  # per-item score bias (popularity prior), one more served dim
    popularity_prior: float = 0.0  # after training, add this x log(1 + training count) to each
    # item's bias (cosine units): more weight on popularity than the softmax learns, which
    # helps where rare items' embeddings are noisy; needs item_bias
    epochs: int = 200  # the most passes over the training data; ``patience`` stops earlier
    batch_size: int = 128  # windows per step
    lr: float = 1e-3
    lr_decay: float = 1.0  # < 1: multiply every learning rate by this after 2 epochs without a
    # better validation NDCG@10 (ReduceLROnPlateau); 1 = constant rates
    sparse_lr: float = 1e-2  # id-embedding rows see few updates each: a larger step helps
    weight_decay: float = 0.01
    loss: str = "auto"  # "full": softmax over the whole catalogue; "sampled": over the
    # negatives below, log-q corrected; "auto": full up to full_softmax_max_items items
    full_softmax_max_items: int = 10_000  # "auto" switches to sampled above this catalogue
    # size: the full softmax's cost per step grows with the catalogue, the sampled one's not
    contrastive: float = 0.0  # weight of DuoRec's dropout-view InfoNCE (0 = off)
    contrastive_temperature: float = 1.0
    num_negatives: int = 4096  # sampled softmax: uniform negatives per step, shared by the batch
    in_batch_negatives: int = 1024  # sampled softmax: negatives drawn from the batch's
    # targets (~ popularity), added to the uniform ones; in-batch-only negatives collapse in
    # eSASRec's study, the mix won on KuaiRand-1K and was neutral on Toys (BENCHMARKS.md)
    temperature: float = 0.1  # softmax temperature over cosine scores: lower = sharper
    seed: int = 0
    max_steps: int | None = None  # stop early after this many steps (smoke runs)
    time_budget_s: float | None = None  # stop early after this much wall time
    text_buckets: int = 1 << 15
    select_on_valid: bool = True  # keep the epoch with the best validation NDCG@10
    select_on: str = (
        "full_seen_removed"  # which validation NDCG@10 picks the epoch: "sampled" (target
    )
    # vs 100 uniform negatives, the AutoCDSR protocol), "full" (against the whole catalogue:
    # what retrieval serves; costs one full scoring of the validation users per epoch) or
    # "full_seen_removed" (the same without the user's history items: the field's protocol)
    select_min_hits: int = 20  # a full-ranking validation that finds fewer targets than this
    # in its top 10 cannot tell epochs apart: such epochs are judged by the sampled protocol
    patience: int | None = 5  # stop once the selection metric has not improved for this
    # many epochs (None: train all ``epochs``); the best epoch is kept either way
    progress: bool = True
    id_only: bool = False  # the id-only baseline: no surface tokens, no item metadata
    id_free: bool = False  # no per-item id embeddings: items are their metadata alone (M2TRec),
    # so a new item is encoded exactly like a trained one (cold start)
    content_dim: int = 0  # K > 0: add the fixed lexical channel (IDF-weighted text tokens,
    # randomly projected to K dims; see models/recommender.py), served as K more dims
    content_decay: float = 0.8  # weight of a history event one step older in the user side
    cold_boost: float = 1.0  # served channel of items without a trained id times this
    autocdsr: bool = False  # add AutoCDSR's cross-surface attention loss, MGDA-weighted
    mgda_normalize: str = "none"  # gradient scaling before the MGDA solve: none, loss, l2
    compatible_with: str | None = None  # old model directory: train backward-compatible
    # user vectors (usable against that model's index) with the BCT influence loss
    compat_weight: float = 1.0  # weight of the compatibility loss
    matryoshka: tuple[int, ...] = ()  # prefix dims also trained (e.g. 16, 32): each prefix
    # of the served vectors is then a usable embedding; the full dim is always trained
    holdout_items: float = 0.0  # fraction of catalogue items kept out of training entirely
    # (cold-start evaluation); their vectors come from metadata alone
    device: str = "auto"  # auto (CUDA when torch sees a GPU, else CPU), cpu or cuda; the
    # saved model is always on the CPU
    blend: bool = True  # after training, choose on the validation split the weight of the
    # co-occurrence term served with the model (models/blend.py; 0 when it does not help);
    # False: the model's vectors alone are served

    def __post_init__(self) -> None:
        for name in (
            "dim",
            "future_window",
            "epochs",
            "batch_size",
            "max_len",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if min(self.in_batch_negatives, self.num_negatives) < 0 or (
            self.in_batch_negatives + self.num_negatives < 1
        ):
            raise ValueError(
                f"negative counts must be >= 0 with at least one negative, got in_batch="
                f"{self.in_batch_negatives}, uniform={self.num_negatives}"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.lr <= 0 or self.sparse_lr <= 0:
            raise ValueError(f"learning rates must be positive, got {self.lr}, {self.sparse_lr}")
        if self.popularity_prior < 0 or (self.popularity_prior > 0 and not self.item_bias):
            raise ValueError(
                f"popularity_prior must be >= 0 and needs item_bias, got {self.popularity_prior}"
                f" with item_bias={self.item_bias}"
            )
        self.matryoshka = tuple(int(m) for m in self.matryoshka)
        if self.matryoshka and (
            self.content_dim
            or self.item_bias
            or not self.normalize_items
            or max(self.matryoshka) > self.dim
            or min(self.matryoshka) < 1
        ):
            raise ValueError(
                f"matryoshka dims {self.matryoshka} need 1 <= m <= dim {self.dim}, unit-norm "
                f"items, no item bias and no content channel (got normalize_items="
                f"{self.normalize_items}, item_bias={self.item_bias}, content_dim="
                f"{self.content_dim})"
            )
        if self.id_free and (self.id_only or self.item_bias):
            raise ValueError(
                "id_free items are their metadata alone: it excludes id_only and the per-item "
                f"bias (got id_only={self.id_only}, item_bias={self.item_bias})"
            )
        if not 0.0 <= self.holdout_items < 1.0:
            raise ValueError(f"holdout_items must be in [0, 1), got {self.holdout_items}")
        if self.compat_weight < 0:
            raise ValueError(f"compat_weight must be >= 0, got {self.compat_weight}")
        if self.cold_boost <= 0 or self.content_dim < 0:
            raise ValueError(
                f"cold_boost must be > 0 and content_dim >= 0, got {self.cold_boost}, "
                f"{self.content_dim}"
            )
        if self.select_on not in PROTOCOLS:
            raise ValueError(f"select_on must be one of {PROTOCOLS}, got {self.select_on!r}")
        if self.loss not in ("auto", "full", "sampled"):
            raise ValueError(f"loss must be auto, full or sampled, got {self.loss!r}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        if self.contrastive < 0 or self.contrastive_temperature <= 0:
            raise ValueError(
                f"contrastive must be >= 0 and its temperature > 0, got {self.contrastive}, "
                f"{self.contrastive_temperature}"
            )
        if self.norm not in ("race", "post", "pre"):
            raise ValueError(f"norm must be race, post or pre, got {self.norm!r}")
        if self.gated and self.norm != "pre":
            raise ValueError(f"gated residuals need pre-norm, got norm={self.norm!r}")
        if self.race_epochs < 1 or self.select_min_hits < 0:
            raise ValueError(
                f"race_epochs must be >= 1 and select_min_hits >= 0, got {self.race_epochs}, "
                f"{self.select_min_hits}"
            )
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.mgda_normalize not in ("none", "loss", "l2"):
            raise ValueError(
                f"mgda_normalize must be none, loss or l2, got {self.mgda_normalize!r}"
            )


@dataclass
class TrainResult:
    model: Recommender
    spec: FeatureSpec
    vocab: Vocab
    config: TrainConfig
    epoch_losses: list[float] = field(default_factory=list)
    valid_ndcg: list[float] = field(default_factory=list)  # sampled NDCG@10 after each epoch
    valid_full_ndcg: list[float] = field(default_factory=list)  # full-ranking NDCG@10, when
    # selecting on a full ranking
    valid_seen_removed_ndcg: list[float] = field(default_factory=list)  # the same, seen items
    # removed
    best_epoch: int | None = None  # 1-based epoch whose weights were kept
    steps: int = 0
    seconds: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)  # option-specific facts
    corpus: Corpus | None = None  # the corpus trained on (without held-out items' events)

    def summary(self) -> dict[str, object]:
        return {
            **self.extra,
            "config": asdict(self.config),
            "epoch_losses": [round(x, 5) for x in self.epoch_losses],
            "valid_ndcg@10_sampled": [round(x, 5) for x in self.valid_ndcg],
            **(
                {"valid_ndcg@10_full": [round(x, 5) for x in self.valid_full_ndcg]}
                if self.valid_full_ndcg
                else {}
            ),
            **(
                {
                    "valid_ndcg@10_full_seen_removed": [
                        round(x, 5) for x in self.valid_seen_removed_ndcg
                    ]
                }
                if self.valid_seen_removed_ndcg
                else {}
            ),
            "best_epoch": self.best_epoch,
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
        }


def build_model(
    corpus: Corpus, cfg: TrainConfig, norm: str | None = None
) -> tuple[Recommender, FeatureSpec, Vocab]:
    """An untrained model sized for the corpus's catalogue, surfaces and metadata, with
    ``norm`` ("post" or "pre"; default ``cfg.norm``, where "race" builds post-norm)."""
    spec = FeatureSpec.from_table(corpus.items, text_buckets=cfg.text_buckets)
    surfaces = sorted(
        ({str(s) for s in corpus.train.surface} | set(spec.categorical["surface"])) - {""}
    )
    vocab = Vocab(corpus.items.item_id, surfaces)
    item_cat, item_tokens = spec.encode_table(corpus.items)
    config = RecommenderConfig(
        ItemEncoderConfig(
            num_items=len(corpus.items),
            dim=cfg.dim,
            categorical_sizes={name: len(vals) + 1 for name, vals in spec.categorical.items()},
            num_text_fields=len(spec.text),
            text_buckets=spec.text_buckets,
            id_dropout=cfg.id_dropout,
            normalize=cfg.normalize_items,
            bias=cfg.item_bias,
            metadata=not cfg.id_only,
            ids=not cfg.id_free,
            content_dim=cfg.content_dim,
            content_decay=cfg.content_decay,
            content_cold_boost=cfg.cold_boost,
            content_seed=cfg.seed,
        ),
        UserEncoderConfig(
            num_surfaces=vocab.num_surfaces,
            dim=cfg.dim,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            max_len=cfg.max_len,
            dropout=cfg.dropout,
            surface_tokens=not cfg.id_only,
            norm_first=(norm or cfg.norm) == "pre",
            gated=cfg.gated,
            filter=cfg.filter,
        ),
    )
    return Recommender(config, item_cat, item_tokens), spec, vocab


def make_windows(train: Sequences, vocab: Vocab, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut each sequence, from its end, into left-padded windows of ``max_len + 1`` events.

    Returns (ids, surfaces), each (W, max_len + 1) int64. Window w trains inputs [:-1] against
    targets [1:].
    """
    item_tok = vocab.item_tokens(train.item_id)  # (E,)
    surf_tok = vocab.surface_tokens(train.surface)  # (E,)
    span = max_len + 1
    starts, ends = [], []
    for lo, hi in zip(train.offsets[:-1].tolist(), train.offsets[1:].tolist(), strict=True):
        end = hi
        while end - lo >= 2:
            starts.append(max(lo, end - span))
            ends.append(end)
            end -= max_len
    ids = np.full((len(starts), span), PAD_ID, dtype=np.int64)  # (W, L+1)
    surfaces = np.zeros((len(starts), span), dtype=np.int64)  # (W, L+1)
    for w, (s, e) in enumerate(zip(starts, ends, strict=True)):
        ids[w, span - (e - s) :] = item_tok[s:e]
        surfaces[w, span - (e - s) :] = surf_tok[s:e]
    return ids, surfaces


def length_bucketed_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int = 64
) -> list[np.ndarray]:
    """One epoch's batches of window indices: shuffled, then sorted by length within pools of
    ``pool`` batches, so a batch's windows have similar lengths and its all-padding columns,
    which training drops, are most of the padding (on Amazon data, where most users have under
    ten events, that is most of the transformer's work); batch order shuffled again."""
    order = rng.permutation(len(lengths))  # (W,)
    span = batch_size * pool
    batches: list[np.ndarray] = []
    for lo in range(0, len(order), span):
        chunk = order[lo : lo + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def later_targets(ids: torch.Tensor, window: int) -> torch.Tensor:
    """The events after each input position: ids (B, T + 1) a batch of windows -> (B, T, G)
    with [b, t, g] = ids[b, t + 1 + g] (PAD past the window's end), G = ``window``."""
    tail = F.pad(ids, (0, window - 1), value=PAD_ID)  # (B, T + G)
    t = ids.shape[1] - 1
    return torch.stack([tail[:, 1 + g : 1 + g + t] for g in range(window)], dim=2)


def expected_negative_counts(counts: np.ndarray, in_batch: int, uniform: int) -> np.ndarray:
    """Expected copies of each item among a step's negatives: (N + 2,) id-table rows.

    ``counts`` (N + 2,) are training target frequencies; ``in_batch`` negatives are drawn with
    replacement by frequency (a batch's targets), ``uniform`` ones uniformly over the catalogue
    rows. Not capped at 1: a popular item drawn several times appears several times in the
    softmax, and only its expected count cancels that (capping teaches the model to score
    popular items down).
    """
    n_items = len(counts) - FIRST_ITEM_ID
    return in_batch * counts / counts.sum() + uniform / n_items


def add_popularity_prior(model: Recommender, counts: np.ndarray, weight: float) -> None:
    """Add ``weight * log(1 + count)`` to every item's served bias, in place.

    counts (N + 2,) training target frequencies per id-table row; UNK (cold start) gets 0. The
    softmax learns a bias close to ``temperature * log(count)``; ranking a target against
    uniformly drawn, mostly rare items rewards popularity more than that, because rare items'
    embeddings are noisy. Applied after training (and model selection), so it is not part of
    the training logits: served score = temperature * logit + this prior.
    """
    if not model.config.item.bias:
        raise ValueError("a popularity prior needs a model with item_bias on")
    bias = model.item_encoder.bias.weight  # (N + 2, 1)
    prior = torch.from_numpy(weight * np.log1p(counts)).float().to(bias.device)  # (N + 2,)
    prior[:FIRST_ITEM_ID] = 0.0  # padding and UNK
    with torch.no_grad():
        bias[:, 0] += prior


@torch.inference_mode()
def validation_ndcg(
    model: Recommender, vocab: Vocab, corpus: Corpus, cfg: TrainConfig, counts: np.ndarray
) -> dict[str, float]:
    """Validation NDCG@10 of the model as it would be served (with the popularity prior added
    to the bias for the measurement, then taken off again), on the device the model is on:
    {"sampled"} when selecting on it (cheap: no full scoring), else every protocol's and
    "hits", how many validation targets the selection protocol ranked in its top 10."""

    def measure() -> dict[str, float]:
        if cfg.select_on == "sampled":
            return {
                "sampled": sampled_metrics(model, vocab, corpus.valid, seed=cfg.seed)["ndcg@10"]
            }
        device = model.item_cat.device
        users = torch.from_numpy(user_vectors_for(model, vocab, corpus.valid)).to(device)
        items = model.eval().all_item_vectors()  # (N, dim)
        ranks = all_ranks(
            lambda idx: users[torch.from_numpy(idx).to(device)] @ items.T,
            vocab,
            corpus.valid,
            100,
            cfg.seed,
            batch_size=max(1, min(1024, 50_000_000 // len(vocab))),  # (b, N) scores <= 200 MB
        )
        out = {name: metrics_from_ranks(r, (10,))["ndcg@10"] for name, r in ranks.items()}
        return {**out, "hits": float((ranks[cfg.select_on] < 10).sum())}

    if cfg.popularity_prior == 0:
        return measure()
    bias = model.item_encoder.bias.weight
    saved = bias.detach().clone()
    add_popularity_prior(model, counts, cfg.popularity_prior)
    try:
        return measure()
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def window_weights(targets: torch.Tensor) -> torch.Tensor:
    """Each row's weight per target: targets (M, G) id-table rows, column g the event g + 1
    steps after the query (PAD where the sequence ends) -> (M, G) weights, 1 / (g + 1) on real
    events, normalised to sum 1 per row (the co-occurrence baseline's 1/gap weighting). One
    column: every weight is 1, the plain next-item loss."""
    gap = torch.arange(1, targets.shape[1] + 1, device=targets.device, dtype=torch.float32)
    w = (targets >= FIRST_ITEM_ID).float() / gap  # (M, G)
    return w / w.sum(1, keepdim=True)


def accidental_hits(
    negatives: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each row's target is among the negatives: negatives (K,) and targets (M,)
    id-table rows -> (row, column) index pairs into an (M, K) logit matrix, one per negative
    equal to its row's target (a repeated negative gives one pair per copy).

    Found by binary search in the sorted negatives, O((M + K) log K), instead of an (M, K)
    comparison: on the CPU that comparison and the mask fill cost a sixth of the loss.
    """
    order = negatives.argsort()
    ordered = negatives[order]  # (K,)
    first = torch.searchsorted(ordered, targets)  # (M,) where each target's run starts
    count = torch.searchsorted(ordered, targets, right=True) - first  # (M,) run lengths
    row = torch.repeat_interleave(torch.arange(len(targets), device=targets.device), count)
    # the j-th copy of a row's target sits j places after its run's start
    before = torch.repeat_interleave(count.cumsum(0) - count, count)  # pairs of earlier rows
    nth = torch.arange(len(row), device=targets.device) - before
    return row, order[first[row] + nth]


def sampled_softmax_loss(
    model: Recommender,
    queries: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
    dims: tuple[int, ...] = (),
) -> torch.Tensor:
    """Softmax over each row's target plus a shared negative set, every logit log-q corrected.

    queries (M, dim) served user vectors, targets (M,) id-table rows, or (M, G) for a window of
    later events (column 0 the next one; PAD where the sequence ends; each target's
    cross-entropy weighted by `window_weights`), negatives (K,) rows, log_q (N + 2,) -> scalar.
    The served scores (cosine, plus the item bias if any) are divided by ``temperature`` before
    the correction. A negative that happens to be the target (an accidental hit) is masked out
    of that target's softmax. With Matryoshka ``dims``, the loss is the mean over the full
    vectors and each prefix.
    """
    targets = targets[:, None] if targets.dim() == 1 else targets  # (M, G)
    weights = window_weights(targets)  # (M, G)
    rows = targets.clamp(min=FIRST_ITEM_ID)  # PAD columns: any real row, weight 0
    pos_items = model.item_vectors(rows.reshape(-1)).view(*rows.shape, -1)  # (M, G, dim)
    neg_items = model.item_vectors(negatives)  # (K, dim)
    first = torch.zeros(len(rows), dtype=torch.long, device=rows.device)  # the target's column
    with torch.no_grad():  # per target column, the same for the full vectors and every prefix
        hits = [accidental_hits(negatives, rows[:, g]) for g in range(rows.shape[1])]
    losses = []
    for m in (*(m for m in dims if m < model.dim), None):
        q, p, n = (
            (queries, pos_items, neg_items)
            if m is None
            else (truncate(queries, m), truncate(pos_items, m), truncate(neg_items, m))
        )
        q = q / temperature  # (M, dim): the temperature divides M x dim, not M x K, numbers
        pos = (q[:, None, :] * p).sum(-1) - log_q[rows]  # (M, G)
        neg = torch.addmm(-log_q[negatives], q, n.T)  # (M, K), corrected in the same pass
        nll = []
        for g in range(rows.shape[1]):
            logits = torch.cat([pos[:, g, None], neg], dim=1)  # (M, 1 + K)
            # accidental hits drop out of the softmax in place, outside autograd: a logit of
            # -inf has softmax weight 0, so the gradient through it is exactly the 0 it gets
            # here (and no (M, K) mask is kept for backward)
            with torch.no_grad():
                row, column = hits[g]
                logits[row, 1 + column] = float("-inf")
            nll.append(F.cross_entropy(logits, first, reduction="none"))  # (M,)
        losses.append((torch.stack(nll, dim=1) * weights).sum(1).mean())
    return torch.stack(losses).mean()


def full_softmax_loss(
    model: Recommender,
    queries: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    dims: tuple[int, ...] = (),
    excluded: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax over the whole catalogue: cross-entropy of each row's target among every item.

    queries (M, dim) served user vectors, targets (M,) id-table rows, or (M, G) for a window of
    later events (as in `sampled_softmax_loss`), excluded (H,) id-table rows that are no class
    (held-out items) -> scalar. Equal to `sampled_softmax_loss` with every catalogue row as a
    negative and log q = 0. With Matryoshka ``dims``, the mean over the full vectors and each
    prefix.
    """
    targets = targets[:, None] if targets.dim() == 1 else targets  # (M, G)
    weights = window_weights(targets)  # (M, G)
    labels = targets.clamp(min=FIRST_ITEM_ID) - FIRST_ITEM_ID  # (M, G) catalogue order
    items = model.all_item_vectors()  # (N, dim), catalogue order: id-table row - FIRST_ITEM_ID
    losses = []
    for m in (*(m for m in dims if m < model.dim), None):
        q, v = (queries, items) if m is None else (truncate(queries, m), truncate(items, m))
        logits = (q / temperature) @ v.T  # (M, N)
        if excluded is not None and len(excluded):
            with torch.no_grad():  # no class: softmax weight 0, gradient 0 (as for hits above)
                logits[:, excluded - FIRST_ITEM_ID] = float("-inf")
        if labels.shape[1] == 1:
            losses.append(F.cross_entropy(logits, labels[:, 0]))
        else:
            nll = -torch.log_softmax(logits, dim=1).gather(1, labels)  # (M, G)
            losses.append((nll * weights).sum(1).mean())
    return torch.stack(losses).mean()


def contrastive_loss(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """DuoRec's unsupervised InfoNCE: two views (B, D) of the same B sequences; each view's row
    must pick its twin among the other view's rows (both directions) -> scalar."""
    a, b = F.normalize(first, dim=-1), F.normalize(second, dim=-1)  # (B, D)
    logits = a @ b.T / temperature  # (B, B)
    labels = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def uses_full_softmax(cfg: TrainConfig, n_items: int) -> bool:
    """The size rule: "auto" is the full softmax up to ``full_softmax_max_items`` items."""
    return cfg.loss == "full" or (cfg.loss == "auto" and n_items <= cfg.full_softmax_max_items)


@dataclass
class Contender:
    """One model in training: its weights, optimisers and validation record. `train` runs one,
    or two side by side for the first ``race_epochs`` when ``norm="race"``."""

    norm: str  # "post" or "pre"
    model: Recommender
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[torch.optim.lr_scheduler.ReduceLROnPlateau]
    shared: list[torch.nn.Parameter]  # AutoCDSR's shared parameters (the transformer's)
    valid: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in PROTOCOLS})
    best_state: dict[str, torch.Tensor] | None = None
    best_key: tuple[bool, float, float] = (False, -math.inf, -math.inf)
    best_epoch: int | None = None
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    lrs: list[float] = field(default_factory=list)  # dense learning rate after each epoch
    mgda_weights: list[float] = field(default_factory=list)


def selection_key(cfg: TrainConfig, valid: dict[str, float]) -> tuple[bool, float, float]:
    """How an epoch ranks: (resolved, the selection metric, the sampled NDCG@10), compared in
    that order. A full ranking that found fewer than ``select_min_hits`` validation targets in
    its top 10 does not resolve one epoch from the next (KuaiRand-1K: 1,000 users, 730k items,
    NDCG@10 at 0-0.0025), so such an epoch is judged by the sampled protocol, and ranks
    below every resolved one; the sampled NDCG@10 also breaks exact ties."""
    sampled = valid.get("sampled", 0.0)
    if cfg.select_on != "sampled" and valid.get("hits", math.inf) < cfg.select_min_hits:
        return (False, sampled, sampled)
    return (True, valid[cfg.select_on], sampled)


def train(corpus: Corpus, cfg: TrainConfig | None = None) -> TrainResult:
    """Train a model on ``corpus.train``; deterministic for a given config and thread count."""
    cfg = cfg or TrainConfig()
    device = select_device(cfg.device)
    rng = np.random.default_rng(cfg.seed)
    cold_ids = np.zeros(0, dtype=object)
    if cfg.holdout_items > 0:
        corpus, cold_ids = hold_out_items(corpus, cfg.holdout_items, cfg.seed)
    select = cfg.select_on_valid and len(corpus.valid) > 0
    if cfg.norm != "race":
        norms: tuple[str, ...] = (cfg.norm,)
    else:  # without a validation split there is nothing to race on: post-norm, Amazon's winner
        norms = ("post", "pre") if select else ("post",)
    built = []
    for norm in norms:
        torch.manual_seed(cfg.seed)  # each contender starts as it would alone
        built.append(build_model(corpus, cfg, norm=norm))
    _, spec, vocab = built[0]
    cold_rows = vocab.item_rows(cold_ids)  # (H,) catalogue rows never trained as ids
    old = OldModel.load(cfg.compatible_with, vocab) if cfg.compatible_with else None
    if old is not None and old.dim != built[0][0].dim:
        raise ValueError(f"old model dim {old.dim} != new model dim {built[0][0].dim}")
    win_ids, win_surf = make_windows(corpus.train, vocab, cfg.max_len)
    if len(win_ids) == 0:
        raise ValueError(f"corpus {corpus.name!r} has no training sequence with 2 or more events")

    win_lengths = (win_ids != PAD_ID).sum(1)  # (W,) events per window
    n_items = len(vocab)
    targets_all = win_ids[:, 1:][win_ids[:, 1:] >= FIRST_ITEM_ID]
    counts = np.bincount(targets_all, minlength=n_items + FIRST_ITEM_ID).astype(np.float64)
    pool = np.setdiff1d(
        np.arange(FIRST_ITEM_ID, n_items + FIRST_ITEM_ID), cold_rows + FIRST_ITEM_ID
    )
    q = expected_negative_counts(counts, cfg.in_batch_negatives, 0)
    q[pool] += cfg.num_negatives / len(pool)  # uniform negatives come from warm rows only
    log_q = torch.from_numpy(np.log(np.maximum(q, 1e-12))).float().to(device)  # (N + 2,)
    if old is not None:
        old.to(device)
    contenders = [
        _contender(norm, model, cfg, device)
        for norm, (model, _, _) in zip(norms, built, strict=True)
    ]
    del built  # the race's loser is freed when it is dropped
    full_softmax = uses_full_softmax(cfg, n_items)
    excluded = torch.from_numpy(cold_rows + FIRST_ITEM_ID).to(device)  # (H,) no class
    result = TrainResult(contenders[0].model, spec, vocab, cfg, corpus=corpus)
    result.extra["device"] = device.type
    result.extra["loss"] = "full" if full_softmax else "sampled"
    if len(cold_ids):
        result.extra["cold_items"] = [str(x) for x in cold_ids]
    if old is not None:
        result.extra["compatible_with"] = {
            "fingerprint": old.fingerprint,
            "model_dir": str(cfg.compatible_with),
        }
    steps_per_epoch = math.ceil(len(win_ids) / cfg.batch_size)
    started = time.perf_counter()
    log.info(
        "training on %d windows, %d items, %d steps/epoch, %s softmax, on %s, %s",
        len(win_ids),
        n_items,
        steps_per_epoch,
        result.extra["loss"],
        device.type,
        f"post- and pre-norm raced for {cfg.race_epochs} epochs"
        if len(contenders) > 1
        else f"{norms[0]}-norm",
    )

    def step(c: Contender, idx: np.ndarray) -> float:
        """One optimiser step of contender ``c`` on the windows ``idx``; returns the loss."""
        model = c.model
        # windows are left-padded: drop the columns that are padding in every window of the
        # batch (positions count from each window's first event, so nothing else changes)
        first = int((win_ids[idx] != PAD_ID).any(0).argmax())
        ids = torch.from_numpy(win_ids[idx, first:]).to(device)  # (B, T+1), T <= L
        surfaces = torch.from_numpy(win_surf[idx, first:]).to(device)  # (B, T+1)
        inputs, targets = ids[:, :-1], ids[:, 1:]
        mask = inputs != PAD_ID  # (B, L)
        in_surf = surfaces[:, :-1]  # (B, L)
        if cfg.autocdsr:
            hidden, attention = model.hidden_with_attention(inputs, in_surf, mask)
        else:
            hidden = model.hidden(inputs, in_surf, mask)  # (B, L, D)
        keep = mask & (targets >= FIRST_ITEM_ID)  # (B, L)
        batch_targets = targets[keep]  # (M,)
        content = model.user_content(inputs, mask)[keep] if model.has_content else None
        queries = model.query_vectors(hidden[keep], content)  # (M, dim)
        window = (  # (M,) the next items, or (M, G) with the later ones
            batch_targets if cfg.future_window == 1 else later_targets(ids, cfg.future_window)[keep]
        )
        negatives: torch.Tensor | None = None
        if full_softmax:
            loss = full_softmax_loss(
                model, queries, window, cfg.temperature, cfg.matryoshka, excluded
            )
        else:
            in_batch = torch.from_numpy(
                rng.integers(0, len(batch_targets), cfg.in_batch_negatives)
            ).to(device)
            uniform = torch.from_numpy(pool[rng.integers(0, len(pool), cfg.num_negatives)])
            negatives = torch.cat([batch_targets[in_batch], uniform.to(device)])  # (K,)
            loss = sampled_softmax_loss(
                model, queries, window, negatives, log_q, cfg.temperature, cfg.matryoshka
            )
        if cfg.contrastive > 0:  # a second dropout view of the same windows
            twin = model.hidden(inputs, in_surf, mask)[:, -1]  # (B, D)
            loss = loss + cfg.contrastive * contrastive_loss(
                hidden[:, -1], twin, cfg.contrastive_temperature
            )
        if old is not None:
            old_queries = old.queries(inputs, in_surf, mask)[keep]  # (M, dim)
            if negatives is None:  # the compatibility loss ranks against sampled negatives
                negatives = torch.from_numpy(
                    pool[rng.integers(0, len(pool), cfg.num_negatives)]
                ).to(device)
            loss = loss + cfg.compat_weight * compatibility_loss(
                queries, old_queries, old, batch_targets, negatives, log_q, cfg.temperature
            )
        if cfg.autocdsr:
            aux = cross_surface_attention_loss(attention, in_surf, mask)
            loss, (w_rec, _) = pareto_combine(loss, aux, c.shared, cfg.mgda_normalize)
            c.mgda_weights.append(w_rec)
        for opt in c.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in c.optimizers:
            opt.step()
        return float(loss.item())

    def validate(c: Contender, epoch: int) -> None:
        """Measure ``c`` on the validation split and keep its weights if this epoch is its best."""
        make_cold(c.model, cold_rows)  # held-out items: metadata-only vectors
        valid = validation_ndcg(c.model, vocab, corpus, cfg, counts)
        for name, values in c.valid.items():
            if name in valid:
                values.append(valid[name])
        log.info("epoch %d (%s-norm): valid NDCG@10 %s", epoch, c.norm, valid)
        key = selection_key(cfg, valid)
        # the plateau is judged in the selection's order: an unresolved epoch (its sampled
        # NDCG@10, <= 1) is shifted below every resolved one
        for scheduler in c.schedulers:
            scheduler.step(key[1] if key[0] else key[1] - 1.0)
        if c.schedulers:  # the dense learning rate for the next epoch
            c.lrs.append(c.optimizers[1].param_groups[0]["lr"])
        if c.best_state is None or key > c.best_key:
            c.best_state = {k: v.detach().clone() for k, v in c.model.state_dict().items()}
            c.best_epoch, c.best_key = epoch, key

    stop = False
    for epoch in range(1, cfg.epochs + 1):
        batches = length_bucketed_batches(win_lengths, cfg.batch_size, rng)
        for c in contenders:
            c.model.train()
            total, seen = 0.0, 0
            bar = tqdm(
                range(steps_per_epoch),
                desc=f"epoch {epoch}/{cfg.epochs}"
                + (f" {c.norm}-norm" if len(contenders) > 1 else ""),
                disable=not cfg.progress,
            )
            for i in bar:
                total += step(c, batches[i])
                seen += 1
                result.steps += 1
                if result.steps % 20 == 0:
                    bar.set_postfix(loss=f"{total / seen:.4f}")
                if (cfg.max_steps is not None and result.steps >= cfg.max_steps) or (
                    cfg.time_budget_s is not None
                    and time.perf_counter() - started > cfg.time_budget_s
                ):
                    stop = True
                    result.extra["stopped"] = "max_steps" if cfg.max_steps else "time budget"
                    break
            bar.close()
            c.losses.append(total / max(seen, 1))
            log.info("epoch %d (%s-norm): mean loss %.4f", epoch, c.norm, c.losses[-1])
            if select and seen:
                validate(c, epoch)
            if stop:
                break
        if len(contenders) > 1 and (stop or epoch >= cfg.race_epochs):
            contenders = [race_winner(contenders, cfg, result, epoch)]
        if stop:
            break
        kept = contenders[0]
        if (
            len(contenders) == 1  # a race runs its epochs in full
            and select
            and cfg.patience is not None
            and epoch - (kept.best_epoch or 0) >= cfg.patience
        ):
            result.extra["stopped"] = f"no improvement for {cfg.patience} epochs"
            break
    kept = contenders[0]
    result.model = kept.model
    result.epoch_losses = kept.losses
    if kept.schedulers:
        result.extra["lr_after_epoch"] = kept.lrs
    result.valid_ndcg = kept.valid["sampled"]
    result.valid_full_ndcg = kept.valid["full"]
    result.valid_seen_removed_ndcg = kept.valid["full_seen_removed"]
    result.best_epoch = kept.best_epoch
    if select and not kept.best_key[0]:
        result.extra["selected_on"] = "sampled (the full ranking resolved too few targets)"
    model = kept.model
    model.to("cpu")  # the saved and served model lives on the CPU
    if kept.best_state is not None:
        model.load_state_dict(kept.best_state)
    make_cold(model, cold_rows)
    if kept.mgda_weights:
        result.extra["mgda_rec_weight_mean"] = round(float(np.mean(kept.mgda_weights)), 4)
    if cfg.popularity_prior > 0:
        add_popularity_prior(model, counts, cfg.popularity_prior)
    model.eval()
    result.seconds = time.perf_counter() - started
    return result


def _contender(norm: str, model: Recommender, cfg: TrainConfig, device: torch.device) -> Contender:
    """Put ``model`` on ``device`` with its optimisers: SparseAdam for the id table (and item
    bias), AdamW for the rest, and the plateau schedulers when ``lr_decay`` < 1."""
    model.to(device)  # before the optimizers see the parameters
    sparse_names = {"item_encoder.id_embedding.weight", "item_encoder.bias.weight"}
    sparse_params = [p for n, p in model.named_parameters() if n in sparse_names]
    dense_params = [p for n, p in model.named_parameters() if n not in sparse_names]
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.SparseAdam(sparse_params, lr=cfg.sparse_lr),
        # fused: one pass over each tensor instead of one per operation (4x faster on the
        # 32k-row text table); the same update up to float rounding
        torch.optim.AdamW(dense_params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True),
    ]
    schedulers = [
        torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg.lr_decay, patience=1)
        for opt in optimizers
        if cfg.lr_decay < 1
    ]
    # AutoCDSR's shared parameters: the transformer's, not the embedding tables
    shared = [p for n, p in model.user_encoder.named_parameters() if "embedding" not in n]
    return Contender(norm, model, optimizers, schedulers, shared)


def race_winner(
    contenders: list[Contender], cfg: TrainConfig, result: TrainResult, epoch: int
) -> Contender:
    """End the norm race after ``epoch``: the contender whose best validation epoch ranks
    higher (`selection_key`) trains on; the race's record goes into ``result.extra``. A tie
    keeps the first (post-norm)."""
    winner = contenders[0]
    for c in contenders[1:]:
        if c.best_key > winner.best_key:
            winner = c
    result.extra["norm_race"] = {
        "epochs": epoch,
        "kept": winner.norm,
        **{
            c.norm: {name: [round(x, 5) for x in v] for name, v in c.valid.items() if v}
            for c in contenders
        },
    }
    log.info("norm race after epoch %d: %s-norm kept", epoch, winner.norm)
    return winner
