"""`uniserve` command line: train, evaluate, build-index, rollback, serve, bench.

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
        in_batch_negatives=args.in_batch_negatives,
        temperature=args.temperature,
        dropout=args.dropout,
        id_dropout=args.id_dropout,
        normalize_items=not args.no_normalize_items,
        item_bias=args.item_bias,
        popularity_prior=args.popularity_prior,
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
        if t.get("best_epoch"):
            print(
                f"validation NDCG@10 (sampled) per epoch {t['valid_ndcg@10_sampled']}: "
                f"kept epoch {t['best_epoch']}"
            )
    if "fingerprint" in report:
        print(f"model fingerprint {report['fingerprint']}")


_METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


def _build_index(args: argparse.Namespace) -> int:
    from models.data import load_corpus
    from service.pipeline import build_and_publish

    fixed = {
        name: value
        for name, value in (("efSearch", args.ef_search), ("nprobe", args.nprobe))
        if value is not None
    }
    corpus = load_corpus(args.data) if args.data else None
    manifest = build_and_publish(
        Path(args.model),
        Path(args.index_root),
        index_type=args.type,
        corpus=corpus,
        catalog=Path(args.catalog) if args.catalog else None,
        keep=args.keep,
        seed=args.seed,
        target_recall=args.target_recall,
        search_params=fixed or None,
        n_queries=args.recall_queries,
        device=args.device,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    extra = manifest.extra
    print(
        json.dumps(
            {
                "version": manifest.version,
                "count": manifest.count,
                "index_type": manifest.index_type,
                "search_params": manifest.search_params,
                "recall_at_10": round(manifest.recall_at_10 or 0.0, 4),
                **{
                    k: extra[k]
                    for k in (
                        "encode_device",
                        "faiss_gpus",
                        "encode_seconds",
                        "build_seconds",
                        "tune_seconds",
                        "total_seconds",
                    )
                },
            }
        )
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.which == "service":
        from service.benchmark import main as bench_main
    else:
        from index.bench import main as bench_main
    return bench_main(args.options)


def _rollback(args: argparse.Namespace) -> int:
    from index import current_version, rollback

    root = Path(args.index_root)
    before = current_version(root)
    after = rollback(root, to=args.to)
    print(json.dumps({"current": after, "previous": before}))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from service.bootstrap import ensure_artifacts
    from service.runner import run
    from service.settings import Settings

    flags = {
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "admin_host": args.admin_host,
        "admin_port": args.admin_port,
    }
    overrides = {k: v for k, v in flags.items() if v}
    if args.no_bootstrap:
        overrides["bootstrap"] = False
    settings = Settings(**overrides)
    if settings.bootstrap:
        ensure_artifacts(settings, progress=True)
    run(settings, log_level=args.log_level)  # returns once stopped by SIGTERM / SIGINT
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
    p.add_argument("--epochs", type=int, default=3, help="passes over the training data")
    p.add_argument("--batch-size", type=int, default=128, help="training windows per step")
    p.add_argument("--negatives", type=int, default=1024, help="uniform negatives per step")
    p.add_argument(
        "--in-batch-negatives", type=int, default=1024,
        help="negatives drawn from the batch's own targets (0 = uniform negatives only)",
    )  # fmt: skip
    p.add_argument("--temperature", type=float, default=0.1, help="softmax temperature (cosine)")
    p.add_argument("--dropout", type=float, default=0.1, help="transformer dropout")
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
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and sampling")
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
    p.add_argument(
        "--split", choices=["test", "valid"], default="test", help="split to evaluate on"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the 100 sampled negatives")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "build-index",
        help="encode the catalogue, build a FAISS index, tune it, gate it, publish it",
        description="The batch rebuild: encode the catalogue (CUDA when torch sees a GPU), build "
        "the index (IVF k-means on GPUs when faiss reports any), pick the cheapest efSearch / "
        "nprobe meeting --target-recall, refuse an index that fails the gate (exit 3, nothing "
        "published), else publish a new version atomically and prune old ones.",
    )
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--index-root", required=True, help="index root (versions/ + CURRENT)")
    p.add_argument(
        "--type", default="HNSW32", help="faiss index_factory string: Flat, HNSW32, IVF1024,PQ16..."
    )
    p.add_argument(
        "--catalog",
        default=None,
        help="items.parquet of the generic format to index (item_id, surface, metadata; items "
        "the model never saw get cold-start vectors); default: the model's own vocabulary",
    )
    p.add_argument(
        "--data",
        default=None,
        help="dataset whose validation users are the recall queries "
        "(default: a sample of item vectors)",
    )
    p.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        help="recall@10 against exact search the index must reach (default 0.95); the cheapest "
        "efSearch / nprobe meeting it is recorded in the manifest",
    )
    p.add_argument(
        "--ef-search",
        type=int,
        default=None,
        help="fix HNSW efSearch instead of tuning it (the recall gate still applies)",
    )
    p.add_argument(
        "--nprobe",
        type=int,
        default=None,
        help="fix IVF nprobe instead of tuning it (the recall gate still applies)",
    )
    p.add_argument(
        "--recall-queries",
        type=int,
        default=1000,
        help="held-out query vectors recall is measured on (default 1000)",
    )
    p.add_argument(
        "--keep",
        type=int,
        default=3,
        help="newest index versions kept (default 3); the live one is never deleted",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where to encode: auto = CUDA when torch sees a GPU (and faiss GPUs when faiss "
        "reports any), cpu = CPU only for both",
    )
    p.add_argument(
        "--batch-size", type=int, default=65536, help="items encoded per batch (default 65536)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of IVF/PQ training and query sample")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_build_index)

    p = sub.add_parser(
        "rollback",
        help="point CURRENT at the previous valid index version",
        description="Point CURRENT at the newest version older than the live one whose files "
        "match their manifest (or at --to). Services watching the index root swap to it.",
    )
    p.add_argument("--index-root", required=True, help="index root (versions/ + CURRENT)")
    p.add_argument("--to", default=None, help="version to make CURRENT instead of the previous")
    p.set_defaults(func=_rollback)

    p = sub.add_parser(
        "bench",
        help="benchmarks: 'service' (throughput vs the in-process limit and a naive service), "
        "'index' (recall vs QPS per index type)",
        description="Run a benchmark; `uniserve bench service --help` and `uniserve bench "
        "index --help` list their options. Results go to stdout (and --json / --out).",
    )
    p.add_argument("which", choices=["service", "index"], help="which benchmark")
    p.add_argument("options", nargs=argparse.REMAINDER, help="that benchmark's options")
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "serve",
        help="serve the HTTP API (trains and indexes the sample on first start)",
        description="Serve the HTTP API. Flags override the UNISERVE_* variables (README: "
        "Configuration); the keys are read from the environment only: UNISERVE_API_KEY "
        "(required by /v1 when set) and UNISERVE_ADMIN_KEY (required by /admin; unset = "
        "admin routes answer 403), sent as "
        "'Authorization: Bearer <key>'; an empty, short or placeholder key fails at start. "
        "On SIGTERM / SIGINT the listeners close, requests in flight finish (at most "
        "UNISERVE_SHUTDOWN_TIMEOUT_SECONDS, default 30), Redis is closed and the exit "
        "status is 0.",
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
    p.add_argument(
        "--admin-port",
        type=int,
        default=None,
        help="serve /admin, /docs, /openapi.json and /metrics (and the API) on this port only; "
        "the main port then serves /v1, /healthz and /readyz (default: unset, everything on "
        "the main port; env UNISERVE_ADMIN_PORT)",
    )
    p.add_argument(
        "--admin-host",
        default=None,
        help="bind address of --admin-port (default 127.0.0.1, env UNISERVE_ADMIN_HOST)",
    )
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    p.set_defaults(func=_serve)
    return parser


EXIT_ERROR = 2  # bad arguments or inputs
EXIT_REFUSED = 3  # the index was refused (gate, or a damaged version); nothing was changed


def main(argv: Sequence[str] | None = None) -> int:
    from index import IndexRejectedError, NoIndexError
    from models.artifacts import ModelArtifactError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except IndexRejectedError as exc:
        what = "nothing was published" if args.command == "build-index" else "CURRENT unchanged"
        print(f"uniserve {args.command}: refused ({exc.reason}): {exc}; {what}", file=sys.stderr)
        return EXIT_REFUSED
    except (ValueError, FileNotFoundError, ModelArtifactError, NoIndexError) as exc:
        print(f"uniserve {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
