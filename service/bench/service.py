"""`uniserve bench service`: uniserve against the in-process limit and a naive service, one run.

What it does, in order:
1. **Artifacts** (cached under `--work-dir`, keyed by the options): a model of the default
   architecture (2-layer transformer, dim 64, 50-event histories) over a synthetic catalogue of
   `--items` items in clusters of ~500 (item vectors: a Gaussian mixture, as a trained catalogue
   is), whose users have 1-3 interests (clusters) and draw their events from them; the user
   encoder is fitted for a few hundred steps so user vectors point at their interests, as a
   trained model's do (untrained, they point anywhere and make ANN search unrealistically hard).
   Then an index published by the real rebuild job (`build_and_publish`: build, tune search
   parameters to recall@10 >= 0.95 on user vectors of held-out histories, gate, publish).
2. **In-process limit**: the same encode + search pipeline called directly in batches of
   `--batch` histories, no HTTP, on the same thread settings, the item-vector table held as the
   service holds it: histories/s, the fastest of three passes.
3. **Load ladder** against the real uniserve (`uniserve serve`, one uvicorn worker) and then
   against a **naive service** (`service.bench.servers.naive_app`: a sync FastAPI endpoint
   doing its own encoder forward and FAISS search per request, stdlib JSON, the way most teams
   first write it), same model, index, thread settings and kind of requests. Each service is
   pushed to its own knee (`load.find_knee`): from 50 req/s up by x1.5 (`--quick`: x2) until a
   step is not sustained (p99 over 50 ms, over 0.1% of requests refused, or any error), then
   bisected between the last good and first bad rate; `--rates` runs a fixed ladder instead.
   The load is open-loop: request i is due at start + i / rate and its latency counts from
   then, so queueing in the client or the server is never hidden. Every request carries a
   fresh 50-event history (a cache miss).
4. **Overload**: twice uniserve's best sustainable rate, then half of it (recovery); the
   latency of the 429s and the server's RSS before and after.
5. **Cache hits**: the same requests repeated (after one warming pass) at the best rate.

The client runs in this process (asyncio on uvloop when it is installed, as `uvicorn[standard]`
installs it; raw HTTP/1.1 keep-alive connections: an HTTP library's per-request overhead would
cap the load below what the server can take); the servers run in subprocesses. On a small
machine they share the cores, so absolute numbers are lower bounds of what a dedicated server
does, and the cheaper the client the more of the cores the server under test gets; the
comparison is on equal terms (the same client for both services).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
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
from service.bench.servers import server


# ------------------------------------------------------------------------------ in-process
def inprocess_limit(
    data_dir: Path, bodies: Sequence[bytes], batch: int, passes: int = 3
) -> dict[str, float]:
    """Histories/s of encode + search called directly in batches (no HTTP, no JSON): the
    fastest of `passes` passes over `bodies`, so a slow moment of a shared machine does not
    lower the limit the service is measured against."""
    from index import current_version, open_version, verify_version
    from models.embedder import Embedder

    root = data_dir / "indexes"
    manifest = verify_version(root, current_version(root) or "")
    index = open_version(root, manifest)
    embedder = Embedder.from_dir(data_dir / "model")
    embedder.item_vectors()  # held, as the service's engine holds it (history items read from it)
    histories = []
    for body in bodies:
        events = json.loads(body)["events"]
        histories.append(([e["item_id"] for e in events], [e["surface"] for e in events]))
    embedder.user_vectors(histories[:batch], batch_size=batch)  # warm-up
    best: dict[str, float] = {}
    for _ in range(passes):
        encode = search = 0.0
        done = 0
        started = time.perf_counter()
        for lo in range(0, len(histories), batch):
            t0 = time.perf_counter()
            vectors = embedder.user_vectors(histories[lo : lo + batch], batch_size=batch)
            t1 = time.perf_counter()
            index.search(vectors, 10)
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


# ------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="uniserve bench service",
        description="Throughput at a p99 bound of uniserve vs the in-process limit and a naive "
        "service, on one model and index (module docstring of service/bench/service.py).",
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
    p.add_argument("--threads", type=int, default=1, help="torch and FAISS threads per server")
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
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-naive", action="store_true", help="only uniserve (no comparison)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.items = 50_000 if args.items == 1_000_000 else args.items
    rates = [float(r) for r in args.rates.split(",")] if args.rates else None
    seconds = args.seconds or (4.0 if args.quick else 10.0)
    started = time.perf_counter()
    data_dir = prepare_artifacts(
        args.work_dir, args.items, index_type=args.index_type, seed=args.seed
    )
    # every phase takes bodies no earlier phase sent, so only the cache-hit phase hits the cache
    source = BodyStream(args.items, args.seed)

    import torch

    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    limit = inprocess_limit(data_dir, source.take(64 * 40), args.batch)
    print(
        f"[in-process] {limit['rps']:.0f} histories/s in batches of {args.batch} "
        f"(encode {limit['encode_ms_per_batch']:.1f} ms + search "
        f"{limit['search_ms_per_batch']:.1f} ms per batch)",
        flush=True,
    )
    # no HTTP service of the pipeline outruns it: twice the in-process limit bounds the climb
    search = KneeSearch(
        growth=2.0 if args.quick else 1.5, refine=3 if args.quick else 4, cap=2 * limit["rps"]
    )

    def push(port: int, label: str) -> list[StepResult]:
        if rates is not None:
            return run_load(ladder(port, source, rates, seconds, label))
        return run_load(find_knee(port, source, seconds, label, search))

    env = {"UNISERVE_BATCH_MAX_SIZE": str(args.batch)}
    result: dict[str, Any] = {
        "items": args.items,
        "index_type": args.index_type,
        "threads": args.threads,
        "history_len": HISTORY_LEN,
        "p99_bound_ms": P99_BOUND_MS,
        "inprocess_limit_rps": round(limit["rps"], 1),
        "inprocess": limit,
        "ladder": "fixed" if rates is not None else asdict(search),
    }
    with server("uniserve", data_dir, args.threads, env) as srv:
        steps = push(srv.port, "uniserve")
        best = best_rate(steps)
        result["service_steps"] = [asdict(s) for s in steps]
        result["service_max_rps_at_p99_50ms"] = round(best.achieved_rps, 1) if best else 0.0
        result["service_p50_ms"] = round(best.p50_ms, 2) if best else None
        result["service_p99_ms"] = round(best.p99_ms, 2) if best else None
        result["errors"] = sum(s.errors for s in steps)
        sustainable = best.target_rps if best else steps[0].target_rps
        result["overload"] = run_load(overload(srv, source, sustainable, seconds))
        result["cache_hit"] = run_load(cache_hits(srv.port, source, sustainable, seconds))
    if not args.skip_naive:
        with server("naive", data_dir, args.threads, {}) as srv:
            steps = push(srv.port, "naive")
            best = best_rate(steps)
            result["naive_steps"] = [asdict(s) for s in steps]
            result["naive_max_rps_at_p99_50ms"] = round(best.achieved_rps, 1) if best else 0.0
    result["seconds"] = round(time.perf_counter() - started, 1)
    print_summary(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def print_summary(r: dict[str, Any]) -> None:
    limit = r["inprocess_limit_rps"]
    svc = r["service_max_rps_at_p99_50ms"]
    print("\nsummary")
    print(f"  items {r['items']:,} ({r['index_type']}), {r['threads']} thread(s) per server")
    print(f"  in-process limit            {limit:8.1f} req/s")
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
