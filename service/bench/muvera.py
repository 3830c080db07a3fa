"""MUVERA benchmark: FDE retrieval + exact re-ranking against brute-force Chamfer.

    python scripts/bench_muvera.py --model DIR --data kuairand [--items N] [--queries Q]

Multi-vectors come from a trained uniserve model: items are the catalogue's facet vectors
(`Embedder.item_multi_vectors`: served vector, id part, one part per metadata field), queries
the interest vectors (`Embedder.user_multi_vectors`) of validation users of `--data`. The exact
reference is the brute-force Chamfer top-10 over the whole (or `--items`-subsampled) catalogue
(`index.chamfer.chamfer_topk`). For each FDE config it records:

- encode throughput (documents and queries, point clouds/s, on the threads numpy/BLAS use);
- recall@10 against the exact Chamfer top-10 after re-ranking the top-C FDE candidates by exact
  Chamfer, for each C of `--candidates` (candidates from exhaustive FDE inner products, so this
  measures the encoding, not an ANN index);
- with `--latency-config`, one config built as the service builds it (`build_multi_index` with
  `--fde-index`, e.g. IVF) and searched one query per call through `MultiIndex.search` (query
  FDE, FAISS search, exact re-ranking) for each of `--fde-params`, against brute-force Chamfer
  over the whole catalogue one query per call (interleaved query by query, so both see the same
  machine load): mean / p50 / p99 latency and recall@10.

Writes `results.json` and `table.md` into `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from index.chamfer import chamfer_pairs, chamfer_topk
from index.fde import FDEConfig, encode_documents, encode_queries
from index.multi import build_multi_index
from index.recall import overlap_recall

K = 10
DEFAULT_CANDIDATES = (10, 20, 50, 100, 200, 500)
# name: FDE config (the model dimension D is 64 for the shipped configs): R reps x 2^k x dp
PRESETS: dict[str, FDEConfig] = {
    "r8-k1-ams8": FDEConfig(8, 1, "ams", 8, seed=0),  # 128
    "r8-k2-ams8": FDEConfig(8, 2, "ams", 8, seed=0),  # 256
    "r16-k2-ams8": FDEConfig(16, 2, "ams", 8, seed=0),  # 512
    "r8-k2-ams16": FDEConfig(8, 2, "ams", 16, seed=0),  # 512
    "r32-k2-ams8": FDEConfig(32, 2, "ams", 8, seed=0),  # 1024
    "r16-k2-ams16": FDEConfig(16, 2, "ams", 16, seed=0),  # 1024
    "r4-k2-id": FDEConfig(4, 2, seed=0),  # 4 x 4 x 64 = 1024
    "r8-k3-ams8": FDEConfig(8, 3, "ams", 8, seed=0),  # 512
    "r16-k3-ams8": FDEConfig(16, 3, "ams", 8, seed=0),  # 1024
    "r8-k3-id": FDEConfig(8, 3, seed=0),  # 8 x 8 x 64 = 4096
    "r16-k3-id-cs1024": FDEConfig(16, 3, final_projection_dimension=1024, seed=0),  # 1024
}
DEFAULT_PRESETS = ("r8-k1-ams8", "r8-k2-ams8", "r16-k2-ams8", "r32-k2-ams8", "r16-k3-ams8")


def rerank_recall(
    fde_scores: np.ndarray,
    queries: np.ndarray,
    qmask: np.ndarray,
    docs: np.ndarray,
    dmask: np.ndarray,
    exact_rows: np.ndarray,
    candidates: Sequence[int],
) -> dict[int, float]:
    """recall@10 after re-ranking the top-C FDE rows by exact Chamfer, per C."""
    top = np.argsort(-fde_scores, axis=1)[:, : max(candidates)]  # (Q, C_max)
    out = {}
    for c in candidates:
        cand = top[:, :c]
        s = chamfer_pairs(queries, docs[cand], qmask, dmask[cand])  # (Q, c)
        best = np.take_along_axis(cand, np.argsort(-s, axis=1, kind="stable")[:, :K], axis=1)
        out[c] = overlap_recall(best, exact_rows)
    return out


def latency_stats(ms: np.ndarray) -> dict[str, float]:
    return {
        "mean_ms": round(float(ms.mean()), 3),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from models.data import load_corpus
    from models.embedder import Embedder

    emb = Embedder.from_dir(Path(args.model))
    corpus = load_corpus(args.data)
    t0 = time.perf_counter()
    docs, dmask = emb.item_multi_vectors()  # (N, F, D), (N, F)
    rng = np.random.default_rng(args.seed)
    if args.items and args.items < len(docs):
        keep = np.sort(rng.choice(len(docs), size=args.items, replace=False))
        docs, dmask = docs[keep], dmask[keep]
    n = len(docs)
    pick = rng.choice(len(corpus.valid), size=min(args.queries, len(corpus.valid)), replace=False)
    histories = [corpus.valid.history.sequence(int(i)) for i in np.sort(pick)]
    queries, qmask = emb.user_multi_vectors(histories, args.interests)  # (Q, K, D), (Q, K)
    print(f"{n} items x {docs.shape[1]} facets, {len(queries)} users x {args.interests} interests")
    print(f"multi-vectors in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    _, exact_rows = chamfer_topk(queries, docs, K, qmask, dmask)
    brute_s = time.perf_counter() - t0
    print(f"exact Chamfer top-{K}: {brute_s:.1f}s ({1000 * brute_s / len(queries):.1f} ms/query)")
    result: dict[str, Any] = {
        "items": n,
        "facets": int(docs.shape[1]),
        "dim": int(docs.shape[2]),
        "queries": len(queries),
        "interests": args.interests,
        "brute_force_batched_ms_per_query": round(1000 * brute_s / len(queries), 3),
        "configs": [],
    }
    for name in args.presets:
        cfg = PRESETS[name]
        t0 = time.perf_counter()
        fd = encode_documents(docs, cfg, mask=dmask)  # (N, fde_dim)
        enc_docs = time.perf_counter() - t0
        t0 = time.perf_counter()
        fq = encode_queries(queries, cfg, mask=qmask)
        enc_q = time.perf_counter() - t0
        scores = np.empty((len(queries), n), np.float32)
        for lo in range(0, n, 65536):
            scores[:, lo : lo + 65536] = fq @ fd[lo : lo + 65536].T
        del fd
        rec = rerank_recall(scores, queries, qmask, docs, dmask, exact_rows, args.candidates)
        row = {
            "config": name,
            "fde_dim": cfg.output_dim(docs.shape[2]),
            "doc_clouds_per_s": round(n / enc_docs),
            "query_clouds_per_s": round(len(queries) / enc_q),
            "recall@10": {str(c): round(r, 4) for c, r in rec.items()},
        }
        print(json.dumps(row))
        result["configs"].append(row)
    if args.latency_config:
        cfg = PRESETS[args.latency_config]
        ids = np.array([str(i) for i in range(n)], dtype=object)
        t0 = time.perf_counter()
        multi = build_multi_index(
            docs, dmask, ids, config=cfg, index_type=args.fde_index, seed=args.seed,
            train_size=args.train_size,
        )  # fmt: skip
        build_s = time.perf_counter() - t0
        nq = min(args.latency_queries, len(queries))
        settings = args.fde_params or [{}]
        got = np.empty((len(settings), nq, K), np.int64)
        fde_ms = np.empty((len(settings), nq))
        brute_ms = np.empty(nq)
        for i in range(nq):  # interleaved, so both sides see the same machine load
            one, one_mask = queries[i : i + 1], qmask[i : i + 1]
            for j, params in enumerate(settings):
                t = time.perf_counter()
                _, rows = multi.search(
                    one, K, query_mask=one_mask, candidates=args.rerank, params=params or None
                )
                fde_ms[j, i] = 1000 * (time.perf_counter() - t)
                got[j, i] = rows[0]
            t = time.perf_counter()
            chamfer_topk(one, docs, K, one_mask, dmask)
            brute_ms[i] = 1000 * (time.perf_counter() - t)
        brute_lat = latency_stats(brute_ms)
        result["brute_force_one_query"] = brute_lat
        print(json.dumps({"brute_force_one_query": brute_lat}))
        result["end_to_end"] = []
        for j, params in enumerate(settings):
            fde_lat = latency_stats(fde_ms[j])
            e2e = {
                "config": args.latency_config,
                "fde_index": args.fde_index,
                "fde_params": params or dict(multi.fde_index.search_params),
                "candidates": args.rerank,
                "build_s": round(build_s, 1),
                "queries": nq,
                "muvera": fde_lat,
                "speedup_mean": round(brute_lat["mean_ms"] / fde_lat["mean_ms"], 1),
                "recall@10": round(overlap_recall(got[j], exact_rows[:nq]), 4),
            }
            print(json.dumps(e2e))
            result["end_to_end"].append(e2e)
    return result


def table(result: dict[str, Any], candidates: Sequence[int]) -> str:
    lines = [
        f"{result['items']} items x {result['facets']} facets (dim {result['dim']}), "
        f"{result['queries']} users x {result['interests']} interests",
        "",
        "| FDE config | FDE dim | docs/s | queries/s | "
        + " | ".join(f"R@10 C={c}" for c in candidates)
        + " |",
        "|---|---|---|---|" + "---|" * len(candidates),
    ]
    for row in result["configs"]:
        lines.append(
            f"| {row['config']} | {row['fde_dim']} | {row['doc_clouds_per_s']} | "
            f"{row['query_clouds_per_s']} | "
            + " | ".join(f"{row['recall@10'][str(c)]:.3f}" for c in candidates)
            + " |"
        )
    rows = result.get("end_to_end", [])
    if rows:
        brute = result["brute_force_one_query"]
        first = rows[0]
        lines += [
            "",
            f"End to end, one query per call ({first['queries']} queries), {first['config']} "
            f"FDEs in {first['fde_index']} (built in {first['build_s']} s), "
            f"{first['candidates']} candidates re-ranked by exact Chamfer; brute-force Chamfer "
            f"over the catalogue: mean {brute['mean_ms']} ms, p50 {brute['p50_ms']}, "
            f"p99 {brute['p99_ms']}.",
            "",
            "| FDE search params | mean ms | p50 ms | p99 ms | speed-up (mean) | R@10 |",
            "|---|---|---|---|---|---|",
        ]
        for e in rows:
            m = e["muvera"]
            lines.append(
                f"| {e['fde_params']} | {m['mean_ms']} | {m['p50_ms']} | {m['p99_ms']} | "
                f"{e['speedup_mean']}x | {e['recall@10']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def _params(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        out[name.strip()] = int(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_muvera", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="trained model directory")
    p.add_argument("--data", default="kuairand", help="corpus whose validation users query")
    p.add_argument("--items", type=int, default=0, help="subsample the catalogue (0: all)")
    p.add_argument("--queries", type=int, default=200, help="users (default 200)")
    p.add_argument("--interests", type=int, default=4, help="interest vectors per user")
    p.add_argument(
        "--presets", nargs="*", default=list(DEFAULT_PRESETS), choices=sorted(PRESETS),
        help="FDE configs to measure",
    )  # fmt: skip
    p.add_argument(
        "--candidates", type=int, nargs="+", default=list(DEFAULT_CANDIDATES),
        help="re-ranked candidate counts",
    )  # fmt: skip
    p.add_argument("--latency-config", default=None, choices=sorted(PRESETS))
    p.add_argument("--fde-index", default="IVF1024,Flat", help="faiss type of the FDE index")
    p.add_argument(
        "--fde-params", type=_params, nargs="*", default=[],
        help="per-call FDE index parameters to time, e.g. nprobe=16 nprobe=64 (default: the "
        "index's defaults)",
    )  # fmt: skip
    p.add_argument("--train-size", type=int, default=None, help="IVF training sample")
    p.add_argument("--rerank", type=int, default=200, help="candidates in the latency run")
    p.add_argument("--latency-queries", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-muvera", help="output directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = datetime.now(UTC)
    result = run(args)
    result["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    result["started"] = started.isoformat(timespec="seconds")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    text = table(result, args.candidates)
    (out / "table.md").write_text(text)
    print(text)
    return 0
