"""Latency of a cache-hit retrieve vs a miss, p50/p99, for the Redis and in-process caches.

    python scripts/bench_cache.py [--data-dir .uniserve] [--redis-url URL] [--n 500]

Drives the real app (lifespan, middleware, routes, serving core) in this process over httpx's
ASGI transport, so the numbers are the service's own time, without HTTP sockets. A miss is a
retrieve for a user history not seen before (a fresh random 20-event history each time: user
encoder, ANN search, cache lookups and writes); a hit repeats a retrieve already answered. With
no --redis-url a throwaway `redis-server` (no persistence) is started on a free loopback port.
The data dir is bootstrapped (trained on the shipped sample) when it holds no artifacts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np

from service.api.app import create_app
from service.bench.servers import redis_server
from service.jobs.bootstrap import ensure_artifacts
from service.settings import Settings


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
    }


async def measure(settings: Settings, n: int, seed: int) -> dict[str, dict[str, float]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        engine = app.state.uniserve.engine
        if engine is None:
            raise SystemExit(f"not ready: {app.state.uniserve.not_ready_reason}")
        items = engine.index.item_ids
        rng = np.random.default_rng(seed)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

            async def timed(body: dict[str, Any]) -> float:
                started = time.perf_counter()
                resp = await client.post("/v1/retrieve", json=body)
                elapsed = time.perf_counter() - started
                if resp.status_code != 200:
                    raise SystemExit(f"retrieve failed: {resp.status_code} {resp.text}")
                return elapsed

            bodies = [
                {"events": [{"item_id": str(i)} for i in rng.choice(items, 20)], "k": 10}
                for _ in range(n + 20)
            ]
            for body in bodies[n:]:  # warm-up: first calls pay lazy initialisation
                await timed(body)
                await timed(body)
            misses = [await timed(body) for body in bodies[:n]]  # never seen: all misses
            for body in bodies[:50]:  # cached again now, well within the TTL
                await timed(body)
            hits = [await timed(bodies[i % 50]) for i in range(n)]
        metrics = app.state.uniserve.metrics.registry
        hit_count = metrics.get_sample_value(
            "uniserve_cache_requests_total", {"op": "retrieve", "result": "hit"}
        )
        if hit_count is None or hit_count < n:
            raise SystemExit(f"expected {n} cache hits, counted {hit_count}")
    return {"miss": percentiles(misses), "hit": percentiles(hits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".uniserve"))
    parser.add_argument("--redis-url", default=None, help="default: a throwaway redis-server")
    parser.add_argument("--n", type=int, default=500, help="requests per measurement")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    ensure_artifacts(Settings(data_dir=args.data_dir))
    print(f"retrieve latency, ms, {args.n} requests each (k=10, 20-event histories)")
    print(f"{'cache':<12} {'result':<6} {'p50':>8} {'p99':>8} {'mean':>8}")

    def report(name: str, results: dict[str, dict[str, float]]) -> None:
        for result in ("miss", "hit"):
            r = results[result]
            print(f"{name:<12} {result:<6} {r['p50']:8.2f} {r['p99']:8.2f} {r['mean']:8.2f}")

    def settings(redis_url: str | None) -> Settings:
        return Settings(data_dir=args.data_dir, bootstrap=False, redis_url=redis_url)

    if args.redis_url:
        report("redis", asyncio.run(measure(settings(args.redis_url), args.n, args.seed)))
    else:
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            try:
                url = stack.enter_context(redis_server(Path(tmp) / "redis.log"))
            except RuntimeError as exc:  # not installed, or did not start
                raise SystemExit(f"{exc}; or pass --redis-url") from None
            report("redis", asyncio.run(measure(settings(url), args.n, args.seed)))
    report("in-process", asyncio.run(measure(settings(None), args.n, args.seed)))


if __name__ == "__main__":
    main()
