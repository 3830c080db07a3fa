"""What the served blend (`models.blend`) costs a retrieve: the search stage in process.

    python scripts/bench_blend.py --model runs/toys --data amazon-toys [--index-type HNSW32]

Publishes an index of the model's catalogue into a temporary root (the real rebuild job), then
times `search_batch`, the search batcher's work, on the test split's histories: each batch once
without the histories (the model's top-k alone) and once with them (the blended top-k:
re-scoring plus the recent items' neighbours), interleaved A/B over several rounds so machine
drift hits both alike. Reports the median microseconds per request of each, their ratio, how
many neighbours a history brings, and how often the blend changes the top-k.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def run(
    model_dir: Path,
    data: str,
    *,
    k: int = 10,
    users: int = 2000,
    batch: int = 32,
    rounds: int = 5,
    index_type: str = "HNSW32",
) -> dict[str, Any]:
    from index import load_current
    from models.data import load_corpus
    from models.embedder import Embedder
    from service.core.engine import Engine, SearchJob, search_batch
    from service.core.filters import NO_FILTERS
    from service.jobs.pipeline import build_and_publish

    embedder = Embedder.from_dir(model_dir)
    if embedder.blend is None:
        raise SystemExit(f"{model_dir} is served without a blend: nothing to measure")
    corpus = load_corpus(data)
    with tempfile.TemporaryDirectory() as tmp:
        build_and_publish(model_dir, Path(tmp), index_type=index_type, corpus=corpus)
        index, manifest = load_current(Path(tmp))
    engine = Engine(embedder, index, manifest)
    n = min(users, len(corpus.test))
    histories = [corpus.test.history.sequence(i) for i in range(n)]
    vectors = embedder.user_vectors(histories)  # (n, D)
    items = [[str(x) for x in ids] for ids, _ in histories]
    delta = engine.delta
    alone = [SearchJob(engine, vectors[i], k, NO_FILTERS, delta) for i in range(n)]
    blended = [SearchJob(engine, vectors[i], k, NO_FILTERS, delta, items[i]) for i in range(n)]

    def timed(jobs: Sequence[SearchJob]) -> tuple[float, list[list[str]]]:
        out: list[list[str]] = []
        started = time.perf_counter()
        for lo in range(0, len(jobs), batch):
            out += [ids for ids, _ in search_batch(list(jobs[lo : lo + batch]))]
        return (time.perf_counter() - started) / len(jobs) * 1e6, out

    timed(alone[:batch]), timed(blended[:batch])  # warm-up
    per_request: dict[str, list[float]] = {"alone": [], "blend": []}
    lists: dict[str, list[list[str]]] = {}
    for _ in range(rounds):
        for name, jobs in (("alone", alone), ("blend", blended)):
            micros, lists[name] = timed(jobs)
            per_request[name].append(micros)
    neighbours = [
        len(embedder.blend.sparse_bonus(embedder.vocab, ids)[0]) for ids in items[: min(n, 500)]
    ]
    changed = np.mean([a != b for a, b in zip(lists["alone"], lists["blend"], strict=True)])
    a, b = (statistics.median(per_request[name]) for name in ("alone", "blend"))
    return {
        "model": str(model_dir),
        "data": data,
        "index_type": index_type,
        "items": index.count,
        "requests": n,
        "batch": batch,
        "k": k,
        "rounds": rounds,
        "blend": embedder.blend.to_json(),
        "us_per_request": {"alone": round(a, 1), "blend": round(b, 1)},
        "us_per_request_rounds": {
            name: [round(x, 1) for x in v] for name, v in per_request.items()
        },
        "blend_over_alone": round(b / a, 3),
        "added_us_per_request": round(b - a, 1),
        "neighbours_per_history": {
            "median": float(np.median(neighbours)),
            "p99": float(np.percentile(neighbours, 99)),
        },
        "top_k_changed": round(float(changed), 4),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_blend", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a model directory trained with a blend")
    p.add_argument("--data", required=True, help="its dataset (the test histories are the load)")
    p.add_argument("--k", type=int, default=10, help="items per retrieve (10)")
    p.add_argument("--users", type=int, default=2000, help="test histories used (2000)")
    p.add_argument("--batch", type=int, default=32, help="requests per search batch (32)")
    p.add_argument("--rounds", type=int, default=5, help="A/B rounds (5)")
    p.add_argument("--index-type", default="HNSW32", help="FAISS index (HNSW32, the default)")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    result = run(
        Path(args.model),
        args.data,
        k=args.k,
        users=args.users,
        batch=args.batch,
        rounds=args.rounds,
        index_type=args.index_type,
    )
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
