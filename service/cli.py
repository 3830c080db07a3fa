"""`uniserve` command line: train, evaluate, build-index, rollback, serve, bench, report.

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
    "'amazon-sports', 'amazon-toys' (../shared/data/amazon-s3rec), or a directory in the "
    "generic format (interactions.parquet [+ items.parquet])"
)


def _train(args: argparse.Namespace) -> int:
    from models.data import load_corpus
    from models.matryoshka import parse_dims
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
        norm_first=args.norm == "pre",
        gated=args.gated,
        filter=args.filter,
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
    )
    corpus = load_corpus(args.data)
    print(
        f"training on {corpus.name}: {len(corpus.train)} sequences, {len(corpus.items)} items",
        file=sys.stderr,
    )
    report = train_to_dir(corpus, cfg, Path(args.out), evaluate=not args.no_eval)
    if not args.no_eval and len(corpus.test):  # both baselines beside the model
        from dataclasses import replace

        from models.artifacts import load_model
        from models.evaluate import baseline_metrics
        from models.holdout import drop_items

        vocab = load_model(Path(args.out))[2]
        cold = report["training"].get("cold_items", [])
        counted = replace(corpus, train=drop_items(corpus.train, cold)) if cold else corpus
        found = baseline_metrics(counted, vocab, corpus.test, seed=args.seed)
        report["cooccurrence_valid_ndcg@10"] = found.pop("cooccurrence_valid_ndcg@10")
        report["metrics"].update(found)
    _print_report(report)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from models.artifacts import load_model
    from models.data import load_corpus
    from models.evaluate import evaluation_report

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
    )
    report["model_dir"], report["dim"] = args.model, args.dim or model.dim
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0


def _print_report(report: dict[str, Any]) -> None:
    metrics = report.get("metrics")
    if metrics:
        print(
            f"{'':14}{'group':>8}{'n':>7}  {'protocol':<18}" + "".join(f"{m:>11}" for m in _METRICS)
        )
        for who in ("most_popular", "cooccurrence", "model"):
            for group, res in metrics.get(who, {}).items():
                for protocol in ("full_seen_removed", "full", "sampled"):
                    if protocol not in res:
                        continue
                    vals = "".join(f"{res[protocol][m]:>11.4f}" for m in _METRICS)
                    print(f"{who:<14}{group:>8}{res['n']:>7}  {protocol:<18}{vals}")
    within = report.get("within_surface")
    if within:
        print("full ranking within the target's surface (what /v1/retrieve with surfaces does):")
        for who in ("most_popular", "model"):
            for group, res in within[who].items():
                vals = "".join(f"{res[m]:>11.4f}" for m in _METRICS)
                print(f"{who:<14}{group:>16}{res['n']:>6}  {vals}")
    if "training" in report:
        t = report["training"]
        print(f"training: {t['steps']} steps in {t['seconds']}s, epoch losses {t['epoch_losses']}")
        if t.get("best_epoch"):
            per_epoch = ", ".join(
                f"({name}) {t[key]}"
                for name, key in (
                    ("sampled", "valid_ndcg@10_sampled"),
                    ("full ranking", "valid_ndcg@10_full"),
                    ("seen removed", "valid_ndcg@10_full_seen_removed"),
                )
                if t.get(key)
            )
            print(
                f"validation NDCG@10 per epoch {per_epoch}: kept epoch {t['best_epoch']}"
                + (f" ({t['stopped']})" if t.get("stopped") else "")
            )
    if report.get("cooccurrence_valid_ndcg@10"):
        tried = report["cooccurrence_valid_ndcg@10"]
        print(f"co-occurrence baseline, validation NDCG@10 (seen removed) per setting: {tried}")
    if "fingerprint" in report:
        print(f"model fingerprint {report['fingerprint']}")


_METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


def _build_index(args: argparse.Namespace, shared: tuple[Any, Any] | None = None) -> int:
    """`shared`: (corpus, encoded catalogue) already loaded for the shards of one build."""
    from models.data import load_corpus
    from service.pipeline import build_and_publish

    fixed = {
        name: value
        for name, value in (("efSearch", args.ef_search), ("nprobe", args.nprobe))
        if value is not None
    }
    if args.shards is not None and args.shard is None:  # every shard of the build, in turn
        build_id = args.build_id or _new_build_id()
        # refuse a bad count or build id before anything is built
        _shard_target(argparse.Namespace(**{**vars(args), "shard": 0, "build_id": build_id}))
        shared = _load_and_encode(args)  # once for every shard, not once per shard
        for i in range(args.shards):
            shard_args = argparse.Namespace(**{**vars(args), "shard": i, "build_id": build_id})
            _build_index(shard_args, shared)
        return 0
    root, shard = _shard_target(args)
    corpus, encoded = shared if shared is not None else (None, None)
    if shared is None:
        corpus = load_corpus(args.data) if args.data else None
    if args.engine == "ray":
        return _print_build(_ray_build_index(args, corpus, fixed or None))
    manifest = build_and_publish(
        Path(args.model),
        root,
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
        dim=args.dim,
        muvera=_fde_config(args) if args.mode == "multi" else None,
        fde_index_type=args.fde_index_type,
        shard=shard,
        encoded=encoded,
    )
    if shard is not None:  # where it went; stdout keeps one JSON line per published version
        print(
            f"shard {shard.index} of {shard.count} (build {shard.build_id}): {root}",
            file=sys.stderr,
        )
    return _print_build(manifest)


def _load_and_encode(args: argparse.Namespace) -> tuple[Any, Any]:
    """The corpus (for recall queries) and the encoded catalogue of a local build-index run."""
    from models.data import load_corpus
    from models.embedder import Embedder
    from service.catalog import encode_catalogue

    corpus = load_corpus(args.data) if args.data else None
    encoded = encode_catalogue(
        Embedder.from_dir(Path(args.model)),
        Path(args.catalog) if args.catalog else None,
        device=args.device,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    return corpus, encoded


def _new_build_id() -> str:
    """A fresh id for the shards of one build: UTC time and a random suffix."""
    import secrets
    from datetime import UTC, datetime

    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _shard_target(args: argparse.Namespace) -> tuple[Path, Any]:
    """(index root, ShardSpec or None) of a build-index run: `--shard I` of `--shards S`
    publishes to `<index-root>/shard-I`; without `--shards`, to the index root itself."""
    from index.shard import ShardSpec, shard_root

    if args.shards is None:
        if args.shard is not None or args.build_id is not None:
            raise ValueError("--shard and --build-id need --shards (the shard count)")
        return Path(args.index_root), None
    if args.engine == "ray":
        raise ValueError("--shards is built by the local engine only; drop --engine ray")
    spec = ShardSpec(args.shard, args.shards, args.build_id or _new_build_id())
    return shard_root(Path(args.index_root), spec.index), spec


def _ray_build_index(
    args: argparse.Namespace, corpus: Any, search_params: dict[str, int] | None
) -> Any:
    """`build-index --engine ray`: the same job with the encoding on a Ray cluster."""
    from service.ray_build import ray_build_and_publish

    if args.mode == "multi":
        raise ValueError("--mode multi is built by the local engine only; drop --engine ray")
    return ray_build_and_publish(
        Path(args.model),
        Path(args.index_root),
        index_type=args.type,
        corpus=corpus,
        catalog=args.catalog,  # a path or a URI the cluster's nodes read
        keep=args.keep,
        seed=args.seed,
        target_recall=args.target_recall,
        search_params=search_params,
        n_queries=args.recall_queries,
        device=args.device,
        batch_size=args.batch_size,
        progress=not args.quiet,
        dim=args.dim,
        address=args.address,
        actors=args.ray_actors,
    )


def _print_build(manifest: Any) -> int:
    """Print one JSON line naming the published version, its parameters and timings."""
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
                **({"muvera": extra["muvera"]} if "muvera" in extra else {}),
                **(
                    {"engine": "ray", "ray_actors": extra["ray"]["actors"]}
                    if extra.get("engine") == "ray"
                    else {}
                ),
            }
        )
    )
    return 0


def _fde_config(args: argparse.Namespace) -> Any:
    from index.fde import FDEConfig

    return FDEConfig(
        num_repetitions=args.fde_repetitions,
        num_simhash_projections=args.fde_simhash,
        projection="identity" if args.fde_projection == 0 else "ams",
        projection_dimension=args.fde_projection or None,
        fill_empty_partitions=True,
        final_projection_dimension=args.fde_final_dim,
        seed=args.seed,
    )


def _bench(args: argparse.Namespace) -> int:
    if args.which == "service":
        from service.benchmark import main as bench_main
    elif args.which == "muvera":
        from index.bench_muvera import main as bench_main
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
    if settings.bootstrap and not settings.shards:  # a router serves the shards' model as is
        ensure_artifacts(settings, progress=True)
    run(settings, log_level=args.log_level)  # returns once stopped by SIGTERM / SIGINT
    return 0


def _report(args: argparse.Namespace) -> int:
    import httpx

    from service.report import parse_duration, render

    try:
        out = render(
            args.prometheus,
            Path(args.out),
            since=parse_duration(args.since),
            step=parse_duration(args.step) if args.step else None,
            window=args.window,
            selector=args.selector,
        )
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"uniserve report: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uniserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

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
        "--in-batch-negatives", type=int, default=0,
        help="sampled softmax: negatives drawn from the batch's own targets (default 0)",
    )  # fmt: skip
    p.add_argument("--temperature", type=float, default=0.1, help="softmax temperature (cosine)")
    p.add_argument("--dropout", type=float, default=0.3, help="transformer dropout (0.3)")
    p.add_argument(
        "--norm", choices=["post", "pre"], default="post",
        help="layer norm after each residual branch (post, SASRec; default) or before (pre)",
    )  # fmt: skip
    p.add_argument(
        "--gated", action="store_true", help="LiGR-style gated residuals (needs --norm pre)"
    )
    p.add_argument(
        "--filter", action="store_true",
        help="add a causal frequency-domain filter beside attention (FMLP-Rec/BSARec-like)",
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
        "uniform negatives)",
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

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
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "build-index",
        help="encode the catalogue, build a FAISS index, tune it, gate it, publish it",
        description="The batch rebuild: encode the catalogue (CUDA when torch sees a GPU; with "
        "--engine ray, on the actors of a Ray cluster), build "
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
        help="items.parquet of the generic format to index, or a directory of them (item_id, "
        "surface, metadata; items the model never saw get cold-start vectors); default: the "
        "model's own vocabulary",
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
        "reports any), cpu = CPU only for both; with --engine ray: GPU actors when the "
        "cluster has GPUs",
    )
    p.add_argument(
        "--engine", choices=["local", "ray"], default="local",
        help="local: encode in this process (default); ray: read the catalogue (--catalog: a "
        "parquet file or a directory of them) as a Ray Dataset and encode it on a pool of Ray "
        "actors, then build, tune, gate and publish here as local does (needs `pip install "
        "uniserve[ray]`)",
    )  # fmt: skip
    p.add_argument(
        "--address", default=None,
        help="--engine ray: the Ray cluster to join (auto, or HEAD:6379 of a `ray start "
        "--head`; uniserve must be installed on its nodes); default: start a local Ray "
        "instance for this job",
    )  # fmt: skip
    p.add_argument(
        "--ray-actors", type=int, default=None, metavar="N",
        help="--engine ray: encoding actors (default: one per cluster GPU, else one per "
        "cluster CPU but one)",
    )  # fmt: skip
    p.add_argument(
        "--batch-size", type=int, default=65536, help="items encoded per batch (default 65536)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of IVF/PQ training and query sample")
    p.add_argument(
        "--dim", type=int, default=None,
        help="index only the first DIM dimensions (a model trained with --matryoshka): "
        "smaller, faster; the manifest records it",
    )  # fmt: skip
    p.add_argument(
        "--mode", choices=["single", "multi"], default="single",
        help="multi: also store MUVERA FDEs of the items' multi-vectors in a second FAISS index, "
        "the multi-vectors for exact Chamfer re-ranking, and the FDE config and seed (--seed) "
        "in the manifest, for POST /v1/retrieve with mode multi (default single)",
    )  # fmt: skip
    p.add_argument(
        "--fde-repetitions", type=int, default=16, help="multi: FDE repetitions (default 16)"
    )
    p.add_argument(
        "--fde-simhash", type=int, default=2,
        help="multi: SimHash hyperplanes per repetition, 2^k partitions (default 2)",
    )  # fmt: skip
    p.add_argument(
        "--fde-projection", type=int, default=8,
        help="multi: AMS-sketch dimension per partition; 0 = identity (default 8)",
    )  # fmt: skip
    p.add_argument(
        "--fde-final-dim", type=int, default=None,
        help="multi: count-sketch the FDE to this many dimensions (default: none)",
    )  # fmt: skip
    p.add_argument(
        "--fde-index-type", default="Flat",
        help="multi: faiss type of the FDE index (default Flat; IVF for large catalogues)",
    )  # fmt: skip
    p.add_argument(
        "--shards", type=int, default=None,
        help="split the catalogue into this many shards by a stable hash of the item id and "
        "publish shard I as its own index root, <index-root>/shard-I, one replica serving each "
        "(a router replica with UNISERVE_SHARD_URLS merges them); default: one unsharded index",
    )  # fmt: skip
    p.add_argument(
        "--shard", type=int, default=None,
        help="with --shards: build only this shard (0-based), what one machine of a fleet "
        "runs; default: every shard, one after another",
    )  # fmt: skip
    p.add_argument(
        "--build-id", default=None,
        help="with --shards: the id every shard's manifest records for this build (pass the "
        "same one to each machine's --shard run); default: a fresh time-based id",
    )  # fmt: skip
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
        "'index' (recall vs QPS per index type), 'muvera' (FDE + re-rank vs exact Chamfer)",
        description="Run a benchmark; `uniserve bench service --help` and `uniserve bench "
        "index --help` list their options. Results go to stdout (and --json / --out).",
    )
    p.add_argument("which", choices=["service", "index", "muvera"], help="which benchmark")
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

    p = sub.add_parser(
        "report",
        help="render latency percentiles, throughput, cache hit ratio and stage timings from "
        "Prometheus into a PNG",
        description="Fetch uniserve's key series for a recent time range from Prometheus and "
        "draw them into one PNG, for a look without Grafana. Needs matplotlib "
        "(pip install 'uniserve[report]').",
    )
    p.add_argument(
        "--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL (default "
        "http://127.0.0.1:9090)",
    )  # fmt: skip
    p.add_argument("--out", default="uniserve-report.png", help="PNG to write")
    p.add_argument("--since", default="15m", help="time range ending now (default 15m)")
    p.add_argument("--step", default=None, help="time between points (default: range / 240)")
    p.add_argument("--window", default="1m", help="rate() window (default 1m)")
    p.add_argument(
        "--selector", default="", help='extra label matchers for every series, e.g. '
        'instance="10.0.0.5:9000" (default: every replica together)',
    )  # fmt: skip
    p.set_defaults(func=_report)
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
