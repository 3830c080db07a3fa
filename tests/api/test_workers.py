"""Several worker processes on one port (`UNISERVE_WORKERS`, `service.api.runner.supervise`):
the metrics every worker answers for all, the Redis requirement, the memory-mapped index, and
a real `uniserve serve --workers 2` over a real redis-server: both workers serve, one killed is
replaced without a failed request, SIGTERM stops all with status 0, SIGKILL of the supervisor
takes the workers with it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from index.item_index import ItemIndex
from service.api.workers import STALE_SECONDS, Worker, WorkerMetrics
from service.bench.servers import descendants
from service.settings import Settings
from tests.helpers import (
    REDIS_SERVER,
    RedisServer,
    copy_data,
    free_port,
    start_serve,
    stop,
    wait_until_ok,
)

RETRIEVE = {"events": [{"item_id": "1", "surface": "feed"}], "k": 3}


def _worker_registry(requests: float, limit: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("demo_requests", "requests", ["route"], registry=registry).labels("/a").inc(requests)
    Gauge("demo_limit", "limit", registry=registry).set(limit)
    return registry


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_each_worker_answers_with_every_workers_series(tmp_path: Path) -> None:
    first = WorkerMetrics(Worker(0, 3, tmp_path), _worker_registry(5, 40))
    second = WorkerMetrics(Worker(1, 3, tmp_path), _worker_registry(7, 12))
    second.publish()  # the third worker has not published yet: left out, no error
    samples = _samples(first.exposition())
    assert samples == {
        ("demo_requests_total", (("route", "/a"), ("worker", "0"))): 5.0,
        ("demo_requests_total", (("route", "/a"), ("worker", "1"))): 7.0,
        ("demo_limit", (("worker", "0"),)): 40.0,
        ("demo_limit", (("worker", "1"),)): 12.0,
    }
    # one HELP / TYPE per family, as Prometheus requires
    text = first.exposition().decode()
    assert text.count("# TYPE demo_requests_total counter") == 1
    assert text.count("# TYPE demo_limit gauge") == 1


def test_a_stale_workers_file_is_left_out(tmp_path: Path) -> None:
    first = WorkerMetrics(Worker(0, 2, tmp_path), _worker_registry(5, 40))
    second = WorkerMetrics(Worker(1, 2, tmp_path), _worker_registry(7, 12))
    second.publish()
    old = time.time() - STALE_SECONDS - 1
    os.utime(second.worker.metrics_file(), (old, old))
    workers = {labels for _, labels in _samples(first.exposition())}
    assert workers == {(("route", "/a"), ("worker", "0")), (("worker", "0"),)}
    second.remove()
    assert not second.worker.metrics_file().exists()


def test_more_than_one_worker_needs_redis() -> None:
    with pytest.raises(ValidationError, match="workers=2 needs redis_url"):
        Settings(workers=2)
    assert Settings(workers=2, redis_url="redis://127.0.0.1:6379/0").workers == 2


def test_the_index_file_is_memory_mapped(uniserve_data_dir: Path) -> None:
    versions = uniserve_data_dir / "indexes" / "versions"
    directory = next(p for p in versions.iterdir() if (p / "index.faiss").is_file())
    mapped_before = _mapped(directory / "index.faiss")
    index = ItemIndex.load(directory)
    assert _mapped(directory / "index.faiss") > mapped_before  # its pages are the file's
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((4, index.dim)).astype(np.float32)
    scores, rows = index.faiss_index.search(queries, 5)
    assert (rows >= 0).all() and np.isfinite(scores).all()


def _mapped(path: Path) -> int:
    """Mappings of `path` in this process."""
    target = str(path.resolve())
    return sum(line.rstrip().endswith(target) for line in open("/proc/self/maps"))


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_two_workers_serve_one_port(uniserve_data_dir: Path, tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path).start()
    data = copy_data(uniserve_data_dir, tmp_path / "data")
    port, log = free_port(), tmp_path / "serve.log"
    args = ["--no-bootstrap", "--data-dir", str(data), "--port", str(port), "--workers", "2"]
    proc = start_serve(
        [*args, "--log-level", "warning"], log, {"UNISERVE_REDIS_URL": redis_server.url}
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(f"{base}/readyz", proc, log, 180)
        workers = _workers(proc.pid)
        assert len(workers) == 2
        for _ in range(40):  # a fresh connection each: the kernel hands them to either worker
            assert httpx.post(f"{base}/v1/retrieve", json=RETRIEVE, timeout=10).status_code == 200
        served = _retrieves_by_worker(base)
        assert set(served) == {"0", "1"} and sum(served.values()) == 40

        os.kill(workers[0], signal.SIGKILL)
        for _ in range(20):  # the other worker answers meanwhile
            assert httpx.post(f"{base}/v1/retrieve", json=RETRIEVE, timeout=10).status_code == 200
        deadline = time.monotonic() + 120
        while len(replaced := _workers(proc.pid)) < 2 or workers[0] in replaced:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert "worker 0 exited with -9; starting another" in log.read_text()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert not [pid for pid in replaced if _alive(pid)]
    finally:
        stop(proc)
        redis_server.stop()


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_workers_die_with_their_supervisor(uniserve_data_dir: Path, tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path).start()
    port, log = free_port(), tmp_path / "serve.log"
    args = ["--no-bootstrap", "--data-dir", str(uniserve_data_dir), "--port", str(port)]
    env = {"UNISERVE_REDIS_URL": redis_server.url, "UNISERVE_WORKERS": "2"}
    proc = start_serve([*args, "--log-level", "warning"], log, env)
    try:
        wait_until_ok(f"http://127.0.0.1:{port}/readyz", proc, log, 180)
        workers = _workers(proc.pid)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, "a worker outlived its supervisor"
            time.sleep(0.2)
    finally:
        stop(proc)
        redis_server.stop()


def _workers(supervisor: int) -> list[int]:
    """The supervisor's worker processes (spawned; multiprocessing's resource tracker is not
    one)."""
    return [
        pid
        for pid in descendants(supervisor)
        if "spawn_main" in (cmd := _cmdline(pid)) and "resource_tracker" not in cmd
    ]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _retrieves_by_worker(base: str) -> dict[str, float]:
    """Successful retrieves per worker label, from a scrape of any one worker, once every
    worker's series are published."""
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(f"{base}/metrics", timeout=10).content
        served = {
            labels["worker"]: value
            for (name, items), value in _samples(text).items()
            if name == "uniserve_requests_total"
            and (labels := dict(items))["route"] == "/v1/retrieve"
            and labels["status"] == "2xx"
        }
        if sum(served.values()) >= 40 or time.monotonic() > deadline:
            return served
        time.sleep(0.3)
