"""`uniserve bench service`: uniserve against the in-process limit, a naive service and real
serving frameworks (`--peers`) over the same model, index and encode + search, one run.

What it does, in order:
1. **Artifacts** (cached under `--work-dir`, keyed by the options): a model of the default
   architecture (2-layer transformer, dim 64, 50-event histories) over a synthetic catalogue of
   `--items` items in clusters of ~500 (item vectors: a Gaussian mixture, as a trained catalogue
   is), whose users have 1-3 interests (clusters) and draw their events from them; the user
   encoder is fitted for a few hundred steps so user vectors point at their interests, as a
   trained model's do (untrained, they point anywhere and make ANN search unrealistically hard).
   Then an index published by the real rebuild job (`build_and_publish`: build, tune search
   parameters to recall@10 >= 0.95 on user vectors of held-out histories, gate, publish).
2. **In-process limit**: the peers' encode + search (`peers.pipeline.Pipeline`) called directly
   in batches of `--batch` histories, no HTTP, on the same thread settings, the item-vector
   table held as the service holds it: histories/s, the fastest of three passes.
3. **The app without HTTP** (`app_ceiling`): uniserve's own app in this process, driven by
   direct ASGI calls with 16 retrieves in flight (closed loop, cache misses): every middleware,
   validation, cache, batcher, encoder, index and response, no HTTP server. What one uniserve
   process would serve if HTTP cost nothing; the gap to the in-process limit is the app's own
   Python per request, on this machine (BENCHMARKS.md, "Where one process's time goes").
4. **Load ladder** against the real uniserve (`uniserve serve`, one worker process unless
   `--workers`), pushed to its knee (`load.find_knee`): from 50 req/s up by x1.5 (`--quick`:
   x2) until a step is not sustained (p99 over 50 ms, over 0.1% of requests refused, or any
   error), then bisected between the last good and first bad rate; `--rates` runs a fixed
   ladder instead. The load is open-loop: request i is due at start + i / rate and its latency
   counts from then, so queueing in the client or the server is never hidden. Every request
   carries a fresh 50-event history (a cache miss); after each step the client waits until a
   lone request is answered within the bound again (`load.drain`), so a backlog is not carried
   into the next step.
5. **Overload**: twice uniserve's best sustainable rate, then half of it (recovery); what the
   answers were (429s and their latency, timeouts), p99, and the server's RSS before and after.
6. **Cache hits**: the same requests repeated (after one warming pass) at the best rate.
7. **Peers**, one after the other, each through steps 4 and 5 with the same client, the same
   histories in the same order (`BodyStream.again`) and the same thread settings: the **naive
   service** (`peers/naive.py`: a sync FastAPI endpoint, one encode + search per request,
   stdlib JSON, the way most teams first write it; `--skip-naive` leaves it out) and, with
   `--peers all` (or a list), **PyTriton** (Triton's dynamic batcher), **Ray Serve**
   (`@serve.batch`) and **LitServe** (its `max_batch_size` / `batch_timeout`), each written as
   its documentation recommends for dynamic batching (`peers/*.py` cite the pages) and
   given the same largest batch (`--batch`), batch wait (`--peer-wait-ms`) and number of model
   processes / replicas / instances (`--peer-workers`, default one per core). They all call
   `Pipeline.encode_and_search`, so only the serving layer differs. A peer that cannot be
   imported or started is reported with its exact error and the run goes on. Latencies are
   compared at one common offered rate (`common_rate`: the highest every service ran and
   sustained); `--json` writes them under `peers`, and a PNG of p50 / p99 against offered load
   for every service goes beside it (`--png`).

The client runs in this process (asyncio on uvloop when it is installed, as `uvicorn[standard]`
installs it; raw HTTP/1.1 keep-alive connections: an HTTP library's per-request overhead would
cap the load below what the server can take); the servers run in subprocesses. On a small
machine they share the cores, so absolute numbers are lower bounds of what a dedicated server
does, and the cheaper the client the more of the cores the server under test gets; the
comparison is on equal terms (the same client for every service). Triton's requests are KServe
v2 JSON (its own protocol), made from the same bodies before each step, not while it is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from service.bench.artifacts import HISTORY_LEN, BodyStream, prepare_artifacts
from service.bench.load import (
    P99_BOUND_MS,
    KneeSearch,
    StepResult,
    best_rate,
    cache_hits,
    find_knee,
    ladder,
    overload,
    run_load,
)
from service.bench.peers import BATCHING_PEERS, PEERS, PeerOptions
from service.bench.peers.pipeline import Pipeline, history_of
from service.bench.servers import Server, redis_server, server


# ------------------------------------------------------------------------------ in-process
def inprocess_limit(
    data_dir: Path, bodies: Sequence[bytes], batch: int, threads: int, passes: int = 3
) -> dict[str, float]:
    """Histories/s of the peers' `Pipeline` (encode, then search) called directly in batches (no
    HTTP, no JSON): the fastest of `passes` passes over `bodies`, so a slow moment of a shared
    machine does not lower the limit the service is measured against."""
    pipeline = Pipeline.load(data_dir, threads)
    histories = [history_of(json.loads(body)["events"]) for body in bodies]
    pipeline.encode(histories[:batch])  # warm-up
    best: dict[str, float] = {}
    for _ in range(passes):
        encode = search = 0.0
        done = 0
        started = time.perf_counter()
        for lo in range(0, len(histories), batch):
            t0 = time.perf_counter()
            vectors = pipeline.encode(histories[lo : lo + batch])
            t1 = time.perf_counter()
            pipeline.search(vectors, 10)
            search += time.perf_counter() - t1
            encode += t1 - t0
            done += len(vectors)
        rps = done / (time.perf_counter() - started)
        if rps > best.get("rps", 0.0):
            best = {
                "rps": rps,
                "encode_ms_per_batch": 1000 * encode / -(-done // batch),
                "search_ms_per_batch": 1000 * search / -(-done // batch),
                "batch": batch,
                "passes": passes,
            }
    return best


APP_IN_FLIGHT = 16  # about what uniserve holds in flight near its knee (BENCHMARKS.md)


def app_ceiling(
    data_dir: Path,
    bodies: Sequence[bytes],
    batch: int,
    threads: int,
    in_flight: int = APP_IN_FLIGHT,
    passes: int = 2,
) -> dict[str, Any]:
    """Requests/s of uniserve's own app in this process with no HTTP: `create_app` over
    `data_dir` with the service's defaults, driven by direct ASGI calls (every middleware, the
    fast lane's parsing and validation, cache, batchers, encoder, index, response JSON), closed
    loop with `in_flight` requests at a time; `bodies` split into `passes` passes of distinct
    bodies (all cache misses), the fastest pass kept. What one uniserve process would serve if
    HTTP cost nothing: below the in-process limit by what the app's own Python costs per
    request, the part of uniserve's time no serving layer can take away."""
    from service.api.app import create_app
    from service.settings import Settings

    settings = Settings(
        data_dir=data_dir,
        bootstrap=False,
        index_poll_seconds=0,
        torch_threads=threads,
        faiss_threads=threads,
        batch_max_size=batch,
        admission="fixed",  # closed loop: never more than in_flight pending, nothing to shed
        max_pending_requests=in_flight,
    )
    app = create_app(settings)
    warm, bodies = bodies[0], bodies[1:]  # the warm-up's body is not sent again (a cache hit)
    size = len(bodies) // passes
    statuses: Counter[int] = Counter()

    async def call(body: bytes) -> int:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/v1/retrieve",
            "raw_path": b"/v1/retrieve", "query_string": b"", "root_path": "",
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0),
        }  # fmt: skip
        answer = {"status": 0}
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # no disconnect while the app answers
            raise AssertionError

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]

        await app(scope, receive, send)
        return answer["status"]

    async def one_pass(chunk: Sequence[bytes]) -> float:
        queue = iter(chunk)

        async def worker() -> None:
            for body in queue:
                statuses[await call(body)] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return len(chunk) / (time.perf_counter() - started)

    async def run() -> float:
        async with app.router.lifespan_context(app):
            await call(warm)  # warm-up: the first batch and search
            return max([await one_pass(bodies[i * size : (i + 1) * size]) for i in range(passes)])

    rps = run_load(run())
    return {
        "rps": rps,
        "in_flight": in_flight,
        "requests": size * passes,
        "statuses": {str(k): n for k, n in sorted(statuses.items())},
    }


