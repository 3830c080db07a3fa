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
   against a **naive service** (`naive_app` below: a sync FastAPI endpoint doing its own encoder
   forward and FAISS search per request, stdlib JSON, the way most teams first write it), same
   model, index, thread settings and requests. The load is open-loop: request i is due at
   start + i / rate and its latency counts from then, so queueing in the client or the server is
   never hidden. Every request carries a fresh 50-event history (a cache miss).
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
import asyncio
import contextlib
import gc
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from models.item_encoder import FIRST_ITEM_ID

T = TypeVar("T")

P99_BOUND_MS = 50.0
RECALL_TARGET = 0.95
HISTORY_LEN = 50
SURFACES = ("feed", "search", "live", "shop")
ITEMS_PER_CLUSTER = 500
USER_FIT_STEPS = 150
IDLE_REUSE_S = 3.0  # keep-alive connections idle longer are not reused (uvicorn closes at 5 s)


# ------------------------------------------------------------------------------ artifacts
@dataclass(frozen=True)
class Catalogue:
    """A synthetic catalogue: items in clusters (the interests users have), made from a seed."""

    item_ids: np.ndarray  # (N,) str
    surfaces: np.ndarray  # (N,) str
    member: np.ndarray  # (N,) int: the item's cluster
    by_cluster: list[np.ndarray]  # cluster -> its item rows

    @staticmethod
    def make(n_items: int, seed: int) -> Catalogue:
        rng = np.random.default_rng(seed)
        n_clusters = max(16, n_items // ITEMS_PER_CLUSTER)
        member = rng.integers(0, n_clusters, n_items)
        order = np.argsort(member, kind="stable")
        bounds = np.searchsorted(member[order], np.arange(n_clusters + 1))
        return Catalogue(
            item_ids=np.array([f"i{i}" for i in range(n_items)], dtype=object),
            surfaces=np.array(SURFACES, dtype=object)[rng.integers(0, len(SURFACES), n_items)],
            member=member,
            by_cluster=[order[a:b] for a, b in itertools.pairwise(bounds)],
        )

    def histories(
        self, n: int, rng: np.random.Generator, length: int = HISTORY_LEN
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, length) item rows of users with 1-3 interests, and (n,) a next item for each."""
        rows = np.empty((n, length + 1), dtype=np.int64)
        for u in range(n):
            interests = rng.choice(len(self.by_cluster), size=rng.integers(1, 4), replace=False)
            pools = [self.by_cluster[c] for c in interests if len(self.by_cluster[c])]
            picks = rng.integers(0, len(pools), length + 1)
            rows[u] = [pool[rng.integers(0, len(pool))] for pool in (pools[i] for i in picks)]
        return rows[:, :-1], rows[:, -1]

    def as_history(self, rows: np.ndarray) -> tuple[list[str], list[str]]:
        return self.item_ids[rows].tolist(), self.surfaces[rows].tolist()


def synthetic_corpus(cat: Catalogue, seed: int, users: int = 2000) -> Any:
    """The catalogue as a corpus; its validation histories are the recall-tuning queries."""
    from models.corpus import Corpus, EvalSet, ItemTable, Sequences

    rng = np.random.default_rng(seed + 2)

    def sequences(rows: np.ndarray, prefix: str) -> Sequences:
        return Sequences.from_lists(
            [f"{prefix}{u}" for u in range(len(rows))],
            [cat.item_ids[r].tolist() for r in rows],
            [cat.surfaces[r].tolist() for r in rows],
        )

    def eval_set(n: int, prefix: str) -> EvalSet:
        rows, target = cat.histories(n, rng)
        return EvalSet(
            sequences(rows, prefix), cat.item_ids[target], cat.surfaces[target],
            np.full(n, "all", dtype=object),
        )  # fmt: skip

    items = ItemTable(item_id=cat.item_ids, surface=cat.surfaces)
    train_rows, _ = cat.histories(users, rng)
    return Corpus(
        f"synthetic-{len(cat.item_ids)}", items, sequences(train_rows, "u"),
        eval_set(1000, "v"), eval_set(10, "t"),
    )  # fmt: skip


def fit_user_encoder(model: Any, vocab: Any, cat: Catalogue, seed: int, steps: int) -> float:
    """Train the user encoder (item vectors frozen) to point at its history's interests, as a
    trained model's user vectors do; returns the last loss. In-batch softmax, temperature 0.1."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed + 3)
    model.item_encoder.requires_grad_(False)
    model.train()
    opt = torch.optim.Adam(model.user_encoder.parameters(), lr=1e-3)
    loss = torch.tensor(float("nan"))
    for _ in tqdm(range(steps), desc="fitting the user encoder", unit="step"):
        rows, target = cat.histories(64, rng)
        ids, surfaces, mask = vocab.batch([cat.as_history(r) for r in rows], HISTORY_LEN)
        users = model.user_vectors(ids, surfaces, mask)  # (B, D)
        items = model.item_vectors(torch.from_numpy(target + FIRST_ITEM_ID))  # (B, D)
        loss = F.cross_entropy(users @ items.T / 0.1, torch.arange(len(rows)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.item())


def prepare_artifacts(
    work_dir: Path, n_items: int, *, index_type: str, seed: int, progress: bool = True
) -> Path:
    """A data dir (model/ + indexes/) for the benchmark, reused when made with the same options."""
    import torch

    from models.artifacts import save_model
    from models.train import TrainConfig, build_model
    from service.jobs.pipeline import build_and_publish

    key = {"items": n_items, "index_type": index_type, "seed": seed, "version": 2}
    data_dir = work_dir / f"{n_items}-{index_type.replace(',', '_')}-{seed}"
    stamp = data_dir / "bench.json"
    if stamp.exists() and json.loads(stamp.read_text()) == key:
        print(f"[artifacts] reusing {data_dir}", flush=True)
        return data_dir
    stamp.unlink(missing_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cat = Catalogue.make(n_items, seed)
    corpus = synthetic_corpus(cat, seed)
    cfg = TrainConfig(seed=seed, progress=False)
    torch.manual_seed(seed)
    model, spec, vocab = build_model(corpus, cfg)
    rng = np.random.default_rng(seed + 1)
    centres = rng.standard_normal((len(cat.by_cluster), cfg.dim)).astype(np.float32)
    noise = 0.5 * rng.standard_normal((n_items, cfg.dim)).astype(np.float32)
    with torch.no_grad():  # clustered item vectors, as a trained catalogue has
        table = model.item_encoder.id_embedding.weight
        table[FIRST_ITEM_ID:] = torch.from_numpy(centres[cat.member] + noise)
    loss = fit_user_encoder(model, vocab, cat, seed, USER_FIT_STEPS)
    save_model(model, spec, vocab, corpus.items, data_dir / "model", name=f"bench{n_items}")
    print(
        f"[artifacts] model over {n_items:,} items in {len(cat.by_cluster):,} clusters "
        f"({USER_FIT_STEPS} user-encoder steps, loss {loss:.2f}) in "
        f"{time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    t0 = time.perf_counter()
    manifest = build_and_publish(
        data_dir / "model",
        data_dir / "indexes",
        index_type=index_type,
        corpus=corpus,
        seed=seed,
        target_recall=RECALL_TARGET,
        progress=progress,
    )
    print(
        f"[artifacts] {index_type} index {manifest.version} in {time.perf_counter() - t0:.1f} s: "
        f"search params {manifest.search_params}, recall@10 {manifest.recall_at_10:.3f}",
        flush=True,
    )
    stamp.write_text(json.dumps(key))
    return data_dir


def request_bodies(n_items: int, n: int, seed: int, k: int = 10) -> list[bytes]:
    """`n` retrieve bodies, each with a distinct 50-event history of a synthetic user."""
    cat = Catalogue.make(n_items, seed)
    rows, _ = cat.histories(n, np.random.default_rng(seed + 7))
    bodies = []
    for r in rows:
        events = [
            {"item_id": i, "surface": s}
            for i, s in zip(cat.item_ids[r], cat.surfaces[r], strict=True)
        ]
        bodies.append(json.dumps({"events": events, "k": k}).encode())
    return bodies


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


# ------------------------------------------------------------------------------ servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


@contextlib.contextmanager
def server(kind: str, data_dir: Path, threads: int, extra_env: dict[str, str]) -> Iterator[Server]:
    """Run uniserve (`kind` "uniserve") or the naive service in a subprocess until ready."""
    port = free_port()
    env = {**os.environ, **thread_env(threads), **extra_env}
    if kind == "uniserve":
        env.update(
            UNISERVE_DATA_DIR=str(data_dir),
            UNISERVE_BOOTSTRAP="false",
            UNISERVE_INDEX_POLL_SECONDS="0",
            UNISERVE_TORCH_THREADS=str(threads),
            UNISERVE_FAISS_THREADS=str(threads),
        )
        cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
        cmd += ["--log-level", "warning"]
    else:
        cmd = [
            sys.executable,
            "-m",
            "service.bench.service",
            "naive-serve",
            str(data_dir),
            str(port),
        ]
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while not _ready(port):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"{kind} exited with {proc.returncode}: {err[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} not ready after 600 s")
            time.sleep(0.2)
        yield Server(kind, port, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ready(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@dataclass(frozen=True)
class Server:
    kind: str
    port: int
    pid: int

    def rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")


def naive_app(data_dir: Path) -> Any:
    """The retrieve endpoint as most teams first write it: per request, one encoder forward and
    one FAISS search in FastAPI's thread pool, stdlib JSON; no batching, no backpressure."""
    from fastapi import FastAPI
    from fastapi.responses import Response

    from index import current_version, open_version, verify_version
    from models.embedder import Embedder

    root = data_dir / "indexes"
    index = open_version(root, verify_version(root, current_version(root) or ""))
    embedder = Embedder.from_dir(data_dir / "model")
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/retrieve")
    def retrieve(body: dict[str, Any]) -> Response:
        events = body["events"]
        history = ([e["item_id"] for e in events], [e.get("surface") or "" for e in events])
        vector = embedder.user_vectors([history])  # (1, D)
        scores, rows = index.search(vector, int(body.get("k", 10)))
        items = [
            {"item_id": str(index.item_ids[r]), "score": float(s)}
            for r, s in zip(rows[0], scores[0], strict=True)
            if r >= 0
        ]
        return Response(json.dumps({"items": items}), media_type="application/json")

    return app


# ------------------------------------------------------------------------------ load
@dataclass
class StepResult:
    target_rps: float
    achieved_rps: float
    sent: int
    ok: int
    rejected: int  # 429
    errors: int  # anything else: other statuses, resets, timeouts
    p50_ms: float
    p95_ms: float
    p99_ms: float
    reject_p99_ms: float  # 429 latency from the actual send, not the schedule

    def sustained(self) -> bool:
        return (
            self.errors == 0 and self.rejected <= 0.001 * self.sent and self.p99_ms <= P99_BOUND_MS
        )


class Client:
    """Raw HTTP/1.1 keep-alive connections to one port; a pool grows as the load needs."""

    def __init__(self, port: int, max_connections: int = 512) -> None:
        self.port = port
        self.max_connections = max_connections
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.open = 0

    async def post(self, path: str, body: bytes, timeout: float = 10.0) -> int:
        now = time.monotonic()
        while self.idle and now - self.idle[-1][2] > IDLE_REUSE_S:  # the server may close it
            self.idle.pop()[1].close()
            self.open -= 1
        if self.idle:
            reader, writer, _ = self.idle.pop()
            conn = (reader, writer)
        else:
            self.open += 1
            try:
                conn = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                self.open -= 1
                return -1
        reader, writer = conn
        try:
            writer.write(
                b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
            )
            status, close = await asyncio.wait_for(self._read(reader), timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            writer.close()
            self.open -= 1
            return -1
        if close:
            writer.close()
            self.open -= 1
        else:
            self.idle.append((reader, writer, time.monotonic()))
        return status

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[int, bool]:
        """(status, whether the server closes the connection); the body is read and dropped."""
        status = int((await reader.readline()).split()[1])
        length, close = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        await reader.readexactly(length)
        return status, close

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


async def run_step(
    client: Client, bodies: Sequence[bytes], rate: float, seconds: float, offset: int = 0
) -> StepResult:
    """Open loop: request i is due at start + i / rate; latency counts from when it was due."""
    n = max(1, int(rate * seconds))
    latencies = np.full(n, np.nan)
    statuses = np.zeros(n, dtype=np.int64)
    reject_latency: list[float] = []
    clock = time.perf_counter  # not loop.time(): uvloop's advances in whole milliseconds
    start = clock() + 0.05

    async def one(i: int) -> None:
        due = start + i / rate
        sent = clock()
        status = await client.post("/v1/retrieve", bodies[(offset + i) % len(bodies)])
        done = clock()
        statuses[i] = status
        latencies[i] = done - due
        if status == 429:
            reject_latency.append(done - sent)

    # No collector passes in the client while it times requests: one over the step's tasks
    # stopped it for up to 78 ms (measured), then it sent the overdue requests in one burst.
    gc.disable()
    try:
        tasks = []
        for i in range(n):
            delay = start + i / rate - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
        elapsed = clock() - start
    finally:
        gc.enable()
    ok = int((statuses == 200).sum())
    rejected = int((statuses == 429).sum())
    ms = 1000 * latencies
    return StepResult(
        target_rps=rate,
        achieved_rps=ok / elapsed,
        sent=n,
        ok=ok,
        rejected=rejected,
        errors=n - ok - rejected,
        p50_ms=float(np.percentile(ms, 50)),
        p95_ms=float(np.percentile(ms, 95)),
        p99_ms=float(np.percentile(ms, 99)),
        reject_p99_ms=float(np.percentile(reject_latency, 99) * 1000) if reject_latency else 0.0,
    )


def run_load(coro: Coroutine[Any, Any, T]) -> T:
    """Run a load-generating coroutine to completion, on uvloop when it is installed (the client
    then takes less of the cores it shares with the server under test).

    First the garbage collector collects what earlier phases left (the in-process limit's model
    and index) and freezes everything alive: a full collection in the client over those objects
    stopped it for about 100 ms (measured), after which it sent the overdue requests in one
    burst, and the burst, not the server, made the latency and 429s of that moment (`run_step`
    also keeps the collector off while it times requests)."""
    gc.collect()
    gc.freeze()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def ladder(
    port: int, bodies: Sequence[bytes], rates: Sequence[float], seconds: float, label: str
) -> list[StepResult]:
    """Each rate in turn; stops after the first rate whose p99 passes 4x the bound."""
    client = Client(port)
    results = []
    offset = 0
    try:
        await run_step(client, bodies, min(rates[0], 20.0), 1.0, offset)  # connections, warm-up
        for rate in rates:
            step = await run_step(client, bodies, rate, seconds, offset)
            offset += step.sent
            results.append(step)
            print(format_step(label, step), flush=True)
            if step.p99_ms > 4 * P99_BOUND_MS:
                break
            await asyncio.sleep(0.5)  # let queues drain between steps
    finally:
        client.close()
    return results


def format_step(label: str, s: StepResult) -> str:
    return (
        f"{label:9s} target {s.target_rps:7.0f}/s achieved {s.achieved_rps:7.1f}/s  "
        f"p50 {s.p50_ms:7.1f}  p95 {s.p95_ms:7.1f}  p99 {s.p99_ms:8.1f} ms  "
        f"429 {s.rejected:5d}  errors {s.errors:4d}" + ("  ok" if s.sustained() else "")
    )


def best_rate(steps: Sequence[StepResult]) -> StepResult | None:
    ok = [s for s in steps if s.sustained()]
    return max(ok, key=lambda s: s.achieved_rps) if ok else None


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
        help="comma-separated request rates per second (default 25,50,100,150,200,250,300,400,500,"
        "600,700,800,900,1000,1200; --quick: 25,100,200,400)",
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
    p.add_argument("--quick", action="store_true", help="50k items, a short ladder (~2 min)")
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-naive", action="store_true", help="only uniserve (no comparison)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.items = 50_000 if args.items == 1_000_000 else args.items
    rates = (
        [float(r) for r in args.rates.split(",")]
        if args.rates
        else (
            [25, 100, 200, 400]
            if args.quick
            else [25, 50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 800, 900, 1000, 1200]
        )
    )
    seconds = args.seconds or (4.0 if args.quick else 10.0)
    started = time.perf_counter()
    data_dir = prepare_artifacts(
        args.work_dir, args.items, index_type=args.index_type, seed=args.seed
    )
    # every phase sends bodies no earlier phase sent, so only the cache-hit phase hits the cache:
    # the ladder (each rate for `seconds`, plus warm-up), then 2x and 0.5x the best rate
    ladder_bodies = int(sum(rates) * seconds * 1.1) + 100
    n_bodies = ladder_bodies + int(2.5 * max(rates) * seconds * 1.1) + 200
    bodies = request_bodies(args.items, n_bodies, seed=args.seed)
    print(f"[setup] {len(bodies):,} request bodies, {HISTORY_LEN} events each", flush=True)

    import torch

    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    limit = inprocess_limit(data_dir, bodies[: 64 * 40], args.batch)
    print(
        f"[in-process] {limit['rps']:.0f} histories/s in batches of {args.batch} "
        f"(encode {limit['encode_ms_per_batch']:.1f} ms + search "
        f"{limit['search_ms_per_batch']:.1f} ms per batch)",
        flush=True,
    )
    env = {"UNISERVE_BATCH_MAX_SIZE": str(args.batch)}
    result: dict[str, Any] = {
        "items": args.items,
        "index_type": args.index_type,
        "threads": args.threads,
        "history_len": HISTORY_LEN,
        "p99_bound_ms": P99_BOUND_MS,
        "inprocess_limit_rps": round(limit["rps"], 1),
        "inprocess": limit,
    }
    with server("uniserve", data_dir, args.threads, env) as srv:
        steps = run_load(ladder(srv.port, bodies, rates, seconds, "uniserve"))
        best = best_rate(steps)
        result["service_steps"] = [asdict(s) for s in steps]
        result["service_max_rps_at_p99_50ms"] = round(best.achieved_rps, 1) if best else 0.0
        result["service_p50_ms"] = round(best.p50_ms, 2) if best else None
        result["service_p99_ms"] = round(best.p99_ms, 2) if best else None
        result["errors"] = sum(s.errors for s in steps)
        sustainable = best.target_rps if best else rates[0]
        result["overload"] = run_load(
            overload(srv, bodies, sustainable, seconds, offset=ladder_bodies)
        )
        result["cache_hit"] = run_load(cache_hits(srv.port, bodies, sustainable, seconds))
    if not args.skip_naive:
        with server("naive", data_dir, args.threads, {}) as srv:
            steps = run_load(ladder(srv.port, bodies, rates, seconds, "naive"))
            best = best_rate(steps)
            result["naive_steps"] = [asdict(s) for s in steps]
            result["naive_max_rps_at_p99_50ms"] = round(best.achieved_rps, 1) if best else 0.0
    result["seconds"] = round(time.perf_counter() - started, 1)
    print_summary(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


async def overload(
    srv: Server, bodies: Sequence[bytes], sustainable: float, seconds: float, offset: int
) -> dict[str, Any]:
    """2x the sustainable rate, then half of it: 429 latency, RSS, and recovery; bodies from
    `offset` on (none sent before, so no cache hits)."""
    client = Client(srv.port)
    rss_before = srv.rss_mb()
    hot = await run_step(client, bodies, 2 * sustainable, seconds, offset=offset)
    rss_after = srv.rss_mb()
    await asyncio.sleep(0.5)
    calm = await run_step(client, bodies, sustainable / 2, seconds, offset=offset + hot.sent)
    client.close()
    print(format_step("2x load", hot), flush=True)
    print(format_step("recovery", calm), flush=True)
    return {
        "rate": 2 * sustainable,
        "step": asdict(hot),
        "reject_p99_ms": round(hot.reject_p99_ms, 2),
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_after": round(rss_after, 1),
        "recovery_step": asdict(calm),
        "recovered": calm.sustained(),
    }


async def cache_hits(
    port: int, bodies: Sequence[bytes], rate: float, seconds: float
) -> dict[str, Any]:
    """The same 200 requests over and over (warmed once first): the cache-hit path."""
    client = Client(port)
    repeated = list(bodies[:200])
    for body in repeated:
        await client.post("/v1/retrieve", body)
    steps = []
    for r in (rate, 2 * rate, 4 * rate):
        step = await run_step(client, repeated, r, seconds)
        print(format_step("cache hit", step), flush=True)
        steps.append(asdict(step))
    client.close()
    return {"steps": steps}


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


def naive_serve(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m service.bench.service naive-serve")
    p.add_argument("data_dir", type=Path)
    p.add_argument("port", type=int)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    import faiss
    import torch
    import uvicorn

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    uvicorn.run(naive_app(args.data_dir), host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["naive-serve"]:
        sys.exit(naive_serve(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
