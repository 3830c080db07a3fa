"""`uniserve report`: draw the key Prometheus series into one PNG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from service.cli.common import EXIT_ERROR


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="render latency percentiles, throughput, cache hit ratio, stage timings and online "
        "HR@10 per version from Prometheus into a PNG",
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import httpx

    from service.jobs.report import parse_duration, render

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
