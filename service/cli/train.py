"""`uniserve train`: train the user and item encoders on a dataset, evaluate them, save a
model directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.cli.common import DATA_HELP, print_report

if TYPE_CHECKING:
    from models.train import TrainConfig


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train", help="train the user and item encoders, evaluate, save a model directory"
    )
    p.add_argument("--data", "--dataset", dest="data", default="sample", help=DATA_HELP)
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--dim", type=int, default=64, help="embedding dimension (default 64)")
    p.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    p.add_argument("--max-len", type=int, default=50, help="events per user kept (default 50)")
    p.add_argument(
        "--epochs", type=int, default=200,
        help="the most passes over the training data (default 200); --patience stops earlier",
    )  # fmt: skip
    p.add_argument(
        "--patience", type=int, default=5,
        help="stop when the --select-on validation NDCG@10 has not improved for this many "
        "epochs, keeping the best epoch (default 5; 0 = run every epoch)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128, help="training windows per step")
    p.add_argument(
        "--loss", choices=["auto", "full", "sampled"], default="auto",
        help="softmax over the whole catalogue (full), over sampled negatives with log-q "
        "correction (sampled), or auto: full up to --full-softmax-max-items items (default)",
    )  # fmt: skip
    p.add_argument(
        "--full-softmax-max-items", type=int, default=10_000,
        help="with --loss auto: the largest catalogue trained with the full softmax "
        "(default 10000; above it the sampled one, whose step cost does not grow with it)",
    )  # fmt: skip
    p.add_argument(
        "--negatives", type=int, default=4096, help="sampled softmax: uniform negatives per step"
    )
    p.add_argument(
        "--in-batch-negatives", type=int, default=1024,
        help="sampled softmax: negatives drawn from the batch's own targets, added to the "
        "uniform ones (default 1024)",
    )  # fmt: skip
    p.add_argument("--temperature", type=float, default=0.1, help="softmax temperature (cosine)")
    p.add_argument("--dropout", type=float, default=0.3, help="transformer dropout (0.3)")
    p.add_argument(
        "--norm", choices=["race", "post", "pre"], default="race",
        help="layer norm after each residual branch (post, SASRec) or before it (pre); race "
        "(default): train one of each side by side for --race-epochs, keep the better on "
        "validation",
    )  # fmt: skip
    p.add_argument(
        "--race-epochs", type=int, default=2, metavar="E",
        help="with --norm race: epochs both layouts train before one is kept (default 2)",
    )  # fmt: skip
    p.add_argument(
        "--gated", action="store_true", help="LiGR-style gated residuals (needs --norm pre)"
    )
    p.add_argument(
        "--filter", action="store_true",
        help="add a causal frequency-domain filter beside attention (FMLP-Rec/BSARec-like)",
    )  # fmt: skip
    p.add_argument(
        "--future-window", type=int, default=1, metavar="G",
        help="each position learns the next G events, weighted 1/gap (default 1: next item)",
    )  # fmt: skip
    p.add_argument(
        "--contrastive", type=float, default=0.0, metavar="W",
        help="add DuoRec's dropout-view contrastive loss with weight W (default 0 = off)",
    )  # fmt: skip
    p.add_argument(
        "--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)"
    )
    p.add_argument(
        "--id-dropout", type=float, default=0.1, help="item-id dropout (cold-start path)"
    )
    p.add_argument(
        "--no-normalize-items", action="store_true",
        help="let item vector norms vary (popularity) instead of unit-norm cosine scoring",
    )  # fmt: skip
    p.add_argument(
        "--item-bias", action=argparse.BooleanOptionalAction, default=False,
        help="learn a per-item score bias (popularity prior), served as one more vector "
        "dimension (default off)",
    )  # fmt: skip
    p.add_argument(
        "--popularity-prior", type=float, default=0.0,
        help="with --item-bias: after training add this x log(1 + training count) to each "
        "item's bias, in cosine units (default 0)",
    )  # fmt: skip
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument(
        "--lr-decay", type=float, default=1.0, metavar="F",
        help="multiply the learning rates by F after 2 epochs without a better validation "
        "NDCG@10 (default 1: constant)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and sampling")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation")
    p.add_argument(
        "--select-on", choices=["full_seen_removed", "full", "sampled"],
        default="full_seen_removed",
        help="validation NDCG@10 that picks the kept epoch and drives --patience: "
        "full_seen_removed (the whole catalogue less the user's history items: the field's "
        "protocol; default), full (the whole catalogue, as retrieval serves) or sampled (100 "
        "uniform negatives); a full ranking that finds fewer than --select-min-hits "
        "validation targets in its top 10 is replaced by the sampled one",
    )  # fmt: skip
    p.add_argument(
        "--select-min-hits", type=int, default=20, metavar="N",
        help="validation targets a full ranking must find in its top 10 to choose between "
        "epochs (default 20); below it the sampled NDCG@10 chooses",
    )  # fmt: skip
    p.add_argument(
        "--id-only", "--no-surface", dest="id_only", action="store_true",
        help="baseline: a plain transformer over item ids (no surface tokens, no metadata)",
    )  # fmt: skip
    p.add_argument(
        "--id-free", action="store_true",
        help="no per-item id embeddings: every item is encoded from its metadata alone "
        "(M2TRec), so new items are encoded exactly like trained ones (cold start)",
    )  # fmt: skip
    p.add_argument(
        "--content-dim", type=int, default=0, metavar="K",
        help="add a fixed lexical channel of K dims (IDF-weighted item text tokens, randomly "
        "projected; the user side is the decayed sum over the history): scores gain a learnt "
        "weight x word overlap with recent events, which carries cold-start items (needs "
        "item text fields; default 0 = off)",
    )  # fmt: skip
    p.add_argument(
        "--cold-boost", type=float, default=1.0, metavar="S",
        help="with --content-dim: items served without a trained id (new, or held out) get "
        "their channel times S (> 1 trades warm-item quality for new-item exposure; default 1)",
    )  # fmt: skip
    p.add_argument(
        "--autocdsr", action="store_true",
        help="AutoCDSR: add the cross-surface attention loss, weighted against the "
        "recommendation loss by the two-task MGDA (min-norm) solution each step",
    )  # fmt: skip
    p.add_argument(
        "--mgda-normalize", choices=["none", "loss", "l2"], default="none",
        help="with --autocdsr: scale each task's gradient before the min-norm solve (none: "
        "plain MGDA; loss: by its loss value; l2: unit norm, i.e. equal weights)",
    )  # fmt: skip
    p.add_argument(
        "--compatible-with", default=None, metavar="OLD_MODEL_DIR",
        help="train user vectors that stay usable against OLD_MODEL_DIR's item index "
        "(backward-compatible training); the model records the old fingerprint and may be "
        "served against the old index",
    )  # fmt: skip
    p.add_argument(
        "--compat-weight", type=float, default=1.0, help="weight of the compatibility loss"
    )
    p.add_argument(
        "--matryoshka", default=None, metavar="DIMS",
        help="also train these prefix dims, e.g. 16,32 (each prefix is a usable embedding; "
        "`build-index --dim` then builds a smaller index)",
    )  # fmt: skip
    p.add_argument(
        "--holdout-items", type=float, default=0.0, metavar="FRACTION",
        help="keep this fraction of items out of training entirely and report cold- vs "
        "warm-target metrics (cold items get metadata-only vectors)",
    )  # fmt: skip
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto",
        help="where to train: auto = CUDA when torch sees a GPU, else the CPU (default auto); "
        "the saved model is the same either way",
    )  # fmt: skip
    p.add_argument(
        "--no-blend", action="store_true",
        help="serve the model's vectors alone: skip choosing, on the validation split, the "
        "weight of the item co-occurrence term added to the model's scores (models/blend.py)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the flags ask for (with no flags: TrainConfig's defaults)."""
    from models.matryoshka import parse_dims
    from models.train import TrainConfig

    return TrainConfig(
        dim=args.dim,
        num_layers=args.layers,
        max_len=args.max_len,
        epochs=args.epochs,
        batch_size=args.batch_size,
        num_negatives=args.negatives,
        in_batch_negatives=args.in_batch_negatives,
        temperature=args.temperature,
        dropout=args.dropout,
        norm=args.norm,
        race_epochs=args.race_epochs,
        gated=args.gated,
        filter=args.filter,
        future_window=args.future_window,
        loss=args.loss,
        full_softmax_max_items=args.full_softmax_max_items,
        contrastive=args.contrastive,
        weight_decay=args.weight_decay,
        patience=args.patience or None,
        id_dropout=args.id_dropout,
        normalize_items=not args.no_normalize_items,
        item_bias=args.item_bias,
        popularity_prior=args.popularity_prior,
        lr=args.lr,
        lr_decay=args.lr_decay,
        seed=args.seed,
        max_steps=args.max_steps,
        time_budget_s=args.time_budget,
        progress=not args.quiet,
        id_only=args.id_only,
        id_free=args.id_free,
        content_dim=args.content_dim,
        cold_boost=args.cold_boost,
        autocdsr=args.autocdsr,
        mgda_normalize=args.mgda_normalize,
        compatible_with=args.compatible_with,
        compat_weight=args.compat_weight,
        matryoshka=parse_dims(args.matryoshka),
        holdout_items=args.holdout_items,
        device=args.device,
        select_on=args.select_on,
        select_min_hits=args.select_min_hits,
        blend=not args.no_blend,
    )


def run(args: argparse.Namespace) -> int:
    from models.data import load_corpus
    from service.jobs.pipeline import train_to_dir

    cfg = train_config(args)
    corpus = load_corpus(args.data)
    print(
        f"training on {corpus.name}: {len(corpus.train)} sequences, {len(corpus.items)} items",
        file=sys.stderr,
    )
    report = train_to_dir(corpus, cfg, Path(args.out), evaluate=not args.no_eval)
    print_report(report)
    return 0
