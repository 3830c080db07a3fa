"""`uniserve serve`: one process, one lifespan, one or two uvicorn listeners, graceful stop.

The app's lifespan (model, index, Redis) is entered once, here, and both listeners run with
uvicorn's own lifespan off: `host:port` serves the full app, or, when `admin_port` is set, only
the public routes (`service.api.app.create_public_app`) while `admin_host:admin_port` serves the
full app (admin routes, docs, metrics and the API). One signal handler drives both.

On SIGTERM or SIGINT: every listener closes at once (new connections are refused), idle
keep-alive connections are closed, requests in flight finish and are answered with
`Connection: close` (for at most `shutdown_timeout_seconds`, after which uvicorn cancels them),
then the lifespan closes Redis and the process exits 0. A second signal skips the wait.
uvicorn's own signal capture is disabled: it would re-raise the signal after shutting down, so
the process would die of SIGTERM instead of exiting 0.

With `workers` > 1 (`supervise`) this process is a supervisor: it binds the listening sockets
once and spawns that many worker processes, each running the above on the inherited sockets
(the kernel hands each connection to one of them). A worker enters its lifespan, says it has
loaded, and starts listening only once every worker has (so the port never answers from a
half-started service); a worker that dies is started again at once. SIGTERM or SIGINT to the
supervisor is passed on to every worker as SIGTERM (a second one skips their wait); workers
ignore a terminal's SIGINT, and die with their supervisor even when it is SIGKILLed
(`PR_SET_PDEATHSIG`). Each worker's `/metrics` answers for all (`service.api.workers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from service.api.app import create_app, create_public_app
from service.api.workers import Worker
from service.settings import Settings

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PR_SET_PDEATHSIG = 1  # prctl(2)
LISTEN_BACKLOG = 2048  # uvicorn's default


class _Listener(uvicorn.Server):
    """A uvicorn server that leaves signals to `serve`, which stops every listener at once."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listeners(settings: Settings, app: FastAPI, log_level: str = "info") -> list[uvicorn.Server]:
    """The uvicorn servers for `app`: one, or the public one and the admin one."""

    def server(asgi: FastAPI, host: str, port: int) -> uvicorn.Server:
        config = uvicorn.Config(
            asgi,
            host=host,
            port=port,
            lifespan="off",  # entered once by `serve`, shared by both listeners
            log_level=log_level,
            timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds + 0.999),
        )
        return _Listener(config)

    if settings.admin_port is None:
        return [server(app, settings.host, settings.port)]
    return [
        server(create_public_app(app), settings.host, settings.port),
        server(app, settings.admin_host, settings.admin_port),
    ]


@dataclass(frozen=True)
class Supervised:
    """What a worker process gets from its supervisor (`UNISERVE_WORKERS` > 1): its place, the
    listening sockets (one per listener, bound once by the supervisor), and the start gate:
    it sets `loaded` once its lifespan has loaded and warmed the model and index, and starts
    listening when `go` is set (at first start, once every worker has loaded; a worker started
    again after one died finds it set)."""

    worker: Worker
    sockets: list[socket.socket]
    loaded: EventType
    go: EventType


async def serve(
    settings: Settings, log_level: str = "info", supervised: Supervised | None = None
) -> None:
    """Run the service until SIGTERM / SIGINT (a supervised worker: its supervisor's SIGTERM),
    then stop gracefully (see the module doc)."""
    app = create_app(settings, worker=supervised.worker if supervised else None)
    servers = listeners(settings, app, log_level)
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():  # a second signal: stop waiting for requests in flight
            for server in servers:
                server.force_exit = True
        stop.set()

    loop = asyncio.get_running_loop()
    stop_signals = STOP_SIGNALS if supervised is None else (signal.SIGTERM,)
    for sig in stop_signals:
        loop.add_signal_handler(sig, on_signal)
    try:
        async with app.router.lifespan_context(app):
            if supervised is not None:
                supervised.loaded.set()
                while not (supervised.go.is_set() or stop.is_set()):
                    await asyncio.sleep(0.05)
            sockets = supervised.sockets if supervised is not None else [None] * len(servers)
            running = [
                asyncio.create_task(s.serve(None if sock is None else [sock]))
                for s, sock in zip(servers, sockets, strict=True)
            ]
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([stopping, *running], return_when=asyncio.FIRST_COMPLETED)
            log.info("stopping: no new connections, finishing requests in flight")
            for server in servers:
                server.should_exit = True
            stopping.cancel()
            await asyncio.gather(*running)  # each drains its connections, then returns
        log.info("stopped: requests in flight finished, backends closed")
    finally:
        for sig in stop_signals:
            loop.remove_signal_handler(sig)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # installed with uvicorn[standard]; uvicorn prefers it too
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(settings: Settings, log_level: str = "info") -> None:
    """Blocking: serve until stopped; `settings.workers` processes when more than one."""
    if settings.workers > 1:
        supervise(settings, log_level)
    else:
        _run(settings, log_level, None)


def _run(settings: Settings, log_level: str, supervised: Supervised | None) -> None:
    if supervised is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C reaches the supervisor
        _die_with_parent()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(settings, log_level, supervised))


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its supervisor dies (even by SIGKILL), so no worker
    is left serving alone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket, as uvicorn binds one (`SO_REUSEADDR`), that workers inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def supervise(settings: Settings, log_level: str = "info") -> None:
    """Serve with `settings.workers` processes: bind the listeners once, start the workers
    (spawned: each loads its own model and index; the index file is memory-mapped, so its pages
    are shared), let them accept connections once all have loaded, start another when one dies,
    and on SIGTERM / SIGINT stop them all (a second signal skips their wait) and return."""
    sockets = [_bind(settings.host, settings.port)]
    if settings.admin_port is not None:
        sockets.append(_bind(settings.admin_host, settings.admin_port))
    ctx = multiprocessing.get_context("spawn")  # never fork a process with threads
    go = ctx.Event()
    stopping = False
    with tempfile.TemporaryDirectory(prefix="uniserve-workers-") as run_dir:

        def start(index: int) -> tuple[BaseProcess, EventType]:
            loaded = ctx.Event()
            worker = Worker(index, settings.workers, Path(run_dir))
            proc = ctx.Process(
                target=_run,
                args=(settings, log_level, Supervised(worker, sockets, loaded, go)),
                name=f"uniserve-worker-{index}",
            )
            proc.start()
            return proc, loaded

        def on_signal(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True
            for proc, _ in workers:
                if proc.pid is not None and proc.exitcode is None:
                    os.kill(proc.pid, signal.SIGTERM)

        previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
        workers = [start(i) for i in range(settings.workers)]
        log.info("supervisor: %d workers starting", settings.workers)
        try:
            while not (stopping and all(proc.exitcode is not None for proc, _ in workers)):
                if not go.is_set() and all(loaded.is_set() for _, loaded in workers):
                    go.set()
                    log.info("supervisor: %d workers loaded; accepting", settings.workers)
                for index, (proc, _) in enumerate(workers):
                    proc.join(0.2)
                    if proc.exitcode is not None and not stopping:
                        log.error(
                            "worker %d exited with %s; starting another", index, proc.exitcode
                        )
                        workers[index] = start(index)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for sock in sockets:
                sock.close()
