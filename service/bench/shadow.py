"""`uniserve bench shadow`: what a shadow model costs live traffic.

In one run, a real `uniserve serve` (subprocess, one torch / FAISS thread, result cache off so
every retrieve computes) is loaded at a fixed open-loop `--rate` of retrieves by user id
(each with a few catalogue events, each user distinct) four times: without a shadow, with one
answering 10% of the retrieves and with one answering all of them (`UNISERVE_SHADOW_SAMPLE`),
then without again.
The shadow is the live index published again as another version (same model and index, so the
shadow does exactly the live work a second time: the most a shadow of this size can cost).
Prints achieved rate, p50 / p99 from each request's scheduled time, the shadow's answered
and dropped counts from `/metrics`, and the resident memory of the server's process tree (its
shadow worker process included) after the step. Use the sustainable rate of the machine (`uniserve bench
service` finds it). A benchmark, not a test: numbers go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from service.bench.load import Client, StepResult, run_load, run_step
from service.bench.servers import server

# None: no shadow loaded; measured first and again last, so drift over the run (other jobs on
# the machine, warming caches) shows as the gap between the two baselines
SAMPLES = (None, 0.1, 1.0, None)


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


async def _measure(port: int, requests: list[bytes], rate: float, seconds: float) -> StepResult:
    """A short warm-up (connections, code paths), then the measured step, on one loop."""
    client = Client(port)
    try:
        await run_step(client, requests[-50:], 25.0, 2.0)
        return await run_step(client, requests[:-50], rate, seconds)
    finally:
        client.close()


def run(data_dir: Path, rate: float, seconds: float, threads: int = 1) -> list[dict[str, Any]]:
    version = shadow_version(data_dir)
    requests = bodies(data_dir, max(1, int(rate * seconds)) + 50)
    rows = []
    for sample in SAMPLES:
        env = {"UNISERVE_CACHE_TTL_SECONDS": "0"}
        if sample is not None:
            env.update(UNISERVE_SHADOW_VERSION=version, UNISERVE_SHADOW_SAMPLE=str(sample))
        with server("uniserve", data_dir, threads, env) as srv:
            step = run_load(_measure(srv.port, requests, rate, seconds))
            counts = shadow_counts(srv.port)
            rows.append({"shadow_sample": sample, **asdict(step), **counts, "rss_mb": srv.rss_mb()})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="uniserve bench shadow", description=__doc__)
    p.add_argument(
        "--data-dir", type=Path, default=None,
        help="a data dir (model/ + indexes/; default: the embedded default made in a temp dir); "
        "a version is published into it as the shadow",
    )  # fmt: skip
    p.add_argument("--rate", type=float, default=100.0, help="retrieves per second")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds per configuration")
    p.add_argument("--threads", type=int, default=1, help="torch / FAISS threads of the server")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    data_dir = args.data_dir
    if data_dir is None:
        from service.jobs.bootstrap import ensure_artifacts
        from service.settings import Settings

        data_dir = Path(tempfile.mkdtemp(prefix="uniserve-bench-shadow-"))
        ensure_artifacts(Settings(data_dir=data_dir))
    rows = run(data_dir, args.rate, args.seconds, args.threads)
    print(f"{'shadow':>8}{'rps':>8}{'ok':>7}{'429':>6}{'err':>5}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'answered':>10}{'dropped':>9}{'RSS MB':>8}")  # fmt: skip
    for r in rows:
        sample = "none" if r["shadow_sample"] is None else f"{r['shadow_sample']:.0%}"
        print(
            f"{sample:>8}{r['achieved_rps']:>8.1f}{r['ok']:>7}{r['rejected']:>6}{r['errors']:>5}"
            f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r.get('answered', 0):>10.0f}"
            f"{r.get('dropped', 0):>9.0f}{r['rss_mb']:>8.0f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0
