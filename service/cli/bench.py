"""`uniserve bench service|index|muvera|replay|shadow|ablation`: run one of the benchmarks of
`service.bench`."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks: 'service' (throughput vs the in-process limit, a naive service and, "
        "with --peers, PyTriton, Ray Serve and LitServe), "
        "'index' (recall vs QPS per index type), 'muvera' (FDE + re-rank vs exact Chamfer), "
        "'replay' (held-out events against a running service: online vs offline HR@10, "
        "promotion), 'shadow' (live latency without a shadow model, twice (A/A), and with one "
        "at 10%% and 100%% sampling), 'ablation' (the default model against one change at a "
        "time, trained to early stopping on Amazon Toys and Sports, two seeds, in parallel)",
        description="Run a benchmark; `uniserve bench WHICH --help` lists its options. "
        "Results go to stdout (and --json / --out).",
    )
    p.add_argument(
        "which",
        choices=["service", "index", "muvera", "replay", "shadow", "ablation"],
        help="which benchmark",
    )
    p.add_argument("options", nargs=argparse.REMAINDER, help="that benchmark's options")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.which == "service":
        from service.bench.service import main as bench_main
    elif args.which == "muvera":
        from service.bench.muvera import main as bench_main
    elif args.which == "replay":
        from service.bench.replay import main as bench_main
    elif args.which == "shadow":
        from service.bench.shadow import main as bench_main
    elif args.which == "ablation":
        from service.bench.ablation import main as bench_main
    else:
        from service.bench.ann import main as bench_main
    return bench_main(args.options)
