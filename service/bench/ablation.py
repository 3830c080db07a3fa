"""`uniserve bench ablation`: the default model's ablation, many training configs in parallel.

Each run trains one row (a set of `models.train.TrainConfig` overrides of a base) on one dataset
with one seed, with early stopping on the validation split (full-ranking NDCG@10, seen items
removed), and reports that best validation NDCG@10, the epoch kept, the test HR@10 / NDCG@10
(reported only: nothing is chosen on test), the wall time and the steps. Runs go to worker
processes sharing the CPU (or one GPU); each result is appended to ``OUT/ablation.jsonl`` as it
finishes, so a run stopped by a time limit still leaves data, and ``--resume`` runs only what is
missing. A run that fails is recorded with its error and the others go on. At the end (or alone,
with ``--table``) it prints a markdown table of every result the file holds.

    uniserve bench ablation --out OUT [--datasets toys,sports] [--only "base,dim 128"]
        [--seeds 0,1] [--base default|table] [--workers N] [--device auto|cpu|cuda]
        [--max-steps 5 (a dry run)] [--resume] [--table]

``--base default`` (the default) changes today's default (`TrainConfig` as `uniserve train` runs
it, with the norm race replaced by the post-norm it keeps on Amazon); ``--base table`` the base
row of the GPU table in BENCHMARKS.md. Datasets: ``toys`` and ``sports`` are the S3-Rec folders
under ``--data-root`` (default ``../shared/data/amazon-s3rec``); any other name is what
``uniserve train --data`` takes (``sample``, ``amazon-art-office``, a generic-format directory).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from models.corpus import Corpus
    from models.train import TrainConfig

# one config per row: overrides of a base (fields of models.train.TrainConfig)
TABLE_BASE: dict[str, object] = dict(  # the base row of the GPU table in BENCHMARKS.md
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
DEFAULT_BASE: dict[str, object] = dict(  # today's default: TrainConfig's own values, except that
    norm="post",  # the norm race, which only chooses the layout, is replaced by what it keeps on
)  # both Amazon sets
BASES = {"default": DEFAULT_BASE, "table": TABLE_BASE}
TODAY: dict[str, object] = dict(  # the default before issue 18: 3 epochs, mixed negatives,
    loss="sampled",  # kept on the sampled protocol
    in_batch_negatives=1024,
    num_negatives=1024,
    dropout=0.1,
    epochs=3,
    patience=None,
    select_on="sampled",
)
PROBE: dict[str, object] = dict(  # issue 18's first probe (its 30 epochs cut by patience here)
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
    "sampled softmax": dict(loss="sampled"),  # today's negatives at any size (vs the size rule)
    "gated residual (LiGR)": dict(gated=True, norm="pre"),  # LiGR's gates sit on a pre-norm block
    "1 layer": dict(num_layers=1),
    "3 layers": dict(num_layers=3),
    "dropout 0.2": dict(dropout=0.2),
    "dropout 0.5": dict(dropout=0.5),
    "weight decay 0": dict(weight_decay=0.0),
    "weight decay 0.1": dict(weight_decay=0.1),
    "dim 128": dict(dim=128),
    "dim 128, 2048 uniform": dict(dim=128, num_negatives=2048),  # about today's cost per step
    "max_len 200": dict(max_len=200),
    "temperature 0.05": dict(temperature=0.05),
    "temperature 0.2": dict(temperature=0.2),
    "contrastive 0.1 (DuoRec)": dict(contrastive=0.1),
    "frequency filter (causal FMLP)": dict(filter=True),
    "future window 3": dict(future_window=3),
    "future window 5": dict(future_window=5),
    "future window 10": dict(future_window=10),
}
S3REC_FOLDERS = ("toys", "sports")  # the default datasets: folders under --data-root
RESULTS_FILE = "ablation.jsonl"

_CORPORA: dict[str, Corpus] = {}  # per worker process: each dataset is read once


def _s3rec(root: str | None, name: str) -> tuple[str, Path | None]:
    """`models.data`'s name and root of the S3-Rec folder `name` under --data-root."""
    return f"amazon-{name}", Path(root) if root else None


def _corpus(root: str | None, name: str) -> Corpus:
    from models.data import load_corpus, load_s3rec

    if name not in _CORPORA:
        if name in S3REC_FOLDERS:
            _CORPORA[name] = load_s3rec(*_s3rec(root, name))
        else:
            _CORPORA[name] = load_corpus(name)
    return _CORPORA[name]


