"""`uniserve` command line: train, evaluate, build-index, serve.

Each subcommand parses its flags and calls one function of `service.pipeline`, `models` or the
app factory; nothing here holds logic worth testing on its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DATA_HELP = (
    "dataset: 'sample' (shipped KuaiRand sample), 'kuairand', 'amazon-art-office', "
    "or a directory in the generic format (interactions.parquet [+ items.parquet])"
)


def _train(args: argparse.Namespace) -> int:
    from models.data import load_corpus
    from models.train import TrainConfig
    from service.pipeline import train_to_dir

    cfg = TrainConfig(
        dim=args.dim,
        num_layers=args.layers,
        max_len=args.max_len,
        epochs=args.epochs,
        batch_size=args.batch_size,
        num_negatives=args.negatives,
        lr=args.lr,
        seed=args.seed,
        max_steps=args.max_steps,
        time_budget_s=args.time_budget,
        progress=not args.quiet,
    )
    corpus = load_corpus(args.data)
    print(
        f"training on {corpus.name}: {len(corpus.train)} sequences, {len(corpus.items)} items",
        file=sys.stderr,
    )
    report = train_to_dir(corpus, cfg, Path(args.out), evaluate=not args.no_eval)
    _print_report(report)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from models.artifacts import load_model
    from models.data import load_corpus
    from models.evaluate import evaluate_model, evaluate_popularity

    model, _, vocab, _ = load_model(Path(args.model))
    corpus = load_corpus(args.data)
    split = corpus.test if args.split == "test" else corpus.valid
    report = {
        "metrics": {
            "split": args.split,
            "model": evaluate_model(model, vocab, split, seed=args.seed),
            "most_popular": evaluate_popularity(corpus, vocab, split, seed=args.seed),
        }
    }
    _print_report(report)
    return 0


def _print_report(report: dict[str, Any]) -> None:
    metrics = report.get("metrics")
    if metrics:
        print(
            f"{'':14}{'group':>8}{'n':>6}  {'protocol':<8}" + "".join(f"{m:>11}" for m in _METRICS)
        )
        for who in ("most_popular", "model"):
            for group, res in metrics[who].items():
                for protocol in ("full", "sampled"):
                    vals = "".join(f"{res[protocol][m]:>11.4f}" for m in _METRICS)
                    print(f"{who:<14}{group:>8}{res['n']:>6}  {protocol:<8}{vals}")
    if "training" in report:
        t = report["training"]
        print(f"training: {t['steps']} steps in {t['seconds']}s, epoch losses {t['epoch_losses']}")
    if "fingerprint" in report:
        print(f"model fingerprint {report['fingerprint']}")


_METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


def _build_index(args: argparse.Namespace) -> int:
    from models.data import load_corpus
    from service.pipeline import build_and_publish

    corpus = load_corpus(args.data) if args.data else None
    manifest = build_and_publish(
        Path(args.model),
        Path(args.index_root),
        index_type=args.type,
        corpus=corpus,
        keep=args.keep,
        seed=args.seed,
    )
    print(
        json.dumps(
            {
                "version": manifest.version,
                "count": manifest.count,
                "recall_at_10": manifest.recall_at_10,
            }
        )
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from service.app import create_app

    from service.bootstrap import ensure_artifacts
    from service.settings import Settings

    overrides = {
        k: v
        for k, v in {"host": args.host, "port": args.port, "data_dir": args.data_dir}.items()
        if v
    }
    if args.no_bootstrap:
        overrides["bootstrap"] = False
    settings = Settings(**overrides)
    if settings.bootstrap:
        ensure_artifacts(settings, progress=True)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uniserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train", help="train the user and item encoders, evaluate, save a model directory"
    )
    p.add_argument("--data", default="sample", help=DATA_HELP)
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--dim", type=int, default=64, help="embedding dimension (default 64)")
    p.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    p.add_argument("--max-len", type=int, default=50, help="events per user kept (default 50)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128, help="training windows per step")
    p.add_argument("--negatives", type=int, default=1024, help="uniform negatives per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "evaluate", help="Recall/NDCG@10/20 of a model and the most-popular baseline"
    )
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--data", default="sample", help=DATA_HELP)
    p.add_argument("--split", choices=["test", "valid"], default="test")
    p.add_argument("--seed", type=int, default=0, help="seed of the 100 sampled negatives")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("build-index", help="encode the catalogue, build a FAISS index, publish it")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--index-root", required=True, help="index root (versions/ + CURRENT)")
    p.add_argument(
        "--type", default="HNSW32", help="faiss index_factory string: Flat, HNSW32, IVF1024,PQ16..."
    )
    p.add_argument(
        "--data",
        default=None,
        help="dataset whose validation users are the recall queries "
        "(default: a sample of item vectors)",
    )
    p.add_argument(
        "--keep", type=int, default=3, help="index versions kept (the live one always is)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_build_index)

    p = sub.add_parser(
        "serve", help="serve the HTTP API (trains and indexes the sample on first start)"
    )
    p.add_argument(
        "--host", default=None, help="bind address (default 127.0.0.1, env UNISERVE_HOST)"
    )
    p.add_argument("--port", type=int, default=None, help="port (default 8000, env UNISERVE_PORT)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="artifact directory (default .uniserve, env UNISERVE_DATA_DIR)",
    )
    p.add_argument(
        "--no-bootstrap", action="store_true", help="never train/build at start; serve what exists"
    )
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from index import NoIndexError
    from models.artifacts import ModelArtifactError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, ModelArtifactError, NoIndexError) as exc:
        print(f"uniserve {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
