"""Index benchmark: recall@10 against exact search vs queries/s, per index type and parameter.

    python scripts/bench_index.py [--quick] [--model DIR [--data NAME]] [--out DIR]

For each index type (default Flat, HNSW32, IVF{nlist},Flat, IVF{nlist},PQ{m}) the index is built
by the project's own builder (`index.build.build_index`: inner product, efConstruction 200,
seeded IVF / PQ training), then searched through `ItemIndex.search` with per-call parameters
(efSearch for HNSW, nprobe for IVF), the path the service uses, so queries/s include the
wrapper's per-call overhead (query validation, SearchParameters). Per (type, parameter) it
records recall@10 against exact top-10 (`index.recall.exact_topk`, numpy brute force, computed
once per dataset), queries/s with all queries in one search call (batched) and with one query
per call (one at a time; also straight to `faiss_index.search`, to show the wrapper's share),
all on `--threads` faiss threads (default 1), bytes per vector
(`faiss.serialize_index` length / N: codes, graph links, inverted-list ids, IVF direct map and
centroids, not the item-id maps) and build time (wall time of `build_index`: train + add plus
the ItemIndex id maps, which is all of the Flat row's time).

Datasets: N synthetic clustered unit vectors (a seeded Gaussian mixture, generated in chunks;
queries are fresh draws from the same mixture), or with `--model` the item vectors of a trained
uniserve model with queries that are either held-out item vectors (removed from the indexed set)
or, with `--data`, the model's user vectors for that corpus's validation histories.

Writes `results.json`, `table.md` and, when matplotlib is importable, `recall_vs_qps.png` into
`--out`; the JSON and the table are rewritten after each index type, so a long run that is
stopped keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.build import EF_CONSTRUCTION, MIN_POINTS_PER_LIST, build_index
from index.item_index import ItemIndex, index_kind, unwrap_index
from index.recall import exact_topk, recall_at_k

K = 10
DEFAULT_N = 1_000_000
DEFAULT_DIM = 64
DEFAULT_QUERIES = 1000
DEFAULT_TYPES = ("Flat", "HNSW32", "IVF{nlist},Flat", "IVF{nlist},PQ{m}")
DEFAULT_EF_SEARCH = (16, 32, 64, 128, 256, 512)
DEFAULT_NPROBE = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUICK_N = 50_000
QUICK_QUERIES = 300
QUICK_EF_SEARCH = (16, 64, 256)
QUICK_NPROBE = (4, 16, 64)
DEFAULT_CLUSTERS = 2000
DEFAULT_SPREAD = 1.0  # noise norm relative to the unit centre norm, before normalising
GEN_CHUNK = 65_536  # synthetic rows generated at a time
MIN_TIMED_SECONDS = 0.5  # batched searches are repeated until they have run this long
HEARTBEAT_SECONDS = 60.0  # progress line during long builds
OUT_DEFAULT = Path("runs/bench_index")
RESULTS_FILE = "results.json"
TABLE_FILE = "table.md"
PLOT_FILE = "recall_vs_qps.png"


@dataclass(frozen=True)
class Dataset:
    name: str
    vectors: np.ndarray  # (N, D) float32, the indexed rows
    queries: np.ndarray  # (Q, D) float32, not among the indexed rows
    query_source: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    index_type: str
    params: dict[str, int]  # {} for exhaustive indexes
    recall_at_10: float
    qps_batched: float
    qps_single: float
    qps_single_faiss: float  # one query per call straight to faiss, without ItemIndex.search
    bytes_per_vector: float
    build_seconds: float
    batched_cpu_per_wall: float  # process CPU s / wall s of the batched searches (~threads)


# ----------------------------------------------------------------------------- data
def default_nlist(n: int) -> int:
    """IVF lists for n vectors: 4·√n rounded to a power of two, at most n / 39 (faiss k-means)."""
    nlist = 2 ** round(math.log2(4 * math.sqrt(max(n, 1))))
    while nlist > 1 and nlist * MIN_POINTS_PER_LIST > n:
        nlist //= 2
    return nlist


def default_pq_m(dim: int) -> int:
    """PQ sub-quantizers: 2-D sub-vectors (32 bytes a vector for dim 64), or dim when odd."""
    return dim // 2 if dim % 2 == 0 else dim


def expand_types(types: Sequence[str], n: int, dim: int, nlist: int | None) -> list[str]:
    """Fill the {nlist} and {m} placeholders of factory strings."""
    fill = {"nlist": nlist or default_nlist(n), "m": default_pq_m(dim)}
    try:
        return [t.format(**fill) for t in types]
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"bad --types {list(types)}: only {{nlist}} and {{m}} are filled") from e


def clustered_vectors(
    n: int, centres: np.ndarray, weights: np.ndarray, spread: float, rng: np.random.Generator
) -> np.ndarray:
    """n unit vectors (n, D): a centre drawn by `weights` plus Gaussian noise of norm ~`spread`.

    Generated GEN_CHUNK rows at a time, so only the output array scales with n.
    """
    dim = centres.shape[1]
    out = np.empty((n, dim), dtype=np.float32)  # (n, D)
    sigma = np.float32(spread / math.sqrt(dim))  # per-dimension std
    for lo in range(0, n, GEN_CHUNK):
        m = min(GEN_CHUNK, n - lo)
        which = rng.choice(len(centres), size=m, p=weights)  # (m,)
        x = centres[which] + sigma * rng.standard_normal((m, dim), dtype=np.float32)  # (m, D)
        out[lo : lo + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def synthetic_dataset(
    n: int, dim: int, n_queries: int, *, clusters: int, spread: float, seed: int
) -> Dataset:
    """Seeded Gaussian mixture on the unit sphere: `clusters` random unit centres with sizes
    from a flat Dirichlet; queries are fresh draws from the same mixture."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)  # (C, D)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.dirichlet(np.ones(clusters))  # (C,)
    vectors = clustered_vectors(n, centres, weights, spread, rng)  # (N, D)
    queries = clustered_vectors(n_queries, centres, weights, spread, rng)  # (Q, D)
    info = {"clusters": clusters, "spread": spread, "seed": seed}
    return Dataset(
        f"synthetic clustered, {n:,} x {dim}",
        vectors,
        queries,
        "fresh draws from the same mixture",
        info,
    )


