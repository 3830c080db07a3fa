"""Ablation of the default model: many training configs on Amazon Sports and Toys, in parallel.

Each row trains with early stopping on the validation split (full-ranking NDCG@10, seen items
removed) and reports that best validation NDCG@10, the epoch kept, the test HR@10 / NDCG@10
(reported only: nothing is chosen on test), the wall time and the steps. Rows run in worker
processes sharing one GPU (or the CPU); results are appended to ``OUT/ablation.jsonl`` as each
run finishes, so a run stopped by a time limit still leaves data, and ``--resume`` runs only
what is missing. A run that fails is recorded with its error; the others go on.

    python scripts/ablation.py --data-root DIR --out OUT [--workers 14] [--device cuda]
        [--max-steps 5 (dry run)] [--only base,probe] [--seeds 0,1] [--base table|default]
        [--resume]

``--base table`` (the default) changes the settings of the GPU table's base row; ``--base
default`` those of today's default (`TrainConfig` as `uniserve train` runs it, post-norm).

``DIR`` holds the generic-format folders ``sports/`` and ``toys/``
(../shared/data/amazon-s3rec/). The table goes into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.train import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# one config per row: overrides of a base (fields of models.train.TrainConfig)
TABLE_BASE = dict(  # the base row of the GPU table in BENCHMARKS.md
    loss="full",
    dim=64,
    num_layers=2,
    dropout=0.3,
    norm="pre",  # the base row of the table (the default then); the race came later
    weight_decay=0.01,
    max_len=50,
    temperature=0.1,
    epochs=200,
    patience=5,
    select_on="full_seen_removed",
)
DEFAULT_BASE = dict(  # today's default: TrainConfig's own values, except that the norm race,
    norm="post",  # which only chooses the layout, is replaced by what it keeps on both sets
)
BASES = {"table": TABLE_BASE, "default": DEFAULT_BASE}
TODAY = dict(  # the default before this change: 3 epochs, mixed negatives, kept on sampled
    loss="sampled",
    in_batch_negatives=1024,
    num_negatives=1024,
    dropout=0.1,
    epochs=3,
    patience=None,
    select_on="sampled",
)
PROBE = dict(  # issue 18's first probe (its 30 epochs cut by patience here)
    loss="sampled",
    in_batch_negatives=0,
    num_negatives=256,
    dropout=0.3,
    num_layers=1,
)
ROWS: dict[str, dict[str, object]] = {
    "base": {},
    "base (full softmax)": {},  # the table base's name for its base row
    "today's default": TODAY,
    "probe": PROBE,
    "sampled uniform 256, log-q": dict(loss="sampled", in_batch_negatives=0, num_negatives=256),
    "sampled uniform 1024, log-q": dict(loss="sampled", in_batch_negatives=0, num_negatives=1024),
    "sampled uniform 4096, log-q": dict(loss="sampled", in_batch_negatives=0, num_negatives=4096),
    "in-batch only 1024": dict(loss="sampled", in_batch_negatives=1024, num_negatives=0),
    "mixed 1024 + 1024": dict(loss="sampled", in_batch_negatives=1024, num_negatives=1024),
    "no in-batch negatives": dict(in_batch_negatives=0),
    "post-norm": dict(norm="post"),
    "pre-norm": dict(norm="pre"),
    "full softmax": dict(loss="full"),
    "gated residual (LiGR)": dict(gated=True, norm="pre"),  # LiGR's gates sit on a pre-norm block
    "1 layer": dict(num_layers=1),
    "3 layers": dict(num_layers=3),
    "dropout 0.2": dict(dropout=0.2),
    "dropout 0.5": dict(dropout=0.5),
    "weight decay 0": dict(weight_decay=0.0),
    "weight decay 0.1": dict(weight_decay=0.1),
    "dim 128": dict(dim=128),
    "max_len 200": dict(max_len=200),
    "temperature 0.05": dict(temperature=0.05),
    "contrastive 0.1 (DuoRec)": dict(contrastive=0.1),
    "frequency filter (causal FMLP)": dict(filter=True),
    "future window 3": dict(future_window=3),
    "future window 5": dict(future_window=5),
    "future window 10": dict(future_window=10),
}
DATASETS = ("toys", "sports")

_CORPORA: dict[str, object] = {}


def _corpus(root: str, name: str):
    from models.data import load_generic

    if name not in _CORPORA:
        corpus = load_generic(Path(root) / name, text_fields=["tags"])
        corpus.name = f"amazon-{name}"
        _CORPORA[name] = corpus
    return _CORPORA[name]


def _overrides(job: dict) -> dict:
    return {**BASES[job["base"]], **ROWS[job["row"]]}


def _config(job: dict) -> TrainConfig:
    """The TrainConfig of `job` (raises ValueError for a row its base cannot take)."""
    from models.train import TrainConfig

    return TrainConfig(
        **_overrides(job),
        seed=job["seed"],
        device=job["device"],
        progress=False,
        max_steps=job["max_steps"],
        time_budget_s=job["time_budget"],
    )


def _identity(run: dict) -> tuple | None:
    """What names a run across invocations; None for a failed one (to be run again)."""
    if "error" in run:
        return None
    return (run["row"], run["dataset"], run["seed"], run.get("base", "table"))


def _finished(path: Path) -> set[tuple]:
    """The identities of the runs `path` holds a result of: a failed run, or a line cut off
    while it was written (the script killed), is run again."""
    done = set()
    for line in path.read_text().splitlines():
        try:
            done.add(_identity(json.loads(line)))
        except json.JSONDecodeError:
            continue
    return done - {None}


def run_guarded(job: dict) -> dict:
    """`run_row`, or the job's identity and error when it fails: one failing run must not cost
    the runs still going in the other workers."""
    try:
        return run_row(job)
    except Exception as exc:  # reported in the log and the jsonl, the other runs go on
        return {k: job[k] for k in ("row", "dataset", "seed", "base")} | {"error": repr(exc)}


def run_row(job: dict) -> dict:
    """Train one (row, dataset, seed) and measure it; runs in a worker process."""
    import torch

    from models.evaluate import (
        history_rows,
        metrics_from_ranks,
        rank_targets,
        sample_negatives,
        user_vectors_for,
    )
    from models.memory import reuse_freed_memory
    from models.train import train

    reuse_freed_memory()
    torch.set_num_threads(job["threads"])
    corpus = _corpus(job["root"], job["dataset"])
    overrides = _overrides(job)
    cfg = _config(job)
    started = time.perf_counter()
    result = train(corpus, cfg)
    seconds = time.perf_counter() - started
    device = torch.device(job["device"] if job["device"] != "auto" else "cpu")
    model = result.model.to(device).eval()
    with torch.inference_mode():
        items = model.all_item_vectors()

    def measure(eval_set) -> tuple[dict[str, float], dict[str, float]]:
        rows = result.vocab.item_rows(eval_set.target_item)
        with torch.inference_mode():
            users = torch.from_numpy(user_vectors_for(model, result.vocab, eval_set)).to(device)
        full, unseen, _ = rank_targets(
            lambda idx: users[torch.from_numpy(idx).to(device)] @ items.T,
            rows,
            sample_negatives(rows, len(result.vocab), 100, 0),
            batch_size=1024,
            seen=history_rows(result.vocab, eval_set.history),
        )
        return metrics_from_ranks(unseen, (10, 20)), metrics_from_ranks(full, (10,))

    valid, _ = measure(corpus.valid)  # the kept model, full ranking, seen removed
    test, test_full = measure(corpus.test)
    return {
        "row": job["row"],
        "dataset": job["dataset"],
        "seed": job["seed"],
        "valid_ndcg10": valid["ndcg@10"],
        "valid_hr10": valid["recall@10"],
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.epoch_losses),
        "stopped": result.extra.get("stopped", "patience or max epochs"),
        "loss": result.extra.get("loss"),
        "test_hr10": test["recall@10"],
        "test_ndcg10": test["ndcg@10"],
        "test_hr20": test["recall@20"],
        "test_ndcg20": test["ndcg@20"],
        "test_full_ndcg10": test_full["ndcg@10"],
        "seconds": round(seconds, 1),
        "steps": result.steps,
        "device": result.extra.get("device"),
        "base": job["base"],
        "config": {k: v for k, v in asdict(cfg).items() if k in overrides},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=14)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--time-budget", type=float, default=None, help="seconds per run")
    parser.add_argument("--only", default=None, help="comma-separated row names")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument(
        "--base", choices=sorted(BASES), default="table", help="what every row changes"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip the runs OUT/ablation.jsonl already holds a result of (same row, dataset, "
        "seed and base)",
    )
    args = parser.parse_args()
    import multiprocessing as mp

    rows = args.only.split(",") if args.only else list(ROWS)
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; rows are {list(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    # seed 0 of every row first (sports, the slower, before toys), then seed 1
    jobs = [
        dict(
            row=row,
            base=args.base,
            dataset=dataset,
            seed=seed,
            root=args.data_root,
            device=args.device,
            threads=args.threads,
            max_steps=args.max_steps,
            time_budget=args.time_budget,
        )
        for seed in seeds
        for row in rows
        for dataset in args.datasets.split(",")[::-1]
    ]
    for job in jobs:  # every config is valid before hours of runs start
        try:
            _config(job)
        except ValueError as exc:
            raise SystemExit(f"row {job['row']!r} on base {args.base!r}: {exc}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ablation.jsonl"
    if args.resume and path.exists():
        done = _finished(path)
        jobs = [j for j in jobs if _identity(j) not in done]
    print(f"{len(jobs)} runs on {args.workers} workers, device {args.device}", flush=True)
    started = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers) as pool, path.open("a") as f:
        for res in pool.imap_unordered(run_guarded, jobs):
            res["elapsed"] = round(time.perf_counter() - started, 1)
            f.write(json.dumps(res) + "\n")
            f.flush()
            if "error" in res:
                print(
                    f"[{res['elapsed']:6.1f}s] {res['dataset']:6} s{res['seed']} {res['row']:32} "
                    f"FAILED: {res['error']}",
                    flush=True,
                )
                continue
            print(
                f"[{res['elapsed']:6.1f}s] {res['dataset']:6} s{res['seed']} {res['row']:32} "
                f"valid {res['valid_ndcg10']:.4f} ep {res['best_epoch']}/{res['epochs_run']} "
                f"test HR@10 {res['test_hr10']:.4f} NDCG@10 {res['test_ndcg10']:.4f} "
                f"{res['seconds']}s {res['steps']} steps",
                flush=True,
            )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
