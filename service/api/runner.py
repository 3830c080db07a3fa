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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator

import uvicorn
from fastapi import FastAPI

from service.api.app import create_app, create_public_app
from service.settings import Settings

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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


async def serve(settings: Settings, log_level: str = "info") -> None:
    """Run the service until SIGTERM / SIGINT, then stop gracefully (see the module doc)."""
    app = create_app(settings)
    servers = listeners(settings, app, log_level)
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():  # a second signal: stop waiting for requests in flight
            for server in servers:
                server.force_exit = True
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    try:
        async with app.router.lifespan_context(app):
            running = [asyncio.create_task(s.serve()) for s in servers]
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([stopping, *running], return_when=asyncio.FIRST_COMPLETED)
            log.info("stopping: no new connections, finishing requests in flight")
            for server in servers:
                server.should_exit = True
            stopping.cancel()
            await asyncio.gather(*running)  # each drains its connections, then returns
        log.info("stopped: requests in flight finished, backends closed")
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # installed with uvicorn[standard]; uvicorn prefers it too
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(settings: Settings, log_level: str = "info") -> None:
    """Blocking: serve until stopped."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(settings, log_level))
