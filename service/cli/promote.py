"""`uniserve promote`: ask a running replica to promote its shadow model (POST /admin/promote).

The replica decides on its own counts: the shadow becomes live and CURRENT only when its online
HR@10 beats the live one's with a one-sided test at the confidence over at least the minimum of
matched events on each side; otherwise it refuses. Both rates, the counts, the p-value and the
decision are printed either way. The admin key is read from `UNISERVE_ADMIN_KEY` (never a flag).
Exit status 0 promoted, 3 refused, 2 on an error (no shadow, unreachable, a refused swap).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from service.cli.common import EXIT_ERROR, EXIT_REFUSED


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "promote",
        help="make the shadow model live when its online hit rate wins significantly",
        description="POST /admin/promote to a running replica (admin key from "
        "UNISERVE_ADMIN_KEY): the shadow's index version becomes live and CURRENT only when "
        "its online HR@10 beats the live one's with a one-sided two-proportion test at "
        "--confidence over at least --min-events matched events each; otherwise nothing "
        "changes. Prints both rates, the counts, the p-value and the decision; exit status 0 "
        "promoted, 3 refused, 2 error.",
    )
    p.add_argument(
        "--url", default="http://127.0.0.1:8000", help="the replica's admin base URL (default "
        "http://127.0.0.1:8000; its admin port when UNISERVE_ADMIN_PORT is set)",
    )  # fmt: skip
    p.add_argument(
        "--min-events", type=int, default=None,
        help="matched events each side needs (default: the replica's UNISERVE_PROMOTE_MIN_EVENTS)",
    )  # fmt: skip
    p.add_argument(
        "--confidence", type=float, default=None,
        help="confidence of the one-sided test, in [0.5, 1) (default: the replica's "
        "UNISERVE_PROMOTE_CONFIDENCE)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the decision as JSON instead")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (a swap loads)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import httpx

    key = os.environ.get("UNISERVE_ADMIN_KEY", "")
    if not key:
        print("uniserve promote: error: set UNISERVE_ADMIN_KEY to the admin key", file=sys.stderr)
        return EXIT_ERROR
    body = {
        name: value
        for name, value in (("min_events", args.min_events), ("confidence", args.confidence))
        if value is not None
    }
    try:
        resp = httpx.post(
            f"{args.url.rstrip('/')}/admin/promote",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=args.timeout,
        )
    except httpx.HTTPError as exc:
        print(f"uniserve promote: error: {args.url} unreachable: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if resp.status_code != 200:
        try:
            error = resp.json()["error"]
        except (ValueError, KeyError, TypeError):
            error = resp.text[:500]
        print(f"uniserve promote: error ({resp.status_code}): {error}", file=sys.stderr)
        return EXIT_ERROR
    decision = resp.json()
    if args.json:
        print(json.dumps(decision, indent=2))
    else:
        print_decision(decision)
    return 0 if decision["promoted"] else EXIT_REFUSED


def print_decision(decision: dict[str, Any]) -> None:
    print(f"{'':8}{'index version':>36}{'events':>10}{'hits@10':>10}{'HR@10':>9}")
    for role in ("live", "shadow"):
        arm = decision[role]
        print(
            f"{role:<8}{arm['index_version']:>36}{arm['events']:>10}{arm['hits']:>10}"
            f"{arm['hit_rate']:>9.4f}"
        )
    print(
        f"one-sided p-value {decision['p_value']:.4g} (confidence {decision['confidence']}, at "
        f"least {decision['min_events']} events each)"
    )
    verdict = "PROMOTED: the shadow is live and CURRENT" if decision["promoted"] else "REFUSED"
    print(f"{verdict}: {decision['reason']}")
