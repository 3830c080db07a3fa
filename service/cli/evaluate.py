"""`uniserve evaluate`: a saved model's metrics on a dataset's validation or test split, next to
the baselines."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from service.cli.common import DATA_HELP, print_report


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="Recall(=HR)/NDCG@10/20 of a model, the most-popular and co-occurrence baselines",
    )
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--data", "--dataset", dest="data", default="sample", help=DATA_HELP)
    p.add_argument(
        "--split", choices=["test", "valid"], default="test", help="split to evaluate on"
    )
    p.add_argument(
        "--protocol", choices=["both", "full", "sampled100"], default="both",
        help="full: full ranking, with and without the user's seen items; sampled100: 100 "
        "uniform sampled negatives (AutoCDSR); both (default)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--no-baseline", action="store_true",
        help="skip the baselines (most-popular, item-to-item co-occurrence)",
    )  # fmt: skip
    p.add_argument(
        "--item-model", default=None, metavar="OLD_MODEL_DIR",
        help="score --model's user vectors against this model's item vectors (compatibility: "
        "new users vs the old index)",
    )  # fmt: skip
    p.add_argument(
        "--by-surface", action="store_true",
        help="also rank each target within its own surface, per target surface (automatic "
        "for models trained with --holdout-items: warm / cold targets)",
    )  # fmt: skip
    p.add_argument(
        "--dim", type=int, default=None,
        help="evaluate the first DIM dimensions (a Matryoshka prefix) instead of all",
    )  # fmt: skip
    p.add_argument(
        "--cold-boost", type=float, default=None, metavar="S",
        help="evaluate a --content-dim model as if trained with --cold-boost S (it only "
        "changes the served vectors of items without a trained id): choose S on --split valid",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the 100 sampled negatives")
    p.add_argument(
        "--no-blend", action="store_true",
        help="score with the model's vectors alone, without the co-occurrence term the model "
        "is served with (when training chose one: its report's `blend`)",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from models.artifacts import load_blend, load_model
    from models.data import load_corpus
    from models.evaluate import evaluation_report

    model, _, vocab, config = load_model(Path(args.model))
    blend = None if args.no_blend or args.item_model else load_blend(Path(args.model), len(vocab))
    if args.cold_boost is not None:  # serving-only: the weights are the same for every boost
        if not model.config.item.content_dim:
            raise ValueError("--cold-boost needs a model trained with --content-dim")
        model.config.item.content_cold_boost = args.cold_boost
    item_model = None
    if args.item_model:
        item_model, _, old_vocab, _ = load_model(Path(args.item_model))
        if list(old_vocab.item_ids) != list(vocab.item_ids):
            raise ValueError(f"{args.item_model} has another item catalogue than {args.model}")
    report = evaluation_report(
        model,
        vocab,
        load_corpus(args.data),
        split=args.split,
        protocol=args.protocol,
        cold_items=config.get("training", {}).get("cold_items", []),
        by_surface=args.by_surface,
        baselines=not args.no_baseline,
        dim=args.dim,
        item_model=item_model,
        seed=args.seed,
        blend=blend,
    )
    report["model_dir"], report["dim"] = args.model, args.dim or model.dim
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0