def _check_dataset(root: str | None, name: str) -> None:
    """Fail now, in one line, for a dataset no run could read (not hours into the runs)."""
    from models.data import INTERACTIONS_FILE, NAMED_CORPORA, s3rec_path

    if name in S3REC_FOLDERS:
        path = s3rec_path(*_s3rec(root, name))
        if not (path / INTERACTIONS_FILE).is_file():
            raise SystemExit(
                f"dataset {name!r}: {path / INTERACTIONS_FILE} not found (--data-root is the "
                "folder holding the S3-Rec data's toys/ and sports/, ../shared/data/amazon-s3rec)"
            )
    elif name not in NAMED_CORPORA and not Path(name).is_dir():
        raise SystemExit(
            f"dataset {name!r}: not toys, sports, a name `uniserve train --data` takes, or "
            "a generic-format directory"
        )


def _overrides(job: dict[str, Any]) -> dict[str, object]:
    return {**BASES[job["base"]], **ROWS[job["row"]]}


def _config(job: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of `job` (raises ValueError for a row its base cannot take)."""
    from models.train import TrainConfig

    return TrainConfig(
        **_overrides(job),  # type: ignore[arg-type]
        seed=job["seed"],
        device=job["device"],
        progress=False,
        max_steps=job["max_steps"],
        time_budget_s=job["time_budget"],
    )


def _identity(run: dict[str, Any]) -> tuple[object, ...] | None:
    """What names a run across invocations; None for a failed one (to be run again)."""
    if "error" in run:
        return None
    return (run["row"], run["dataset"], run["seed"], run.get("base", "table"))


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every whole result line of `path`; a line cut off while it was written (the process
    killed mid-write) is skipped."""
    runs = []
    for line in path.read_text().splitlines():
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return runs


def finished(path: Path) -> set[tuple[object, ...]]:
    """The identities of the runs `path` holds a result of: a failed run, or a line cut off
    while it was written, is run again."""
    return {i for i in map(_identity, read_results(path)) if i is not None}


def run_guarded(job: dict[str, Any]) -> dict[str, Any]:
    """`run_row`, or the job's identity and error when it fails: one failing run must not cost
    the runs still going in the other workers."""
    try:
        return run_row(job)
    except Exception as exc:  # reported in the log and the jsonl, the other runs go on
        return {k: job[k] for k in ("row", "dataset", "seed", "base")} | {"error": repr(exc)}


def run_row(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (row, dataset, seed) and measure it; runs in a worker process."""
    import torch

    from models.corpus import EvalSet
    from models.device import select_device
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
    cfg = _config(job)
    started = time.perf_counter()
    result = train(corpus, cfg)
    seconds = time.perf_counter() - started
    device = select_device(job["device"])
    model = result.model.to(device).eval()
    with torch.inference_mode():
        items = model.all_item_vectors()

    def measure(eval_set: EvalSet) -> tuple[dict[str, float], dict[str, float]]:
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
    overrides = _overrides(job)
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


def table(runs: list[dict[str, Any]]) -> str:
    """A markdown table of `runs` (failed ones left out): a line per row, in the order rows
    first appear (named with their base when `runs` mix bases), and per dataset the validation
    NDCG@10 of each seed, the test HR@10 / NDCG@10 averaged over the seeds, and each seed's
    epoch kept / epochs run and seconds of training."""
    runs = [run for run in runs if "error" not in run]
    several_bases = len({run.get("base", "table") for run in runs}) > 1

    def name(run: dict[str, Any]) -> str:
        return f"{run['row']} [{run.get('base', 'table')}]" if several_bases else run["row"]

    by: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    rows: list[str] = []
    datasets: list[str] = []
    for run in runs:
        by[name(run), run["dataset"]][run["seed"]] = run  # a run done again: the last one
        rows += [name(run)] if name(run) not in rows else []
        datasets += [run["dataset"]] if run["dataset"] not in datasets else []
    head = ["row"]
    for d in datasets:
        head += [f"{d} valid NDCG@10 (by seed)", f"{d} test HR@10 / NDCG@10", f"{d} kept / run, s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [row]
        for d in datasets:
            seeds = by.get((row, d), {})
            if not seeds:
                cells += ["not run", "", ""]
                continue
            done = [seeds[s] for s in sorted(seeds)]
            hr = sum(r["test_hr10"] for r in done) / len(done)
            ndcg = sum(r["test_ndcg10"] for r in done) / len(done)
            cells += [
                ", ".join(f"{r['valid_ndcg10']:.4f}" for r in done),
                f"{hr:.4f} / {ndcg:.4f}",
                "; ".join(f"{r['best_epoch']}/{r['epochs_run']}, {r['seconds']:.0f}" for r in done),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _summary(res: dict[str, Any]) -> str:
    where = f"[{res['elapsed']:7.1f}s] {res['dataset']:6} s{res['seed']} {res['row']:32}"
    if "error" in res:
        return f"{where} FAILED: {res['error']}"
    return (
        f"{where} valid {res['valid_ndcg10']:.4f} ep {res['best_epoch']}/{res['epochs_run']} "
        f"test HR@10 {res['test_hr10']:.4f} NDCG@10 {res['test_ndcg10']:.4f} "
        f"{res['seconds']}s {res['steps']} steps"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="uniserve bench ablation",
        description=(__doc__ or "").split("\n\n")[1],
        epilog="rows: " + "; ".join(ROWS),
    )
    p.add_argument("--out", required=True, help=f"folder of {RESULTS_FILE} (appended to)")
    p.add_argument(
        "--data-root",
        default=None,
        help="the folder holding the S3-Rec data's toys/ and sports/ "
        "(default ../shared/data/amazon-s3rec)",
    )
    p.add_argument(
        "--datasets",
        default=",".join(S3REC_FOLDERS),
        help="comma-separated: toys, sports, or what `uniserve train --data` takes",
    )
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated row names (default: every row); a comma followed by a space is "
        "part of a name",
    )
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    p.add_argument(
        "--base", choices=sorted(BASES), default="default", help="what every row changes"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="runs at a time (default: this machine's cores / --threads)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--max-steps", type=int, default=None, help="steps per run (a dry run)")
    p.add_argument("--time-budget", type=float, default=None, help="seconds of training per run")
    p.add_argument(
        "--resume",
        action="store_true",
        help=f"skip the runs OUT/{RESULTS_FILE} already holds a result of (same row, dataset, "
        "seed and base); failed runs are run again",
    )
    p.add_argument(
        "--table",
        action="store_true",
        help=f"print the markdown table of OUT/{RESULTS_FILE} and run nothing",
    )
    return p


def split_rows(only: str) -> list[str]:
    """`--only`'s row names: separated by commas; a comma followed by a space is part of a name
    ("sampled uniform 256, log-q")."""
    return [name.strip() for name in re.split(r",(?! )", only)]


def _jobs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (row, dataset, seed) asked for, each config checked before hours of runs start:
    seed 0 of every row first (the datasets in reverse order: sports, the slower, before
    toys), then seed 1."""
    rows = split_rows(args.only) if args.only else list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; rows are {list(ROWS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    datasets = args.datasets.split(",")
    for name in datasets:
        _check_dataset(args.data_root, name)
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
        for dataset in datasets[::-1]
    ]
    for job in jobs:
        try:
            _config(job)
        except ValueError as exc:
            raise SystemExit(f"row {job['row']!r} on base {args.base!r}: {exc}") from None
    return jobs


def _end_cut_line(f: BinaryIO) -> None:
    """End a last line cut off mid-write (the writer killed), so the next result starts on a
    line of its own instead of being lost inside that one."""
    if f.seek(0, os.SEEK_END) == 0:
        return
    f.seek(-1, os.SEEK_END)
    if f.read(1) != b"\n":
        f.write(b"\n")


def main(argv: Sequence[str] | None = None) -> int:
    import multiprocessing as mp

    args = build_parser().parse_args(argv)
    path = Path(args.out) / RESULTS_FILE
    if args.table:
        if not path.is_file():
            raise SystemExit(f"{path} not found: no results to tabulate")
        print(table(read_results(path)), end="")
        return 0
    if args.threads < 1 or (args.workers is not None and args.workers < 1):
        raise SystemExit("--threads and --workers must be at least 1")
    jobs = _jobs(args)
    from models.device import select_device

    try:
        select_device(args.device)  # "cuda" without a GPU: say so now, not once per run
    except ValueError as exc:
        raise SystemExit(f"--device {args.device}: {exc}") from None
    if args.resume and path.is_file():
        done = finished(path)
        jobs = [j for j in jobs if _identity(j) not in done]
    workers = args.workers or max(1, (os.cpu_count() or 1) // args.threads)
    workers = min(workers, max(1, len(jobs)))
    print(f"{len(jobs)} runs on {workers} workers, device {args.device}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # inherited by the workers
    started = time.perf_counter()
    ctx = mp.get_context("spawn")  # never fork a process holding torch's threads
    with ctx.Pool(workers) as pool, path.open("a+b") as f:
        _end_cut_line(f)
        for res in pool.imap_unordered(run_guarded, jobs):
            res["elapsed"] = round(time.perf_counter() - started, 1)
            f.write(json.dumps(res).encode() + b"\n")
            f.flush()
            print(_summary(res), flush=True)
    print(table(read_results(path)), end="")
    return 0