def model_dataset(model_dir: Path, n_queries: int, *, seed: int, data: str | None) -> Dataset:
    """The item vectors of a trained model; queries are `n_queries` held-out item vectors
    (removed from the indexed rows) or, with `data`, user vectors of that corpus's validation
    histories (the whole catalogue is indexed)."""
    from models.embedder import Embedder  # torch: imported only when a model is benchmarked

    embedder = Embedder.from_dir(model_dir)
    items = embedder.item_vectors()  # (N, D)
    rng = np.random.default_rng(seed)
    if data is not None:
        from models.data import load_corpus

        corpus = load_corpus(data)
        if not len(corpus.valid):
            raise ValueError(f"corpus {data!r} has no validation histories to use as queries")
        pick = np.sort(rng.choice(len(corpus.valid), min(n_queries, len(corpus.valid)), False))
        histories = [corpus.valid.history.sequence(int(i)) for i in pick]
        vectors, queries = items, embedder.user_vectors(histories)  # (N, D), (Q, D)
        source = f"user vectors of {len(pick)} validation histories of {corpus.name}"
    else:
        if n_queries >= len(items):
            raise ValueError(f"--queries {n_queries} must be below the {len(items)} items")
        held = np.zeros(len(items), dtype=bool)  # (N,)
        held[rng.choice(len(items), n_queries, replace=False)] = True
        vectors, queries = items[~held], items[held]
        source = "held-out item vectors (removed from the indexed rows)"
    norms = np.linalg.norm(vectors, axis=1)  # (N,)
    info = {
        "model_dir": str(Path(model_dir).resolve()),
        "model_version": embedder.version,
        "fingerprint": embedder.fingerprint,
        "catalogue_items": len(items),
        "item_norm_min": round(float(norms.min()), 4),
        "item_norm_max": round(float(norms.max()), 4),
        "seed": seed,
    }
    name = (
        f"{embedder.config.get('name', 'model')} item vectors, {len(vectors):,} x {items.shape[1]}"
    )
    return Dataset(name, np.ascontiguousarray(vectors), np.ascontiguousarray(queries), source, info)


# ----------------------------------------------------------------------------- measuring
def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def _heartbeat(what: str) -> Iterator[None]:
    """Print a line every HEARTBEAT_SECONDS while the body runs (faiss releases the GIL)."""
    stop = threading.Event()
    start = time.perf_counter()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            _say(f"  ... {what}: {time.perf_counter() - start:.0f} s")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def sweep_params(
    index: ItemIndex, ef_search: Sequence[int], nprobe: Sequence[int]
) -> list[dict[str, int]]:
    """Per-call parameters to measure: each efSearch (HNSW), each nprobe up to nlist (IVF)."""
    kind = index_kind(index.faiss_index)
    if kind == "hnsw":
        return [{"efSearch": ef} for ef in sorted(set(ef_search))]
    if kind == "ivf":
        nlist = faiss.extract_index_ivf(index.faiss_index).nlist
        return [{"nprobe": p} for p in sorted({min(p, nlist) for p in nprobe})]
    return [{}]


