"""The services `uniserve bench service` measures beside uniserve, each a module run as its own
process (`python -m service.bench.peers.NAME DATA_DIR PORT [options]`) over the same
`pipeline.Pipeline`: the naive FastAPI service and three serving frameworks with their own
dynamic batchers. `PEERS` says, per peer, what it runs, where its retrieve route is, how a
retrieve body is put on its wire and read back, and which documentation page it follows.

Nothing here imports a framework: `unavailable` asks the peer's own interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
TRITON_VENV = REPO / ".venv-triton"  # made by scripts/setup_triton_venv.sh (numpy<2)


@dataclass(frozen=True)
class PeerOptions:
    """The serving settings every batching peer gets alike: torch and FAISS threads per
    process, the largest batch, how long a batch waits for more requests after its first, and
    how many model processes / replicas / instances serve."""

    threads: int = 1
    batch: int = 64
    wait_ms: float = 5.0
    workers: int = 1

    def argv(self) -> list[str]:
        return [
            *("--threads", str(self.threads), "--batch", str(self.batch)),
            *("--wait-ms", str(self.wait_ms), "--workers", str(self.workers)),
        ]


def parse_argv(prog: str, argv: list[str]) -> tuple[Path, int, PeerOptions]:
    """A peer module's command line: DATA_DIR PORT and `PeerOptions.argv()`."""
    p = argparse.ArgumentParser(prog=f"python -m {prog}")
    p.add_argument("data_dir", type=Path)
    p.add_argument("port", type=int)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--wait-ms", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args(argv)
    return a.data_dir, a.port, PeerOptions(a.threads, a.batch, a.wait_ms, a.workers)


def json_items(answer: Any) -> list[tuple[str, float]]:
    """(item id, score) pairs of a `{"items": [...]}` answer."""
    return [(item["item_id"], float(item["score"])) for item in answer["items"]]


def same_body(body: bytes) -> bytes:
    return body


def kserve_request(body: bytes) -> bytes:
    """A retrieve body as a KServe v2 inference request (Triton's HTTP/JSON protocol): one
    request of batch 1, the history as two BYTES tensors (1, T) and k as INT32 (1, 1)."""
    request = json.loads(body)
    events = request["events"]

    def tensor(name: str, datatype: str, data: list[Any]) -> dict[str, Any]:
        return {"name": name, "shape": [1, len(data)], "datatype": datatype, "data": data}

    inputs = [
        tensor("history_ids", "BYTES", [str(e["item_id"]) for e in events]),
        tensor("history_surfaces", "BYTES", [e.get("surface") or "" for e in events]),
        tensor("k", "INT32", [int(request.get("k", 10))]),
    ]
    return json.dumps({"inputs": inputs}).encode()


def kserve_items(answer: Any) -> list[tuple[str, float]]:
    """(item id, score) pairs of a KServe v2 answer; "" ids pad a row shorter than its batch's."""
    outputs = {out["name"]: out["data"] for out in answer["outputs"]}
    pairs = zip(outputs["item_ids"], outputs["scores"], strict=True)
    return [(item_id, float(score)) for item_id, score in pairs if item_id]


@dataclass(frozen=True)
class Peer:
    name: str
    module: str  # run as `python -m module DATA_DIR PORT [PeerOptions.argv()]`
    path: str  # where a retrieve is POSTed
    imports: tuple[str, ...]  # what its interpreter must import to run it
    install: str  # how to get them
    doc: str  # the documentation page its batching follows
    to_wire: Callable[[bytes], bytes] = same_body  # a uniserve retrieve body as its request
    read: Callable[[Any], list[tuple[str, float]]] = json_items  # its parsed answer

    def python(self) -> str:
        """The interpreter that runs it: PyTriton needs numpy<2, so its own virtualenv when
        `scripts/setup_triton_venv.sh` made one; this one otherwise."""
        venv_python = TRITON_VENV / "bin" / "python"
        if self.name == "triton" and venv_python.exists():
            return str(venv_python)
        return sys.executable

    def unavailable(self, python: str | None = None) -> str | None:
        """None when `python` (default `self.python()`) imports what the peer needs; else the
        exact error its import raised, and how to install it."""
        python = python or self.python()
        code = "; ".join(f"import {module}" for module in self.imports)
        try:
            done = subprocess.run(
                [python, "-c", code], capture_output=True, text=True, timeout=300, env=peer_env()
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{python}: {exc} ({self.install})"
        if done.returncode == 0:
            return None
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return f"{python}: {lines[-1] if lines else done.returncode} ({self.install})"


def peer_env() -> dict[str, str]:
    """The environment a peer runs in: this checkout first on the path (Ray's workers import
    the peer's module by name), and no usage reports from Ray (the machine is offline)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0"}


PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in (
        Peer(
            "naive",
            "service.bench.peers.naive",
            "/v1/retrieve",
            ("fastapi", "uvicorn"),
            "pip install -e .",
            "https://fastapi.tiangolo.com/async/ (a plain `def` route runs in the thread pool)",
        ),
        Peer(
            "triton",
            "service.bench.peers.triton",
            "/v2/models/retrieve/infer",
            ("pytriton",),
            "scripts/setup_triton_venv.sh: nvidia-pytriton needs numpy<2, so it gets its own venv",
            "https://triton-inference-server.github.io/pytriton/latest/binding_configuration/",
            to_wire=kserve_request,
            read=kserve_items,
        ),
        Peer(
            "ray",
            "service.bench.peers.ray_serve",
            "/v1/retrieve",
            ("ray.serve",),
            "pip install -e '.[bench]' (ray[serve])",
            "https://docs.ray.io/en/latest/serve/advanced-guides/dyn-req-batch.html",
        ),
        Peer(
            "litserve",
            "service.bench.peers.litserve",
            "/v1/retrieve",
            ("litserve",),
            "pip install -e '.[bench]' (litserve)",
            "https://lightning.ai/docs/litserve/features/batching",
        ),
    )
}
BATCHING_PEERS = ("triton", "ray", "litserve")
