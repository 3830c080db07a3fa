"""`uniserve bench shadow`: what a shadow model costs live traffic.

In one run, three real `uniserve serve` processes (one torch / FAISS thread each, result cache
off so every retrieve computes) run side by side on one data dir: one without a
shadow, one whose shadow answers 10% of the retrieves and one whose shadow answers all of them
(`UNISERVE_SHADOW_SAMPLE`). They take turns: in each round every one of them gets `--block`
seconds of open-loop retrieves by user id at `--rate` (each with a few catalogue events, every
user distinct, the same bodies for the three in a round), in an order that rotates every round,
until each has had `--seconds`. Interleaving is what makes the comparison hold on a shared
machine, whose speed drifts within a minute more than the effect measured; a server whose turn
it is not sits idle (its shadow finishes its queue within the pause between turns), and each
turn starts after half a second of the same load, unmeasured, which brings it back to a steady
state (connections, caches).
The shadow is the live index published again as another version (same model and index, so the
shadow does exactly the live work a second time: the most a shadow of this size can cost).
Prints, per configuration, the achieved rate, p50 / p99 from each request's scheduled time
(pooled over its turns), the p99 against the server without a shadow, the shadow's answered and
dropped counts from `/metrics`, and the resident memory of the server's process tree (its
shadow worker process included) at the end. Use the sustainable rate of the machine (`uniserve
bench service` finds it). A benchmark, not a test: numbers go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from service.bench.load import Client, StepResult, run_load, run_step
from service.bench.servers import server

SAMPLES = (None, 0.1, 1.0)  # None: no shadow loaded
BLOCK_S = 3.0  # seconds of load per turn
PAUSE_S = 0.3  # between turns
WARM_S = 0.5  # of load at the rate before each turn, unmeasured (connections, caches)


def bodies(data_dir: Path, n: int, events: int = 5) -> list[bytes]:
    """`n` retrieves by distinct user ids, each with `events` catalogue events."""
    from index import load_current

    index, _ = load_current(data_dir / "indexes")
    ids = [str(i) for i in index.item_ids]
    return [
        orjson.dumps(
            {
                "user_id": f"bench-shadow-{u}",
                "events": [{"item_id": ids[(u * 31 + j * 7) % len(ids)]} for j in range(events)],
                "k": 10,
            }
        )
        for u in range(n)
    ]


def shadow_version(data_dir: Path) -> str:
    """The live version published again as a new version, CURRENT left on the live one."""
    from index import current_version, republish, set_current

    root = data_dir / "indexes"
    live = current_version(root)
    if live is None:
        raise ValueError(f"no CURRENT under {root}")
    version = republish(root, keep=100).version
    set_current(root, live)
    return version


def shadow_counts(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = re.findall(r'^uniserve_shadow_requests_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    return {outcome: float(value) for outcome, value in found}


async def _turns(
    ports: Sequence[int], requests: list[bytes], rate: float, seconds: float, block: float
) -> tuple[list[list[float]], list[list[StepResult]]]:
    """Each port in turn, `block` seconds at a time, rotating the order every round, until each
    had `seconds`: (every answered request's latency in ms, the steps) per port."""
    clients = [Client(port) for port in ports]
    per_block = max(1, int(rate * block))
    warm = requests[-50:]
    latencies: list[list[float]] = [[] for _ in ports]
    steps: list[list[StepResult]] = [[] for _ in ports]
    try:
        for client in clients:  # connections and code paths, unmeasured
            await run_step(client, warm, 25.0, 2.0)
        rounds = max(1, round(seconds / block))
        for r in range(rounds):
            bodies = requests[(r * per_block) % (len(requests) - 50) :][:per_block]
            for turn in range(len(ports)):
                i = (r + turn) % len(ports)
                await run_step(clients[i], warm, rate, WARM_S)  # back to steady state, unmeasured
                steps[i].append(await run_step(clients[i], bodies, rate, block, keep=latencies[i]))
                await asyncio.sleep(PAUSE_S)  # the shadow's queue drains before the next turn
    finally:
        for client in clients:
            client.close()
    return latencies, steps


def run(
    data_dir: Path, rate: float, seconds: float, threads: int = 1, block: float = BLOCK_S
) -> list[dict[str, Any]]:
    version = shadow_version(data_dir)
    requests = bodies(data_dir, max(1, int(rate * seconds)) + 50)
    with contextlib.ExitStack() as stack:
        servers = []
        for sample in SAMPLES:
            env = {"UNISERVE_CACHE_TTL_SECONDS": "0"}
            if sample is not None:
                env.update(UNISERVE_SHADOW_VERSION=version, UNISERVE_SHADOW_SAMPLE=str(sample))
            servers.append(stack.enter_context(server("uniserve", data_dir, threads, env)))
        latencies, steps = run_load(
            _turns([srv.port for srv in servers], requests, rate, seconds, block)
        )
        rows = []
        for sample, srv, ms, own in zip(SAMPLES, servers, latencies, steps, strict=True):
            sent = sum(s.sent for s in own)
            rows.append(
                {
                    "shadow_sample": sample,
                    "turns": len(own),
                    "achieved_rps": round(sum(s.achieved_rps for s in own) / len(own), 1),
                    "sent": sent,
                    "ok": sum(s.ok for s in own),
                    "rejected": sum(s.rejected for s in own),
                    "errors": sum(s.errors for s in own),
                    "p50_ms": round(float(np.percentile(ms, 50)), 3) if ms else None,
                    "p99_ms": round(float(np.percentile(ms, 99)), 3) if ms else None,
                    "turn_p99_ms_median": round(float(np.median([s.p99_ms for s in own])), 3),
                    **shadow_counts(srv.port),
                    "rss_mb": srv.rss_mb(),
                }
            )
    base = rows[0]["p99_ms"]
    for row in rows:
        row["p99_vs_none"] = round(row["p99_ms"] / base - 1, 4) if base and row["p99_ms"] else None
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="uniserve bench shadow", description=__doc__)
    p.add_argument(
        "--data-dir", type=Path, default=None,
        help="a data dir (model/ + indexes/; default: the embedded default made in a temp dir); "
        "a version is published into it as the shadow",
    )  # fmt: skip
    p.add_argument("--rate", type=float, default=100.0, help="retrieves per second")
    p.add_argument(
        "--seconds", type=float, default=60.0, help="seconds of load per configuration, in turns"
    )
    p.add_argument("--block", type=float, default=BLOCK_S, help="seconds per turn")
    p.add_argument("--threads", type=int, default=1, help="torch / FAISS threads of the server")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    data_dir = args.data_dir
    if data_dir is None:
        from service.jobs.bootstrap import ensure_artifacts
        from service.settings import Settings

        data_dir = Path(tempfile.mkdtemp(prefix="uniserve-bench-shadow-"))
        ensure_artifacts(Settings(data_dir=data_dir))
    rows = run(data_dir, args.rate, args.seconds, args.threads, args.block)
    print(f"{'shadow':>8}{'rps':>8}{'ok':>7}{'429':>6}{'err':>5}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'vs none':>9}{'answered':>10}{'dropped':>9}{'RSS MB':>8}")  # fmt: skip
    for r in rows:
        sample = "none" if r["shadow_sample"] is None else f"{r['shadow_sample']:.0%}"
        print(
            f"{sample:>8}{r['achieved_rps']:>8.1f}{r['ok']:>7}{r['rejected']:>6}{r['errors']:>5}"
            f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['p99_vs_none']:>+9.1%}"
            f"{r.get('answered', 0):>10.0f}{r.get('dropped', 0):>9.0f}{r['rss_mb']:>8.0f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0
