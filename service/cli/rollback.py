"""`uniserve rollback`: point CURRENT at the previous valid index version (or `--to`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "rollback",
        help="point CURRENT at the previous valid index version",
        description="Point CURRENT at the newest version older than the live one whose files "
        "match their manifest (or at --to). Services watching the index root swap to it.",
    )
    p.add_argument("--index-root", required=True, help="index root (versions/ + CURRENT)")
    p.add_argument("--to", default=None, help="version to make CURRENT instead of the previous")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from index import current_version, rollback

    root = Path(args.index_root)
    before = current_version(root)
    after = rollback(root, to=args.to)
    print(json.dumps({"current": after, "previous": before}))
    return 0
