"""The live catalogue benchmark (issue 19), behind `scripts/bench_catalogue.py`.

Two real `uniserve serve` replicas share one data dir (the index root and its change log); with
`--redis`, also a throwaway `redis-server`, so changes spread by the Redis nudge. Three phases:

1. freshness: `--upserts` upserts, one per call, to replica A, each item on a surface of its own
   so that `/v1/retrieve` with `surfaces: [that surface]` returns it exactly when it is live;
   after each 200, A and then B are asked until they return it: seconds from the 200 to the
   first answer holding it, per replica (p50 / p99 / max);
2. churn under load: closed-loop retrieve clients on both replicas while a writer sends
   `--churn-upserts` upserts and `--churn-retirements` retirements of catalogue items (in calls
   of `--batch`); every retrieve answer is checked against the retirements acknowledged on that
   replica before the request was sent: none may come back; failed requests are counted;
3. retrieve latency with the full delta against an empty one: a third replica C starts on a
   private copy of the original data dir (the same index version and model, no change log);
   then blocks of `LATENCY_BLOCK` closed-loop retrieves alternate between A (the delta of
   phases 1-2) and C, the order flipping every round, each block's bodies fresh (no cache hit)
   and the same for both, until each has answered `--latency-requests`: p50 / p99 of each and
   their ratio. Interleaving matters on a shared machine, where the speed drifts within a
   minute more than the effect measured.

A benchmark, not a test: its numbers go to BENCHMARKS.md with the machine and the command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.bench.servers import free_port, metric_samples, redis_server, thread_env

LATENCY_BLOCK = 100  # retrieves per replica in turn in phase 3
ADMIN_KEY = "bench-catalogue-admin-7e6d5c4b3a"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@contextlib.contextmanager
def replica(data: Path, poll: float, env: dict[str, str], log: Path) -> Iterator[str]:
    """A real `uniserve serve` over `data` until ready; yields its base URL."""
    port = free_port()
    full = {
        **os.environ,
        "UNISERVE_DATA_DIR": str(data),
        "UNISERVE_BOOTSTRAP": "false",
        "UNISERVE_ADMIN_KEY": ADMIN_KEY,
        "UNISERVE_INDEX_POLL_SECONDS": str(poll),
        "UNISERVE_CACHE_TTL_SECONDS": "0",
        "UNISERVE_TORCH_THREADS": "1",
        "UNISERVE_FAISS_THREADS": "1",
        **thread_env(1),  # as `bench service` runs its replicas: no BLAS / OpenMP oversubscription
        **env,
    }
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen([*cmd, "--log-level", "warning"], env=full, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"uniserve exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("uniserve not ready after 600 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(a, 50)) * 1000, 2),
        "p99_ms": round(float(np.percentile(a, 99)) * 1000, 2),
        "max_ms": round(float(a.max()) * 1000, 2),
    }


def bodies(item_ids: list[str], n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {"events": [{"item_id": str(i)} for i in rng.choice(item_ids, 8)], "k": 10}
        for _ in range(n)
    ]


def latency(client: httpx.Client, url: str, requests: list[dict[str, Any]]) -> list[float]:
    out = []
    for body in requests:
        started = time.perf_counter()
        resp = client.post(f"{url}/v1/retrieve", json=body)
        out.append(time.perf_counter() - started)
        resp.raise_for_status()
    return out


def interleaved(
    client: httpx.Client, urls: tuple[str, str], item_ids: list[str], n: int
) -> tuple[list[float], list[float]]:
    """Latencies of `n` retrieves on each of two replicas, in alternating blocks (see phase 3)."""
    for url in urls:  # warm-up
        latency(client, url, bodies(item_ids, LATENCY_BLOCK, seed=2**31))
    out: tuple[list[float], list[float]] = ([], [])
    for block in range(-(-n // LATENCY_BLOCK)):
        requests = bodies(item_ids, min(LATENCY_BLOCK, n - block * LATENCY_BLOCK), seed=block)
        for side in (0, 1) if block % 2 == 0 else (1, 0):
            out[side].extend(latency(client, urls[side], requests))
    return out


def freshness(client: httpx.Client, a: str, b: str, n: int) -> dict[str, Any]:
    seen: dict[str, list[float]] = {"a": [], "b": []}
    for i in range(n):
        surface = f"bench-fresh-{i}"
        item = {"item_id": f"fresh-{i}", "surface": surface}
        resp = client.post(f"{a}/admin/items/upsert", json={"items": [item]}, headers=ADMIN)
        resp.raise_for_status()
        acked = time.perf_counter()
        body = {"events": [{"item_id": "1"}], "k": 1, "surfaces": [surface]}
        for name, url in (("a", a), ("b", b)):
            while True:
                got = client.post(f"{url}/v1/retrieve", json=body).json()["items"]
                if got and got[0]["item_id"] == item["item_id"]:
                    seen[name].append(time.perf_counter() - acked)
                    break
                if time.perf_counter() - acked > 60:
                    raise RuntimeError(f"{item} not on replica {name} after 60 s")
                time.sleep(0.005)
    return {name: quantiles(values) for name, values in seen.items()}


def churn(
    a: str, b: str, item_ids: list[str], upserts: int, retirements: int, batch: int, readers: int
) -> dict[str, Any]:
    """Writers on A (upserts) and B (retirements) while readers on both check every answer."""
    retired_at: dict[str, dict[str, float]] = {"a": {}, "b": {}}  # replica -> id -> acked at
    stop = threading.Event()
    stats = {"retrieves": 0, "failed": 0, "retired_returned": 0}
    lock = threading.Lock()
    requests = bodies(item_ids, 200, seed=1)

    def reader(name: str, url: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                sent = time.perf_counter()
                acked = dict(retired_at[name])  # a copy: the writer adds to it meanwhile
                gone = {i for i, t in acked.items() if t < sent}
                try:
                    resp = client.post(f"{url}/v1/retrieve", json=requests[rng.integers(200)])
                    ok = resp.status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    stats["retrieves"] += 1
                    if not ok:
                        stats["failed"] += 1
                    elif gone & {it["item_id"] for it in resp.json()["items"]}:
                        stats["retired_returned"] += 1

    threads = [
        threading.Thread(target=reader, args=(name, url, i), daemon=True)
        for i in range(readers)
        for name, url in (("a", a), ("b", b))
    ]
    for t in threads:
        t.start()
    started = time.perf_counter()
    to_retire = item_ids[:retirements]
    with httpx.Client(timeout=60) as client:
        for lo in range(0, max(upserts, retirements), batch):
            if lo < upserts:
                items = [
                    {"item_id": f"churn-{i}", "surface": "0"}
                    for i in range(lo, min(lo + batch, upserts))
                ]
                client.post(
                    f"{a}/admin/items/upsert", json={"items": items}, headers=ADMIN
                ).raise_for_status()
            if lo < retirements:
                ids = to_retire[lo : lo + batch]
                client.post(
                    f"{b}/admin/items/retire", json={"item_ids": ids}, headers=ADMIN
                ).raise_for_status()
                acked = time.perf_counter()
                retired_at["b"].update(dict.fromkeys(ids, acked))
                # on A the retirement counts once A has applied it (the bound being measured)
                threading.Thread(
                    target=_when_applied, args=(a, ids, retired_at["a"]), daemon=True
                ).start()
    seconds = time.perf_counter() - started
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(30)
    return {**stats, "write_seconds": round(seconds, 1)}


def _when_applied(url: str, ids: list[str], into: dict[str, float]) -> None:
    """Record when replica `url` reports `ids` unknown (applied the retirement)."""
    with httpx.Client(timeout=30) as client:
        while True:
            body = {"events": [{"item_id": "1"}], "candidates": ids}
            unknown = client.post(f"{url}/v1/rank", json=body).json()["unknown"]
            if set(ids) <= set(unknown):
                into.update(dict.fromkeys(ids, time.perf_counter()))
                return
            time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="artifacts (model + index root); copied")
    p.add_argument("--poll", type=float, default=1.0, help="UNISERVE_INDEX_POLL_SECONDS")
    p.add_argument("--redis", action="store_true", help="share a throwaway redis-server too")
    p.add_argument("--upserts", type=int, default=1000)
    p.add_argument("--churn-upserts", type=int, default=10_000)
    p.add_argument("--churn-retirements", type=int, default=1000)
    p.add_argument("--batch", type=int, default=10, help="items per churn call")
    p.add_argument("--readers", type=int, default=2, help="retrieve clients per replica")
    p.add_argument("--latency-requests", type=int, default=1000)
    p.add_argument("--json", default=None, help="write the results here too")
    args = p.parse_args(argv)

    from index import load_current

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(args.data_dir, data, ignore=shutil.ignore_patterns("changes.jsonl"))
        index, _ = load_current(data / "indexes")
        item_ids = [str(i) for i in index.item_ids]
        with contextlib.ExitStack() as stack:
            env: dict[str, str] = {}
            if args.redis:
                env["UNISERVE_REDIS_URL"] = stack.enter_context(
                    redis_server(Path(tmp) / "redis.log")
                )
            a = stack.enter_context(replica(data, args.poll, env, Path(tmp) / "a.log"))
            b = stack.enter_context(replica(data, args.poll, env, Path(tmp) / "b.log"))
            client = stack.enter_context(httpx.Client(timeout=60))
            fresh = freshness(client, a, b, args.upserts)
            churned = churn(
                a,
                b,
                item_ids,
                args.churn_upserts,
                args.churn_retirements,
                args.batch,
                args.readers,
            )
            metrics = client.get(f"{a}/metrics").text
            ((_, size),) = metric_samples(metrics, "uniserve_catalogue_delta_items")
            pristine = Path(tmp) / "empty"
            shutil.copytree(args.data_dir, pristine, ignore=shutil.ignore_patterns("changes.jsonl"))
            c = stack.enter_context(replica(pristine, args.poll, env, Path(tmp) / "c.log"))
            full, empty = interleaved(client, (a, c), item_ids, args.latency_requests)
    results = {
        "catalogue_items": len(item_ids),
        "poll_seconds": args.poll,
        "redis": args.redis,
        "freshness_seconds_after_200": fresh,
        "churn": churned,
        "delta_items_at_the_end": size,
        "retrieve_empty_delta": quantiles(empty),
        "retrieve_full_delta": quantiles(full),
        "full_over_empty": {
            q: round(quantiles(full)[q] / quantiles(empty)[q], 3) for q in ("p50_ms", "p99_ms")
        },
    }
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0
