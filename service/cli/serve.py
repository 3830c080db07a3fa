"""`uniserve serve`: serve the HTTP API (bootstrapping the embedded default on first start)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
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
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes on the same port (default 1, env UNISERVE_WORKERS); more than "
        "one needs UNISERVE_REDIS_URL, and each loads its own model (the index file is "
        "memory-mapped and shared)",
    )
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from service.api.runner import run
    from service.jobs.bootstrap import ensure_artifacts
    from service.settings import Settings

    flags = {
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "admin_host": args.admin_host,
        "admin_port": args.admin_port,
        "workers": args.workers,
    }
    overrides = {k: v for k, v in flags.items() if v}
    if args.no_bootstrap:
        overrides["bootstrap"] = False
    settings = Settings(**overrides)
    if settings.bootstrap and not settings.shards:  # a router serves the shards' model as is
        ensure_artifacts(settings, progress=True)
    run(settings, log_level=args.log_level)  # returns once stopped by SIGTERM / SIGINT
    return 0
