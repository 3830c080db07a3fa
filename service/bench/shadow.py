"""`uniserve bench shadow`: what a shadow model costs live traffic.

In one run, four real `uniserve serve` processes (one torch / FAISS thread each, result cache
off so every retrieve computes) run side by side on one data dir: two without a shadow (the
baseline, and an A/A control that shows how far two identical servers differ within the run:
the measurement's own noise), one whose shadow answers 10% of the retrieves and one whose shadow
answers all of them (`UNISERVE_SHADOW_SAMPLE`). They take turns: in each round every one of
them gets `--block` seconds of open-loop retrieves by user id at `--rate` (each with a few
catalogue events, every user distinct, the same bodies for all in a round), in an order that
rotates every round, until each has had `--seconds`. Interleaving is what makes the comparison
hold on a shared machine, whose speed drifts within a minute more than the effect measured.
After its turn a server is waited for until its background work is done
(`uniserve_online_pending` 0: the shadow's answers to what the turn queued, which it works off
at idle priority), so no server's shadow runs in another's turn; each turn starts after half a
second of the same load, unmeasured, which brings it back to a steady state (connections,
caches).
The shadow is the live index published again as another version (same model and index, so the
shadow does exactly the live work a second time: the most a shadow of this size can cost).
Prints, per server, the achieved rate, p50 / p99 from each request's scheduled time (pooled
over its turns), the p99 against the baseline with a 95% bootstrap interval (whole rounds
resampled), the shadow's answered and dropped counts from `/metrics`, the longest wait for a
turn's background work, and the resident memory of the server's process tree (its shadow
worker process included) at the end. A shadow's cost is resolved only where its interval
clears the A/A control's. Use the sustainable rate of the machine (`uniserve bench service`
finds it). A benchmark, not a test: numbers go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from math import nan
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from service.bench.load import Client, StepResult, run_load, run_step
from service.bench.servers import metric_samples, server

# the servers of a run: none (the baseline), a second one without a shadow (the A/A control:
# how far two identical servers differ in the same run, the measurement's own noise), 10%, 100%
SAMPLES: tuple[float | None, ...] = (None, None, 0.1, 1.0)  # None: no shadow loaded
LABELS = ("none", "none (A/A)", "10%", "100%")
DRAWS = 2000  # bootstrap resamples of the rounds
BLOCK_S = 3.0  # seconds of load per turn
PAUSE_S = 0.3  # between turns, once the turn's background work is done
DRAIN_TIMEOUT_S = 60.0  # the longest a turn's shadow backlog is waited for
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


def samples(port: int, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called `name` in the server's `/metrics`."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return metric_samples(text, name)


def shadow_counts(port: int) -> dict[str, float]:
    return {
        labels["outcome"]: value
        for labels, value in samples(port, "uniserve_shadow_requests_total")
    }


def background_pending(port: int) -> float:
    """Online-quality work (served lists remembered, shadow answers) queued or running."""
    found = samples(port, "uniserve_online_pending")
    if not found:
        raise RuntimeError(f"no uniserve_online_pending in the metrics of port {port}")
    return found[0][1]


async def drained(port: int, timeout: float = DRAIN_TIMEOUT_S) -> float:
    """Wait until the server's background work is done (a shadow works off what its turn
    queued, at idle priority): else it would run on in the next server's turn and be measured
    there. Returns the seconds waited."""
    start = time.perf_counter()
    while await asyncio.to_thread(background_pending, port) > 0:
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"port {port}: background work not done after {timeout:.0f} s")
        await asyncio.sleep(0.05)
    return time.perf_counter() - start


async def _turns(
    ports: Sequence[int], requests: list[bytes], rate: float, seconds: float, block: float
) -> tuple[list[list[list[float]]], list[list[StepResult]], list[list[float]]]:
    """Each port in turn, `block` seconds at a time, rotating the order every round, until each
    had `seconds`, each turn followed by the wait for its background work: per port, per round
    every answered request's latency in ms; per port the steps and the waits in seconds."""
    clients = [Client(port) for port in ports]
    per_block = max(1, int(rate * block))
    warm = requests[-50:]
    latencies: list[list[list[float]]] = [[] for _ in ports]
    steps: list[list[StepResult]] = [[] for _ in ports]
    waits: list[list[float]] = [[] for _ in ports]
    try:
        for client in clients:  # connections and code paths, unmeasured
            await run_step(client, warm, 25.0, 2.0)
        rounds = max(1, round(seconds / block))
        for r in range(rounds):
            bodies = requests[(r * per_block) % (len(requests) - 50) :][:per_block]
            for turn in range(len(ports)):
                i = (r + turn) % len(ports)
                await run_step(clients[i], warm, rate, WARM_S)  # back to steady state, unmeasured
                latencies[i].append([])
                steps[i].append(
                    await run_step(clients[i], bodies, rate, block, keep=latencies[i][-1])
                )
                waits[i].append(await drained(ports[i]))
                await asyncio.sleep(PAUSE_S)
    finally:
        for client in clients:
            client.close()
    return latencies, steps, waits