def qps_batched(
    index: ItemIndex, queries: np.ndarray, params: dict[str, int]
) -> tuple[float, float]:
    """(queries/s, CPU s per wall s) with all queries in one search call, repeated until
    MIN_TIMED_SECONDS have passed."""
    calls, wall, cpu = 0, 0.0, 0.0
    while wall < MIN_TIMED_SECONDS:
        c0, t0 = time.process_time(), time.perf_counter()
        index.search(queries, K, params=params)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        calls += 1
    return calls * len(queries) / wall, cpu / wall


def qps_single(index: ItemIndex, queries: np.ndarray, params: dict[str, int]) -> float:
    """Queries/s with one query per search call, over all queries once."""
    t0 = time.perf_counter()
    for i in range(len(queries)):
        index.search(queries[i : i + 1], K, params=params)
    return len(queries) / (time.perf_counter() - t0)


def faiss_params(index: ItemIndex, params: dict[str, int]) -> faiss.SearchParameters | None:
    """The faiss SearchParameters for `params` (efSearch / nprobe), for calling faiss directly."""
    sp: Any
    if "efSearch" in params:
        sp = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # stubs lag SWIG
        sp.efSearch = params["efSearch"]
    elif "nprobe" in params:
        sp = faiss.SearchParametersIVF()
        sp.nprobe = params["nprobe"]
    else:
        return None
    if unwrap_index(index.faiss_index)[1]:  # an IndexPreTransform (e.g. OPQ) wraps the index
        outer = faiss.SearchParametersPreTransform()
        outer.index_params = sp
        return outer
    return sp


def qps_single_faiss(index: ItemIndex, queries: np.ndarray, params: dict[str, int]) -> float:
    """Queries/s with one query per `faiss_index.search` call: the index alone, without the
    wrapper's validation and bookkeeping."""
    sp = faiss_params(index, params)
    search = index.faiss_index.search
    t0 = time.perf_counter()
    for i in range(len(queries)):
        search(queries[i : i + 1], K, params=sp)
    return len(queries) / (time.perf_counter() - t0)


def measure_type(
    ds: Dataset,
    index_type: str,
    exact: np.ndarray,
    *,
    ef_search: Sequence[int],
    nprobe: Sequence[int],
    seed: int,
    threads: int,
    build_threads: int,
) -> list[Row]:
    """Build `index_type` over the dataset and measure every parameter of its sweep."""
    n = len(ds.vectors)
    ids = np.arange(n).astype(str)  # (N,) the builder wants unique str ids
    faiss.omp_set_num_threads(build_threads)
    _say(f"building {index_type} over {n:,} vectors ({build_threads} thread(s))")
    with _heartbeat(f"building {index_type}"):
        t0 = time.perf_counter()
        index = build_index(ds.vectors, ids, index_type=index_type, seed=seed)
        build_s = time.perf_counter() - t0
    del ids
    bytes_per_vector = faiss.serialize_index(index.faiss_index).nbytes / n
    _say(f"built {index_type} in {build_s:.1f} s, {bytes_per_vector:.1f} bytes/vector")
    faiss.omp_set_num_threads(threads)
    rows = []
    for params in sweep_params(index, ef_search, nprobe):
        # the recall pass doubles as the warm-up of the timed searches
        recall = recall_at_k(index, ds.vectors, ds.queries, K, params=params, exact=exact)
        batched, cpu_per_wall = qps_batched(index, ds.queries, params)
        single = qps_single(index, ds.queries, params)
        raw = qps_single_faiss(index, ds.queries, params)
        row = Row(
            index_type,
            params,
            recall,
            batched,
            single,
            raw,
            bytes_per_vector,
            build_s,
            cpu_per_wall,
        )
        _say(
            f"  {index_type} {_params_text(params)}: recall@10 {recall:.4f}, "
            f"{batched:,.0f} q/s batched, {single:,.0f} q/s one at a time "
            f"({raw:,.0f} calling faiss directly)"
        )
        rows.append(row)
    del index
    gc.collect()
    return rows


