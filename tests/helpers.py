"""What several test suites share: free loopback ports (the benchmark's `free_port`, imported),
a copy of the session's artifacts, a started `uniserve serve` process (and waiting for a URL to
answer), a real `redis-server` (`RedisServer`), `BlockedEmbedder` and `publish_halves` (two
index versions over the two halves of a model's catalogue).

Fixtures live in `tests/conftest.py`; plain helpers here, imported as `tests.helpers`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import redis

from models.corpus import Corpus, EvalSet, ItemTable, Sequences
from service.bench.servers import free_port as free_port  # re-exported: one definition

if TYPE_CHECKING:
    from models.embedder import Embedder

REPO = Path(__file__).resolve().parents[1]
REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")  # ships with redis-server


def copy_data(source: Path, target: Path) -> Path:
    """A private copy of a data dir (model + index root) a test may damage or republish."""
    shutil.copytree(source, target)
    return target


def start_serve(
    args: list[str], log: Path, env: dict[str, str | None] | None = None
) -> subprocess.Popen[bytes]:
    """`uniserve serve ARGS` as a real subprocess (output to `log`): no CURRENT watcher and one
    torch thread unless `env` says otherwise (a None value unsets that variable). Wait for it
    with `wait_until_ok`."""
    merged: dict[str, str | None] = {
        **os.environ,
        "UNISERVE_INDEX_POLL_SECONDS": "0",
        "UNISERVE_TORCH_THREADS": "1",
        **(env or {}),
    }
    full_env = {name: value for name, value in merged.items() if value is not None}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", *args],
            cwd=REPO,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_until_ok(url: str, proc: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    """Return once `url` answers 200; raise with the log's tail when `proc` exits or `seconds`
    pass first (a bound: a startup imports torch on a busy machine)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 in {seconds} s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it does not exit in 20 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class RedisServer:
    """A real redis-server on a free loopback port with its files in `directory`."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.directory = directory
        self.args = args
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        log = (self.directory / "redis.log").open("ab")
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        self.proc = subprocess.Popen(
            [REDIS_SERVER, *args, "--save", "", "--appendonly", "no", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return self
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start; see {log.name}") from None
                time.sleep(0.02)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9: no shutdown, no goodbye to clients."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGCONT)  # a stopped server cannot act on SIGTERM
            self.proc.terminate()
            self.proc.wait(10)


class RedisClusterServers:
    """A real Redis Cluster on loopback: `masters` `redis-server --cluster-enabled yes` nodes
    (free client and bus ports, each node's files in its own folder of `directory`, no
    persistence), joined with `redis-cli --cluster create` and waited on until every node says
    `cluster_state:ok`. A node killed can be started again on its port: its nodes.conf brings
    it back into the cluster with its slots (empty: nothing was persisted)."""

    def __init__(self, directory: Path, masters: int = 3, node_timeout_ms: int = 1000) -> None:
        self.nodes: list[RedisServer] = []
        for i in range(masters):
            folder = directory / f"node{i}"
            folder.mkdir()
            args = {
                "--cluster-enabled": "yes",
                "--cluster-port": str(free_port()),  # the bus: not port + 10000, maybe > 65535
                "--cluster-config-file": "nodes.conf",
                "--cluster-node-timeout": str(node_timeout_ms),
                # a dead master's slots fail alone, the others keep answering
                "--cluster-require-full-coverage": "no",
            }
            self.nodes.append(RedisServer(folder, *(x for pair in args.items() for x in pair)))

    @property
    def url(self) -> str:
        """The service's URL: one node; the client finds the others."""
        return self.nodes[0].url

    def start(self) -> RedisClusterServers:
        if REDIS_SERVER is None or REDIS_CLI is None:
            raise RuntimeError(
                "redis-server and redis-cli are needed for the Redis Cluster tests "
                "(.ci/run installs them: apt-get install redis-server)"
            )
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        create = [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
        self.wait_ok()
        return self

    def running(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def wait_ok(self, seconds: float = 20) -> None:
        """Until every running node reports cluster_state:ok."""
        deadline = time.monotonic() + seconds
        while not all(n.client().cluster("info")["cluster_state"] == "ok" for n in self.running()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach cluster_state:ok in {seconds} s")
            time.sleep(0.05)

    def node_of(self, key: str | bytes) -> RedisServer:
        """The node serving `key`'s hash slot (asked of a running node)."""
        asked = self.running()[0]
        slot = int(asked.client().cluster("keyslot", key))
        for start, end, (_host, port, *_), *_replicas in asked.client().cluster("slots"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no node serves slot {slot} of {key!r}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class BlockedEmbedder:
    """Stands in for a model stuck in a long forward pass: holds the encode worker until
    `release` is set (tests that need a request held in progress)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def user_vectors(self, histories: Any, batch_size: int = 0) -> np.ndarray:
        self.release.wait(10)
        return np.zeros((len(histories), 1), np.float32)


def publish_halves(root: Path, embedder: Embedder) -> tuple[str, str, dict[str, set[str]]]:
    """Publish two HNSW versions under `root`, the even and the odd catalogue rows of
    `embedder`'s items (neither made CURRENT): (first version, second version, {version: its
    item ids}), so every answer shows which version served it."""
    ids = np.asarray(embedder.item_ids, dtype=object)
    items: dict[str, set[str]] = {}
    names = []
    for rows in (np.arange(0, len(ids), 2), np.arange(1, len(ids), 2)):
        version = publish_rows(root, embedder, rows, "HNSW32")
        items[version] = set(ids[rows].tolist())
        names.append(version)
    return names[0], names[1], items


def publish_rows(root: Path, embedder: Embedder, rows: np.ndarray | None, index_type: str) -> str:
    """Publish an index of `embedder`'s catalogue `rows` (None: all) under `root` (not made
    CURRENT); returns its version."""
    from index import build_index, publish

    rows = np.arange(len(embedder.item_ids)) if rows is None else rows
    index = build_index(
        embedder.item_vectors()[rows],
        np.asarray(embedder.item_ids, dtype=object)[rows],
        np.asarray(embedder.item_surfaces, dtype=object)[rows],
        index_type=index_type,
    )
    manifest = publish(
        index,
        root,
        model_fingerprint=embedder.fingerprint,
        model_version=embedder.version,
        keep=100,
    )
    return manifest.version


def ring_corpus(n_items: int = 40, n_users: int = 120, seed: int = 0) -> Corpus:
    """Users walk a ring of items (i -> i+1 -> i+2 ...), so the next item is predictable."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"i{i}" for i in range(n_items)], dtype=object)
    items = ItemTable(ids, np.array([""] * n_items, dtype=object), text={"tags": ids.copy()})
    seqs = []
    for _ in range(n_users):
        start, length = rng.integers(n_items), rng.integers(5, 12)
        seqs.append([f"i{(start + k) % n_items}" for k in range(length)])

    def evalset(cut: int) -> EvalSet:
        hist = [s[: len(s) - cut - 1] for s in seqs]
        return EvalSet(
            Sequences.from_lists(
                [f"u{u}" for u in range(n_users)], hist, [[""] * len(h) for h in hist]
            ),
            np.array([s[len(s) - cut - 1] for s in seqs], dtype=object),
            np.array([""] * n_users, dtype=object),
            np.array(["all"] * n_users, dtype=object),
        )

    train_seqs = [s[:-2] for s in seqs]
    train = Sequences.from_lists(
        [f"u{u}" for u in range(n_users)], train_seqs, [[""] * len(s) for s in train_seqs]
    )
    return Corpus("ring", items, train, evalset(1), evalset(0))


def blend_term(embedder: Embedder, item_ids: Sequence[str], history: Sequence[str]) -> np.ndarray:
    """(M,) the served blend's term (`models.blend`) of each item id for a history (oldest
    first), by the id's row in the model: 0 for ids the model lacks, and everywhere when the
    model is served without a blend. Add it to a model score to get the served score."""
    if embedder.blend is None or not history:
        return np.zeros(len(item_ids), np.float32)
    rows = embedder.item_rows(list(item_ids))
    return embedder.blend.row_bonus(embedder.vocab, list(history), rows)