def p99_ratio_interval(
    base: Sequence[Sequence[float]],
    other: Sequence[Sequence[float]],
    draws: int = DRAWS,
    seed: int = 0,
) -> tuple[float, float, float]:
    """The ratio of pooled p99s, other / base, and its 95% bootstrap interval: `base` and
    `other` hold each round's latencies (round r of one ran beside round r of the other), and
    whole rounds are resampled with replacement, so the interval carries the machine's
    drift between rounds as well as the tail's sampling noise."""
    if len(base) != len(other) or not base:
        raise ValueError(f"need the same number (>= 1) of rounds, got {len(base)}, {len(other)}")
    a = [np.asarray(r, dtype=float) for r in base]
    b = [np.asarray(r, dtype=float) for r in other]

    def ratio(rounds: np.ndarray) -> float:
        pooled_a = np.concatenate([a[r] for r in rounds])
        pooled_b = np.concatenate([b[r] for r in rounds])
        return float(np.percentile(pooled_b, 99) / np.percentile(pooled_a, 99))

    rng = np.random.default_rng(seed)
    n = len(a)
    boot = [ratio(rng.integers(0, n, n)) for _ in range(draws)]
    low, high = np.percentile(boot, [2.5, 97.5])
    return ratio(np.arange(n)), float(low), float(high)


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
        latencies, steps, waits = run_load(
            _turns([srv.port for srv in servers], requests, rate, seconds, block)
        )
        rows = []
        base_answered = any(len(r) for r in latencies[0])
        for label, sample, srv, rounds, own, waited in zip(
            LABELS, SAMPLES, servers, latencies, steps, waits, strict=True
        ):
            ms = [x for r in rounds for x in r]
            ratio, low, high = (
                p99_ratio_interval(latencies[0], rounds) if ms and base_answered else (nan,) * 3
            )
            rows.append(
                {
                    "server": label,
                    "shadow_sample": sample,
                    "turns": len(own),
                    "achieved_rps": round(sum(s.achieved_rps for s in own) / len(own), 1),
                    "sent": sum(s.sent for s in own),
                    "ok": sum(s.ok for s in own),
                    "rejected": sum(s.rejected for s in own),
                    "errors": sum(s.errors for s in own),
                    "p50_ms": round(float(np.percentile(ms, 50)), 3) if ms else None,
                    "p99_ms": round(float(np.percentile(ms, 99)), 3) if ms else None,
                    "p99_vs_none": round(ratio - 1, 4),  # NaN: a side answered nothing
                    "p99_vs_none_95ci": [round(low - 1, 4), round(high - 1, 4)],
                    "turn_p99_ms_median": round(float(np.median([s.p99_ms for s in own])), 3),
                    "turn_p99_ms": [round(s.p99_ms, 3) for s in own],  # in the order run
                    "drain_s_max": round(max(waited), 3),
                    **shadow_counts(srv.port),
                    "rss_mb": srv.rss_mb(),
                }
            )
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
    print(f"{'server':>11}{'rps':>8}{'ok':>7}{'429':>6}{'err':>5}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'vs none':>9}{'95% interval':>18}"
          f"{'answered':>10}{'dropped':>9}{'drain s':>9}{'RSS MB':>8}")  # fmt: skip
    for r in rows:
        low, high = r["p99_vs_none_95ci"]
        print(
            f"{r['server']:>11}{r['achieved_rps']:>8.1f}{r['ok']:>7}{r['rejected']:>6}"
            f"{r['errors']:>5}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['p99_vs_none']:>+9.1%}"
            f"{f'{low:+.1%} .. {high:+.1%}':>18}"
            f"{r.get('answered', 0):>10.0f}{r.get('dropped', 0):>9.0f}{r['drain_s_max']:>9.2f}"
            f"{r['rss_mb']:>8.0f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0