# ----------------------------------------------------------------------------- output
def _params_text(params: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in params.items()) or "-"


def table_markdown(rows: Sequence[Row]) -> str:
    """The results as a Markdown table, one line per (type, parameter)."""
    lines = [
        "| type | params | recall@10 | QPS batched | QPS single | QPS single, faiss only "
        "| bytes/vector | build s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| `{r.index_type}` | {_params_text(r.params)} | {r.recall_at_10:.4f} | "
            f"{r.qps_batched:,.0f} | {r.qps_single:,.0f} | {r.qps_single_faiss:,.0f} | "
            f"{r.bytes_per_vector:,.1f} | "
            f"{r.build_seconds:,.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_results(out: Path, meta: dict[str, Any], rows: Sequence[Row]) -> None:
    """Write results.json and table.md (a header line naming the dataset, then the table)."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "rows": [asdict(r) for r in rows]}
    (out / RESULTS_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    header = (
        f"{meta['dataset']}; {meta['queries']} queries ({meta['query_source']}); "
        f"{meta['threads']} search thread(s), {meta['build_threads']} build thread(s)\n\n"
    )
    (out / TABLE_FILE).write_text(header + table_markdown(rows))


def write_plot(path: Path, meta: dict[str, Any], rows: Sequence[Row]) -> bool:
    """Recall@10 vs queries/s (log), batched and one at a time; False when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharex=True)
    for ax, attr, title in (
        (axes[0], "qps_batched", "all queries in one call"),
        (axes[1], "qps_single", "one query per call"),
    ):
        for index_type in dict.fromkeys(r.index_type for r in rows):
            mine = [r for r in rows if r.index_type == index_type]
            xs = [r.recall_at_10 for r in mine]
            ys = [getattr(r, attr) for r in mine]
            (line,) = ax.plot(xs, ys, marker="o", label=index_type)
            for r, x, y in zip(mine, xs, ys, strict=True):
                if r.params:
                    ax.annotate(
                        str(next(iter(r.params.values()))),
                        (x, y),
                        textcoords="offset points",
                        xytext=(3, 4),
                        fontsize=7,
                        color=line.get_color(),
                    )
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 (vs exact)")
        ax.set_ylabel("queries/s")
        ax.set_title(f"{title}, {meta['threads']} thread(s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{meta['dataset']}, {meta['queries']} queries; labels: efSearch / nprobe", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- CLI
def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not an int: {text!r}") from e
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_index",
        description="Recall@10 against exact search vs queries/s (batched and one query per "
        "call), bytes per vector and build time, for FAISS index types built by uniserve's "
        "builder (inner product), on synthetic clustered unit vectors or a trained model's "
        "item vectors. Writes results.json, table.md and recall_vs_qps.png into --out.",
    )
    p.add_argument(
        "--n",
        type=_positive_int,
        default=None,
        help=f"synthetic vectors indexed (default {DEFAULT_N:,}; {QUICK_N:,} with --quick); "
        "ignored with --model",
    )
    p.add_argument(
        "--dim",
        type=_positive_int,
        default=DEFAULT_DIM,
        help=f"synthetic dimension (default {DEFAULT_DIM}); ignored with --model",
    )
    p.add_argument(
        "--queries",
        type=_positive_int,
        default=None,
        help=f"query vectors (default {DEFAULT_QUERIES}; {QUICK_QUERIES} with --quick)",
    )
    p.add_argument(
        "--types",
        nargs="+",
        default=list(DEFAULT_TYPES),
        metavar="FACTORY",
        help="faiss index_factory strings, space-separated; {nlist} becomes --nlist and {m} "
        "dim/2, or dim when odd (default: %(default)s)",
    )
    p.add_argument(
        "--nlist",
        type=_positive_int,
        default=None,
        help="IVF lists for {nlist} (default 4*sqrt(N) rounded to a power of two, at most N/39)",
    )
    p.add_argument(
        "--ef-search",
        nargs="+",
        type=_positive_int,
        default=None,
        help=f"HNSW efSearch values (default {' '.join(map(str, DEFAULT_EF_SEARCH))}; "
        f"{' '.join(map(str, QUICK_EF_SEARCH))} with --quick)",
    )
    p.add_argument(
        "--nprobe",
        nargs="+",
        type=_positive_int,
        default=None,
        help=f"IVF nprobe values, capped at nlist (default {' '.join(map(str, DEFAULT_NPROBE))}; "
        f"{' '.join(map(str, QUICK_NPROBE))} with --quick)",
    )
    p.add_argument(
        "--clusters",
        type=_positive_int,
        default=DEFAULT_CLUSTERS,
        help=f"synthetic mixture centres (default {DEFAULT_CLUSTERS})",
    )
    p.add_argument(
        "--spread",
        type=float,
        default=DEFAULT_SPREAD,
        help="synthetic noise norm relative to the unit centres, before normalising "
        f"(default {DEFAULT_SPREAD})",
    )
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="DIR",
        help="benchmark this trained uniserve model's item vectors instead of synthetic ones; "
        "queries are held-out item vectors (removed from the index) unless --data is given",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="NAME",
        help="with --model: queries are the model's user vectors for this corpus's validation "
        "histories (e.g. kuairand), and every item is indexed",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=OUT_DEFAULT,
        metavar="DIR",
        help=f"output directory (default {OUT_DEFAULT})",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smaller defaults for a check: N {QUICK_N:,}, {QUICK_QUERIES} queries, "
        "fewer efSearch / nprobe values",
    )
    p.add_argument("--seed", type=int, default=0, help="data, query and IVF/PQ training seed")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="faiss OpenMP threads for searching (default 1)",
    )
    p.add_argument(
        "--build-threads",
        type=_positive_int,
        default=None,
        help="faiss OpenMP threads for building (default: faiss's default, all cores)",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data is not None and args.model is None:
        parser.error("--data needs --model")
    if not args.spread > 0:
        parser.error(f"--spread must be positive, got {args.spread}")
    n_queries = args.queries or (QUICK_QUERIES if args.quick else DEFAULT_QUERIES)
    ef_search = args.ef_search or (QUICK_EF_SEARCH if args.quick else DEFAULT_EF_SEARCH)
    nprobe = args.nprobe or (QUICK_NPROBE if args.quick else DEFAULT_NPROBE)
    build_threads = args.build_threads or faiss.omp_get_max_threads()
    load_start = os.getloadavg()
    started = time.perf_counter()

    _say("preparing data")
    if args.model is not None:
        ds = model_dataset(args.model, n_queries, seed=args.seed, data=args.data)
    else:
        n = args.n or (QUICK_N if args.quick else DEFAULT_N)
        ds = synthetic_dataset(
            n, args.dim, n_queries, clusters=args.clusters, spread=args.spread, seed=args.seed
        )
    n, dim = ds.vectors.shape
    try:
        types = expand_types(args.types, n, dim, args.nlist)
    except ValueError as e:
        parser.error(str(e))
    _say(f"{ds.name}; {len(ds.queries)} queries: {ds.query_source}; types {types}")

    t0 = time.perf_counter()
    exact = exact_topk(ds.vectors, ds.queries, K)  # (Q, K)
    _say(f"exact top-{K} in {time.perf_counter() - t0:.1f} s")

    meta: dict[str, Any] = {
        "dataset": ds.name,
        "n": n,
        "dim": dim,
        "metric": "inner product",
        "queries": len(ds.queries),
        "query_source": ds.query_source,
        "data": ds.info,
        "k": K,
        "types": types,
        "threads": args.threads,
        "build_threads": build_threads,
        "hnsw_ef_construction": EF_CONSTRUCTION,
        "bytes_per_vector": "len(faiss.serialize_index(index)) / N",
        "qps": "ItemIndex.search with per-call params; batched = all queries in one call",
        "argv": list(sys.argv[1:] if argv is None else argv),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "loadavg_start": [round(x, 2) for x in load_start],
    }
    rows: list[Row] = []
    for index_type in types:
        rows += measure_type(
            ds,
            index_type,
            exact,
            ef_search=ef_search,
            nprobe=nprobe,
            seed=args.seed,
            threads=args.threads,
            build_threads=build_threads,
        )
        meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        meta["total_seconds"] = round(time.perf_counter() - started, 1)
        write_results(args.out, meta, rows)

    print(table_markdown(rows), end="")
    if args.no_plot:
        _say(f"wrote {args.out / RESULTS_FILE} and {args.out / TABLE_FILE} (plot not asked for)")
    elif write_plot(args.out / PLOT_FILE, meta, rows):
        _say(f"wrote {args.out / RESULTS_FILE}, {args.out / TABLE_FILE}, {args.out / PLOT_FILE}")
    else:
        _say(
            f"wrote {args.out / RESULTS_FILE} and {args.out / TABLE_FILE}; plot skipped: "
            "matplotlib is not installed (pip install matplotlib)"
        )
    return 0
