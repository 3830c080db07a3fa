"""The shadow's worker process (`service.core.shadow_worker`) over the session's real model and
index: its top-k equal to the engine's own for the same version and queries, its threads at
idle priority, a version that does not load raising the load's own error, a killed worker
failing its calls in flight and later ones, and no process left behind: after `aclose`, after
a refused load, and when the parent process dies."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import anyio.to_thread
import pytest

from index import IndexRejectedError, RejectReason, current_version
from service.bench.servers import descendants
from service.core.engine import Admission, Engine
from service.core.filters import Filters
from service.core.reloader import open_engine, reason_of
from service.core.shadow_worker import Query, ShadowWorker, ShadowWorkerError, top_k
from service.settings import Settings
from tests.helpers import copy_data, free_port, start_serve, stop, wait_until_ok


def settings_of(data: Path) -> Settings:
    return Settings(data_dir=data, bootstrap=False, index_poll_seconds=0)


def version_of(settings: Settings) -> str:
    version = current_version(settings.index_path)
    assert version is not None
    return version


def gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie waiting for a parent that is not us)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return gone(pid)


def queries(engine: Engine, n: int, seed: int = 0) -> list[Query]:
    """Histories of catalogue items with their surfaces, under each kind of filter."""
    rng = random.Random(seed)
    ids = [str(i) for i in engine.embedder.item_ids]
    surface_of = dict(zip(ids, map(str, engine.embedder.item_surfaces), strict=True))
    surfaces = sorted(set(surface_of.values()))
    out = []
    for q in range(n):
        items = rng.sample(ids, 1 + q % 6)
        filters = [
            Filters(),
            Filters.of(surfaces=surfaces[:1]),
            Filters.of(exclude=rng.sample(ids, 5)),
        ][q % 3]
        out.append(Query(items, [surface_of[i] for i in items], 10, filters, q % 2 == 0))
    return out


@pytest.mark.anyio
async def test_the_worker_answers_the_engines_top_k_at_idle_priority(
    uniserve_data_dir: Path,
) -> None:
    settings = settings_of(uniserve_data_dir)
    engine = await anyio.to_thread.run_sync(
        open_engine, settings, Admission.from_settings(settings)
    )
    worker = await ShadowWorker.start(settings, version_of(settings))
    try:
        assert worker.pid != os.getpid()
        assert (worker.index_version, worker.model_version) == (
            engine.index_version,
            engine.model_version,
        )
        tids = [int(t) for t in os.listdir(f"/proc/{worker.pid}/task")]
        policies = {os.sched_getscheduler(t) for t in tids}
        assert policies == {os.SCHED_IDLE} or all(
            os.getpriority(os.PRIO_PROCESS, t) == 19 for t in tids
        )
        asked = queries(engine, 24)
        answers = await asyncio.gather(*(worker.top_k(q) for q in asked))  # batched there
        for query, answer in zip(asked, answers, strict=True):
            assert answer == await top_k(engine, query), query
            assert len(answer) == query.k
    finally:
        await worker.aclose()
        await engine.admission.aclose()
    assert gone(worker.pid) and worker.process.exitcode == 0  # exited by itself, not killed
    assert not worker.alive


@pytest.mark.anyio
async def test_a_version_that_does_not_load_raises_its_error_and_leaves_no_process(
    uniserve_data_dir: Path,
) -> None:
    with pytest.raises(IndexRejectedError) as refused:
        await ShadowWorker.start(settings_of(uniserve_data_dir), "20000101T000000000000Z-deadbe")
    assert reason_of(refused.value) == RejectReason.NOT_FOUND and "deadbe" in str(refused.value)
    assert not [p for p in multiprocessing.active_children() if "shadow" in p.name]


@pytest.mark.anyio
async def test_a_killed_worker_fails_its_calls_in_flight_and_every_later_one(
    uniserve_data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_of(uniserve_data_dir)
    worker = await ShadowWorker.start(settings, version_of(settings))
    query = Query(["1", "2"], ["", ""], 5, Filters(), False)
    assert len(await worker.top_k(query)) == 5
    os.kill(worker.pid, signal.SIGSTOP)  # it reads nothing more: the next call stays in flight
    in_flight = asyncio.create_task(worker.top_k(query))
    await asyncio.sleep(0.2)
    assert not in_flight.done()
    os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(ShadowWorkerError, match="exited"):
        await asyncio.wait_for(in_flight, 30)
    with pytest.raises(ShadowWorkerError, match="exited"):
        await worker.top_k(query)  # at once
    assert not worker.alive
    deadline = time.monotonic() + 30
    while "exited with code" not in caplog.text and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # reaped, then logged, by the reply reader
    assert "exited with code -9" in caplog.text
    assert worker.process.exitcode == -signal.SIGKILL
    await worker.aclose()  # still fine after the worker died


def test_the_worker_exits_when_its_parent_dies(uniserve_data_dir: Path, tmp_path: Path) -> None:
    """A real `uniserve serve` with a shadow, SIGKILLed: nothing stops the worker but its
    socket closing."""
    data = copy_data(uniserve_data_dir, tmp_path / "data")
    port, log = free_port(), tmp_path / "serve.log"
    env: dict[str, str | None] = {"UNISERVE_SHADOW_VERSION": version_of(settings_of(data))}
    args = ["--no-bootstrap", "--data-dir", str(data), "--port", str(port)]
    proc = start_serve(args, log, env)
    try:
        wait_until_ok(f"http://127.0.0.1:{port}/readyz", proc, log, 180)
        workers = [
            pid
            for pid in descendants(proc.pid)
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(workers) == 1, log.read_text()[-3000:]
        proc.kill()
        proc.wait(10)
        assert wait_gone(workers[0], 30), "the shadow worker outlived its parent"
    finally:
        stop(proc)
