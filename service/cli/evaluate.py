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
        "evaluate", help="Recall/NDCG@10/20 of a model and the most-popular baseline"
    )
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--data", "--dataset", dest="data", default="sample", help=DATA_HELP)
    p.add_argument(
        "--split", choices=["test", "valid"], default="test", help="split to evaluate on"
    )
    p.add_argument(
        "--protocol", choices=["both", "full", "sampled100"], default="both",
        help="full ranking, 100 uniform sampled negatives (AutoCDSR), or both (default)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-baseline", action="store_true", help="skip the most-popular baseline")
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from models.artifacts import load_model
    from models.data import load_corpus
    from models.evaluate import (
        evaluate_model,
        evaluate_popularity,
        evaluate_within_surface,
        popularity_scores,
    )
    from models.holdout import drop_items

    model, _, vocab, config = load_model(Path(args.model))
    if args.cold_boost is not None:  # serving-only: the weights are the same for every boost
        if not model.config.item.content_dim:
            raise ValueError("--cold-boost needs a model trained with --content-dim")
        model.config.item.content_cold_boost = args.cold_boost
    item_model = None
    if args.item_model:
        item_model, _, old_vocab, _ = load_model(Path(args.item_model))
        if list(old_vocab.item_ids) != list(vocab.item_ids):
            raise ValueError(f"{args.item_model} has another item catalogue than {args.model}")
    corpus = load_corpus(args.data)
    cold = config.get("training", {}).get("cold_items", [])
    if cold:  # the model never saw these items: neither does the popularity baseline
        corpus = replace(corpus, train=drop_items(corpus.train, cold))
    split = corpus.test if args.split == "test" else corpus.valid
    report: dict[str, Any] = {
        "metrics": {
            "split": args.split,
            "model": evaluate_model(
                model,
                vocab,
                split,
                seed=args.seed,
                dim=args.dim,
                item_model=item_model,
                full_ranking=args.protocol != "sampled100",
            ),
        }
    }
    if not args.no_baseline:
        report["metrics"]["most_popular"] = evaluate_popularity(
            corpus, vocab, split, seed=args.seed
        )
    if args.by_surface or cold:
        report["sampled_by_target_surface"] = evaluate_model(
            model,
            vocab,
            replace(split, group=split.target_surface.astype(object)),
            seed=args.seed,
            dim=args.dim,
            item_model=item_model,
            full_ranking=False,
        )
    if (args.by_surface or cold) and args.protocol != "sampled100":
        surfaces = corpus.items.surface.astype(str)
        report["within_surface"] = {
            "split": args.split,
            "model": evaluate_within_surface(
                model, vocab, surfaces, split, cold_items=cold, dim=args.dim
            ),
            "most_popular": evaluate_within_surface(
                None,
                vocab,
                surfaces,
                split,
                popularity=popularity_scores(corpus, vocab, args.seed),
                cold_items=cold,
            ),
        }
    if args.protocol != "both":
        wanted = "full" if args.protocol == "full" else "sampled"
        for who in ("model", "most_popular"):
            for res in report["metrics"].get(who, {}).values():
                res.pop("sampled" if wanted == "full" else "full", None)
    report["model_dir"], report["dim"] = args.model, args.dim or model.dim
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0