# ------------------------------------------------------------------------------ peers
def parse_peers(value: str) -> list[str]:
    """`--peers`: "all", "none", or a comma-separated list of BATCHING_PEERS names."""
    if value in ("", "none"):
        return []
    if value == "all":
        return list(BATCHING_PEERS)
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in BATCHING_PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown peer(s) {unknown}: choose from {', '.join(BATCHING_PEERS)}, or all / none"
        )
    return names


def summarise(steps: Sequence[StepResult]) -> dict[str, Any]:
    """A service's knee search: its best sustained rate there, and its errors over every step."""
    best = best_rate(steps)
    return {
        "max_rps_at_p99_50ms": round(best.achieved_rps, 1) if best else 0.0,
        "p50_ms_at_max": round(best.p50_ms, 2) if best else None,
        "p99_ms_at_max": round(best.p99_ms, 2) if best else None,
        "errors": sum(s.errors for s in steps),
        "steps": [asdict(s) for s in steps],
    }


def common_rate(runs: dict[str, list[StepResult]]) -> float | None:
    """The offered rate at which the services' latencies are compared: the highest one every
    service ran and sustained (the climb's rungs are the same for all), else the lowest one
    every service ran; None when they share none."""
    shared = set.intersection(*({s.target_rps for s in steps} for steps in runs.values()))
    if not shared:
        return None
    held = [
        rate
        for rate in shared
        if all(any(s.target_rps == rate and s.sustained() for s in st) for st in runs.values())
    ]
    return max(held) if held else min(shared)


