"""`uniserve build-index`: the batch rebuild (encode the catalogue, build, tune, gate and publish
a FAISS index version), locally, sharded, or with the encoding on a Ray cluster."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "build-index",
        help="encode the catalogue, build a FAISS index, tune it, gate it, publish it",
        description="The batch rebuild: encode the catalogue (CUDA when torch sees a GPU; with "
        "--engine ray, on the actors of a Ray cluster), build "
        "the index (IVF k-means on GPUs when faiss reports any), pick the cheapest efSearch / "
        "nprobe meeting --target-recall, refuse an index that fails the gate (exit 3, nothing "
        "published), else publish a new version atomically and prune old ones. The live "
        "catalogue's change log under --index-root (POST /admin/items/upsert and /retire) is "
        "folded in: upserted items indexed, retired ones left out, the last change folded "
        "recorded in the manifest (changes_through); sharded, --mode multi and --engine ray "
        "builds fold nothing (replicas keep applying the log live).",
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace, shared: tuple[Any, Any] | None = None) -> int:
    """`shared`: (corpus, encoded catalogue) already loaded for the shards of one build."""
    from models.data import load_corpus
    from service.jobs.pipeline import build_and_publish

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
            run(shard_args, shared)
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
    from service.jobs.catalog import encode_catalogue

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
    from service.jobs.ray_build import ray_build_and_publish

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
