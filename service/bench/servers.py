"""The services under test, each in a subprocess on a free loopback port until it answers:
uniserve (`uniserve serve`) and the peers of `service.bench.peers` (the naive service, PyTriton,
Ray Serve, LitServe), each by its own interpreter. A started service is a `Server`: its port,
retrieve path and wire (how a retrieve body is put in its request), and the memory of its
whole process tree."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from service.bench.peers import PEERS, PeerOptions, peer_env

READY_TIMEOUT_S = 600.0  # a 1M-item index and model load on a busy 2-core machine
# a readiness probe: one event of an item no model knows (the encoder maps it to UNK)
PROBE_BODY = b'{"events": [{"item_id": "probe", "surface": "feed"}], "k": 1}'


# ------------------------------------------------------------------------------ servers
def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called `name` in the Prometheus exposition `text`."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


@dataclass(frozen=True)
class Server:
    kind: str
    port: int
    pid: int
    path: str = "/v1/retrieve"  # where a retrieve is POSTed
    wire: Callable[[bytes], bytes] | None = None  # a retrieve body as its request; None: as is

    def bodies(self, bodies: Sequence[bytes]) -> list[bytes]:
        """Retrieve bodies as this service's requests (made between load steps, not timed)."""
        return list(bodies) if self.wire is None else [self.wire(b) for b in bodies]

    def rss_mb(self) -> float:
        """Resident memory of the service's process and all its descendants (a peer's workers,
        replicas, Triton server and stubs, Ray's daemons), MB."""
        pids = [self.pid, *descendants(self.pid)]
        total = [rss_kb(pid) for pid in pids]
        known = [kb for kb in total if kb is not None]
        return sum(known) / 1024 if known else float("nan")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the service's process and its live descendants have used
        so far, seconds; the difference over a step is what the step cost the service."""
        ticks = [cpu_ticks(pid) for pid in [self.pid, *descendants(self.pid)]]
        return sum(t for t in ticks if t is not None) / os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int | None:
    """User + system CPU time of one process so far, in clock ticks (None: it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "(comm) ": state is field 0
    return int(fields[11]) + int(fields[12])  # utime, stime: stat(5) fields 14 and 15


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])  # after "(comm) state "
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@contextlib.contextmanager
def server(
    kind: str,
    data_dir: Path,
    threads: int,
    extra_env: dict[str, str],
    *,
    options: PeerOptions | None = None,
    python: str | None = None,
    log: Path | None = None,
) -> Iterator[Server]:
    """Run uniserve (`kind` "uniserve") or the peer `kind` of `PEERS` in a subprocess (its own
    process group) until it answers, with `threads` torch / FAISS threads; a peer also takes
    `options` (batch size and wait, workers) and runs under `python` (default its own).
    Output goes to `log` (default a temporary file); if it exits before answering, or does not
    answer in READY_TIMEOUT_S, RuntimeError carries the log's tail."""
    port = free_port()
    if kind == "uniserve":
        env = {**os.environ, **thread_env(threads), **extra_env}
        env.update(
            UNISERVE_DATA_DIR=str(data_dir),
            UNISERVE_BOOTSTRAP="false",
            UNISERVE_INDEX_POLL_SECONDS="0",
            UNISERVE_TORCH_THREADS=str(threads),
            UNISERVE_FAISS_THREADS=str(threads),
        )
        cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
        cmd += ["--log-level", "warning"]
        path, wire = "/v1/retrieve", None
        probe = b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    else:
        peer = PEERS[kind]
        env = {**peer_env(), **thread_env(threads), **extra_env}
        opts = PeerOptions(threads=threads) if options is None else options
        cmd = [python or peer.python(), "-m", peer.module, str(data_dir), str(port), *opts.argv()]
        path, wire = peer.path, peer.to_wire
        body = peer.to_wire(PROBE_BODY)
        probe = (
            b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (peer.path.encode(), len(body), body)
        )
    own_log = log is None
    if log is None:
        log = Path(tempfile.mkstemp(prefix=f"uniserve-bench-{kind}-", suffix=".log")[1])
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (answer := _probe(port, probe)).startswith(b"HTTP/1.1 200"):
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} exited with {proc.returncode}: {_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{kind} not ready after {READY_TIMEOUT_S:.0f} s (last answer "
                    f"{answer[:300]!r}): {_tail(log)}"
                )
            time.sleep(0.5)
        yield Server(kind, port, proc.pid, path, wire)
    finally:
        stop(proc)
        if own_log:
            log.unlink(missing_ok=True)


@contextlib.contextmanager
def redis_server(log: Path) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port (no persistence): its URL, until the
    context exits. RuntimeError when redis-server is not installed or does not answer."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        ping = b"PING\r\n"
        deadline = time.monotonic() + 10
        while not _probe(port, ping).startswith(b"+PONG"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {_tail(log)}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (each framework shuts down its own workers), then SIGKILL to whatever is left
    of the process group it was started in."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _probe(port: int, request: bytes) -> bytes:
    """The start of the server's answer to `request`; b"" when it does not answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(30)  # a first request may load lazily
            s.sendall(request)
            return s.recv(1024)
    except OSError:
        return b""


def _tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