def at_rate(steps: Sequence[StepResult], rate: float | None) -> dict[str, float | None]:
    step = next((s for s in steps if s.target_rps == rate), None)
    if step is None:
        return {"p50_ms": None, "p99_ms": None}
    return {"p50_ms": round(step.p50_ms, 2), "p99_ms": round(step.p99_ms, 2)}


def plot_latency(result: dict[str, Any], path: Path) -> bool:
    """p50 (dashed) and p99 (solid) against offered load for every service measured, its 2x
    overload step included; False when matplotlib is not installed."""
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    series = {"uniserve": (result["service_steps"], result["overload"]["step"])}
    for name, peer in result["peers"].items():
        if "steps" in peer:
            series[name] = (peer["steps"], peer["overload"]["step"])
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (steps, hot) in series.items():
        steps = sorted(steps, key=lambda s: s["target_rps"])
        rates = [s["target_rps"] for s in steps]
        (line,) = ax.plot(rates, [s["p99_ms"] for s in steps], marker="o", label=f"{name} p99")
        color = line.get_color()
        ax.plot(rates, [s["p50_ms"] for s in steps], ls="--", color=color, alpha=0.6)
        ax.plot([hot["target_rps"]], [hot["p99_ms"]], marker="x", ms=9, color=color)
    ax.axhline(P99_BOUND_MS, color="grey", lw=0.8, ls=":")
    ax.set(
        xlabel="offered load (req/s)",
        ylabel="latency from scheduled send (ms)",
        yscale="log",
        title=f"{result['items']:,} items, {result['index_type']}, {result['threads']} "
        "thread(s) per process\ndashed: p50; x: p99 at 2x the service's best rate",
    )
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="uniserve bench service",
        description="Throughput at a p99 bound of uniserve vs the in-process limit, uniserve's "
        "own app without HTTP, a naive service and, with --peers, PyTriton, Ray Serve and "
        "LitServe serving the same model, index and encode + search (module docstring of "
        "service/bench/service.py).",
    )
    p.add_argument("--items", type=int, default=1_000_000, help="catalogue size (default 1M)")
    p.add_argument("--index-type", default="HNSW32", help="faiss factory string (HNSW32)")
    p.add_argument(
        "--rates",
        default=None,
        help="comma-separated request rates per second, run in turn (default: find each "
        "service's knee: from 50/s up by x1.5 (--quick: x2) until p99 passes 50 ms or a request "
        "is refused or fails, then 4 (--quick: 3) bisections between the last good and first "
        "bad rate)",
    )
    p.add_argument("--seconds", type=float, default=None, help="per rate (default 10; quick 4)")
    p.add_argument("--threads", type=int, default=1, help="torch and FAISS threads per process")
    p.add_argument("--batch", type=int, default=64, help="in-process batch and max batch size")
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path(".uniserve/bench"),
        help="where the benchmark artifacts are kept between runs (default .uniserve/bench)",
    )
    p.add_argument(
        "--quick", action="store_true", help="50k items, 4 s steps, a coarser knee search (~3 min)"
    )
    p.add_argument(
        "--json", type=Path, default=None, help="write the results here as JSON (and, beside "
        "it, the latency-vs-offered-load PNG unless --png says where)",
    )  # fmt: skip
    p.add_argument("--png", type=Path, default=None, help="latency vs offered load, every service")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-naive", action="store_true", help="no naive service")
    p.add_argument(
        "--peers",
        type=parse_peers,
        default=[],
        help="serving frameworks to run beside uniserve, over the same pipeline: 'all', or any "
        f"of {','.join(BATCHING_PEERS)} (default none). Each is an optional install: "
        "pip install -e '.[bench]' (ray, litserve); scripts/setup_triton_venv.sh (PyTriton, "
        "own venv: it needs numpy<2). One that cannot be imported or started is reported "
        "with its error and the run goes on.",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="uniserve worker processes (UNISERVE_WORKERS; default 1: on 2 cores a second "
        "worker halved the batches and lowered the knee, BENCHMARKS.md); more than one runs "
        "beside a redis-server this run starts (their result cache)",
    )
    p.add_argument(
        "--peer-workers",
        type=int,
        default=None,
        help="model processes / replicas / instances per peer (default: one per core, "
        "cores // --threads)",
    )
    p.add_argument(
        "--peer-wait-ms",
        type=float,
        default=5.0,
        help="how long a peer's batcher waits for more requests after a batch's first (Ray "
        "Serve's batch_wait_timeout_s, LitServe's batch_timeout, Triton's "
        "max_queue_delay_microseconds; default 5 ms)",
    )
    p.add_argument(
        "--triton-python",
        default=None,
        help="interpreter with nvidia-pytriton for the triton peer (default .venv-triton/bin/"
        "python when scripts/setup_triton_venv.sh made it, else this one)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.items = 50_000 if args.items == 1_000_000 else args.items
    rates = [float(r) for r in args.rates.split(",")] if args.rates else None
    seconds = args.seconds or (4.0 if args.quick else 10.0)
    workers = args.peer_workers or max(1, (os.cpu_count() or 1) // args.threads)
    options = PeerOptions(args.threads, args.batch, args.peer_wait_ms, workers)
    uniserve_workers = args.workers or 1
    started = time.perf_counter()
    data_dir = prepare_artifacts(
        args.work_dir, args.items, index_type=args.index_type, seed=args.seed
    )
    logs = args.work_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # every service gets the same histories in the same order (`again`); within a service every
    # phase takes bodies no earlier phase sent, so only uniserve's cache-hit phase hits a cache
    source = BodyStream(args.items, args.seed)

    import torch

    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    limit = inprocess_limit(data_dir, source.again().take(64 * 40), args.batch, args.threads)
    print(
        f"[in-process] {limit['rps']:.0f} histories/s in batches of {args.batch} "
        f"(encode {limit['encode_ms_per_batch']:.1f} ms + search "
        f"{limit['search_ms_per_batch']:.1f} ms per batch)",
        flush=True,
    )
    app = app_ceiling(data_dir, source.again().take(2 * 2000 + 1), args.batch, args.threads)
    print(
        f"[in-process app] {app['rps']:.0f} req/s through uniserve's app without HTTP "
        f"({app['in_flight']} in flight, {100 * app['rps'] / limit['rps']:.0f}% of the limit; "
        f"answers {app['statuses']})",
        flush=True,
    )
    # no HTTP service of the pipeline outruns it: twice the in-process limit bounds the climb
    search = KneeSearch(
        growth=2.0 if args.quick else 1.5, refine=3 if args.quick else 4, cap=2 * limit["rps"]
    )

    def push(srv: Server, label: str, stream: BodyStream) -> list[StepResult]:
        if rates is not None:
            return run_load(ladder(srv, stream, rates, seconds, label))
        return run_load(find_knee(srv, stream, seconds, label, search))

    env = {"UNISERVE_BATCH_MAX_SIZE": str(args.batch), "UNISERVE_WORKERS": str(uniserve_workers)}
    result: dict[str, Any] = {
        "items": args.items,
        "index_type": args.index_type,
        "threads": args.threads,
        "history_len": HISTORY_LEN,
        "p99_bound_ms": P99_BOUND_MS,
        "inprocess_limit_rps": round(limit["rps"], 1),
        "inprocess": limit,
        "inprocess_app_rps": round(app["rps"], 1),
        "inprocess_app": app,
        "ladder": "fixed" if rates is not None else asdict(search),
        "peer_options": asdict(options),
        "uniserve_workers": uniserve_workers,
    }
    runs: dict[str, list[StepResult]] = {}
    stream = source.again()
    with contextlib.ExitStack() as stack:
        if uniserve_workers > 1:  # several workers need Redis (the Settings say why)
            env["UNISERVE_REDIS_URL"] = stack.enter_context(redis_server(logs / "redis.log"))
        srv = stack.enter_context(
            server("uniserve", data_dir, args.threads, env, log=logs / "uniserve.log")
        )
        steps = runs["uniserve"] = push(srv, "uniserve", stream)
        best = best_rate(steps)
        result["service_steps"] = [asdict(s) for s in steps]
        result["service_max_rps_at_p99_50ms"] = round(best.achieved_rps, 1) if best else 0.0
        result["service_p50_ms"] = round(best.p50_ms, 2) if best else None
        result["service_p99_ms"] = round(best.p99_ms, 2) if best else None
        result["errors"] = sum(s.errors for s in steps)
        sustainable = best.target_rps if best else steps[0].target_rps
        result["overload"] = run_load(overload(srv, stream, sustainable, seconds))
        result["cache_hit"] = run_load(cache_hits(srv, stream, sustainable, seconds))
    peers: dict[str, dict[str, Any]] = {}
    for name in ([] if args.skip_naive else ["naive"]) + args.peers:
        python = args.triton_python if name == "triton" else None
        peers[name] = run_peer(name, data_dir, options, python, logs, push, source, seconds)
        if "steps" in peers[name]:
            runs[name] = [StepResult(**s) for s in peers[name]["steps"]]
    if "naive" in peers and "steps" in peers["naive"]:  # the keys of runs before the peers
        result["naive_steps"] = peers["naive"]["steps"]
        result["naive_max_rps_at_p99_50ms"] = peers["naive"]["max_rps_at_p99_50ms"]
    rate = common_rate(runs)
    result["common_rate_rps"] = rate
    result["service_at_common_rate"] = at_rate(runs["uniserve"], rate)
    for name, peer in peers.items():
        if name in runs:
            peer.update(at_rate(runs[name], rate))
    result["peers"] = peers
    result["seconds"] = round(time.perf_counter() - started, 1)
    print_summary(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    png = args.png or (args.json.with_suffix(".png") if args.json else None)
    if png is not None:
        drawn = plot_latency(result, png)
        print(f"  latency vs offered load: {png}" if drawn else "  (no PNG: matplotlib missing)")
    return 0


def run_peer(
    name: str,
    data_dir: Path,
    options: PeerOptions,
    python: str | None,
    logs: Path,
    push: Callable[[Server, str, BodyStream], list[StepResult]],
    source: BodyStream,
    seconds: float,
) -> dict[str, Any]:
    """One peer's knee search and overload on the histories every service gets; a peer that
    cannot be imported or started, or fails on the way, is `{"error": ...}` (its exact error,
    its server log's tail) and the run goes on."""
    peer = PEERS[name]
    config = {**asdict(options), "doc": peer.doc, "python": python or peer.python()}
    if name == "naive":
        config = {"threads": options.threads, "doc": peer.doc}  # no batching, one process
    missing = peer.unavailable(python)
    if missing is not None:
        print(f"[{name}] not installed: {missing}", flush=True)
        return {"error": f"not installed: {missing}", "config": config}
    stream = source.again()
    try:
        with server(
            name, data_dir, options.threads, {}, options=options, python=python,
            log=logs / f"{name}.log",
        ) as srv:  # fmt: skip
            steps = push(srv, name, stream)
            best = best_rate(steps)
            sustainable = best.target_rps if best else steps[0].target_rps
            return {
                **summarise(steps),
                "overload": run_load(overload(srv, stream, sustainable, seconds)),
                "config": config,
            }
    except Exception as exc:  # any failure of one peer is its result; the others still run
        print(f"[{name}] failed: {exc}", flush=True)
        return {"error": f"{type(exc).__name__}: {exc}", "config": config}


def print_summary(r: dict[str, Any]) -> None:
    limit = r["inprocess_limit_rps"]
    svc = r["service_max_rps_at_p99_50ms"]
    print("\nsummary")
    print(f"  items {r['items']:,} ({r['index_type']}), {r['threads']} thread(s) per process")
    print(f"  in-process limit            {limit:8.1f} req/s")
    app = r["inprocess_app_rps"]
    print(
        f"  uniserve's app, no HTTP     {app:8.1f} req/s  ({100 * app / limit:.0f}% of the limit)"
    )
    print(
        f"  uniserve max at p99<=50ms   {svc:8.1f} req/s  ({100 * svc / limit:.0f}% of the limit)"
    )
    if "naive_max_rps_at_p99_50ms" in r:
        naive = r["naive_max_rps_at_p99_50ms"]
        ratio = svc / naive if naive else float("inf")
        print(f"  naive max at p99<=50ms      {naive:8.1f} req/s  (uniserve {ratio:.1f}x)")
    print(f"  uniserve p50 / p99 there    {r['service_p50_ms']} / {r['service_p99_ms']} ms")
    o = r["overload"]
    print(
        f"  overload at {o['rate']:.0f}/s: 429 p99 {o['reject_p99_ms']} ms, RSS "
        f"{o['rss_mb_before']} -> {o['rss_mb_after']} MB, recovered: {o['recovered']}"
    )
    print(f"  errors {r['errors']}, wall {r['seconds']} s")
    rate = r["common_rate_rps"]
    common = f"at {rate:.0f}/s" if rate is not None else "(no common rate)"
    print(f"\n  {'service':9s} {'max req/s':>9s}  {'p50 / p99 ms ' + common:>24s} {'errors':>6s}  "
          "at 2x its best: outcomes; p99; RSS before -> after; recovered")  # fmt: skip
    rows = {"uniserve": {**r["service_at_common_rate"], "max_rps_at_p99_50ms": svc,
                         "errors": r["errors"], "overload": o}}  # fmt: skip
    for name, row in {**rows, **r["peers"]}.items():
        if "error" in row:
            print(f"  {name:9s} {row['error'][-400:]}")
            continue
        ov = row["overload"]
        outcomes = ", ".join(f"{k} {n}" for k, n in ov["statuses"].items())
        latency = f"{row['p50_ms']} / {row['p99_ms']}"
        print(
            f"  {name:9s} {row['max_rps_at_p99_50ms']:9.1f}  {latency:>24s} {row['errors']:6d}  "
            f"{ov['rate']:.0f}/s: {outcomes}; {ov['p99_ms']} ms; "
            f"{ov['rss_mb_before']} -> {ov['rss_mb_after']} MB; {ov['recovered']}"
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
