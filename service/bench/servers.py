"""The services under test, each in a subprocess on a free loopback port: uniserve (`uniserve
serve`) and the naive service (`naive_app`, run by `python -m service.bench.servers
naive-serve`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
            "service.bench.servers",
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


def naive_serve(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m service.bench.servers naive-serve")
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
    if sys.argv[1:2] != ["naive-serve"]:
        sys.exit("usage: python -m service.bench.servers naive-serve DATA_DIR PORT [--threads N]")
    sys.exit(naive_serve(sys.argv[2:]))
