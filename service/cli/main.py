"""`uniserve` command line: train, evaluate, build-index, rollback, promote, serve, bench,
report.

Each subcommand is one module of `service.cli` holding its flags (`add_parser`) next to the
handler that reads them (`run`); a handler calls one function of `service.jobs`, `models`,
`index` or the app runner, so nothing here holds logic worth testing on its own.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from service.cli import bench, build_index, evaluate, promote, report, rollback, serve, train
from service.cli.common import DATA_HELP, EXIT_ERROR, EXIT_REFUSED

__all__ = ["DATA_HELP", "EXIT_ERROR", "EXIT_REFUSED", "build_parser", "main"]

SUBCOMMANDS = (train, evaluate, build_index, rollback, promote, bench, serve, report)
# the batch jobs: they allocate and free the same large tensors over and over
# (`models.memory.reuse_freed_memory`); the serving process keeps glibc's defaults
BATCH_JOBS = ("train", "evaluate", "build-index")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uniserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from index import IndexRejectedError, NoIndexError
    from models.artifacts import ModelArtifactError
    from models.memory import reuse_freed_memory

    args = build_parser().parse_args(argv)
    if args.command in BATCH_JOBS:
        reuse_freed_memory()
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
