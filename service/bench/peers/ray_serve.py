"""The Ray Serve peer: `Pipeline.encode_and_search` behind a deployment with `@serve.batch`.

Written the way Ray Serve's dynamic request batching guide says
(https://docs.ray.io/en/latest/serve/advanced-guides/dyn-req-batch.html): an async method
decorated with `@serve.batch` takes the list of requests and returns the list of answers; its
`max_batch_size` and `batch_wait_timeout_s` are set in the constructor with
`set_max_batch_size` / `set_batch_wait_timeout_s`, as its tip shows. CPU setup from the
performance tuning page (https://docs.ray.io/en/latest/serve/advanced-guides/performance.html):
one or more cores reserved per replica with `ray_actor_options={"num_cpus": threads}`, one
replica per `--workers` (the issue's one per core), `OMP_NUM_THREADS` set, and
`max_ongoing_requests` raised from its default of 5 to twice the batch size (one batch
running, the next filling: with 5 no batch could hold more than 5 requests). Everything else is
Serve's default: `max_queued_requests` -1 (no bound: an overload queues at the proxy, it is not
refused), no request timeout, user code in its own event loop (the throughput-optimized flags
of the tuning page, `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`, want a request path that never blocks,
and the batch handler computes in it as the batching guide's does; set it in the environment
to try them: the peer passes its environment on). Logging as every other service under test's:
warnings only, no access log, nothing streamed to the driver.

    python -m service.bench.peers.ray_serve DATA_DIR PORT [--threads N] [--batch B]
        [--wait-ms MS] [--workers W]
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ray import serve
from starlette.requests import Request

from service.bench.peers import parse_argv
from service.bench.peers.pipeline import Pipeline, answer, history_of

# warnings only and no access log line per request, as every other service under test logs
# (https://docs.ray.io/en/latest/serve/monitoring.html, "Configure Serve logging")
QUIET = {"log_level": "WARNING", "enable_access_log": False}


@serve.deployment
class Retriever:
    def __init__(self, data_dir: str, threads: int, batch: int, wait_s: float) -> None:
        self.pipeline = Pipeline.load(Path(data_dir), threads)
        self.retrieve.set_max_batch_size(batch)  # type: ignore[attr-defined]
        self.retrieve.set_batch_wait_timeout_s(wait_s)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def retrieve(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ks = [int(body.get("k", 10)) for body in bodies]
        histories = [history_of(body["events"]) for body in bodies]
        ids, scores = self.pipeline.encode_and_search(histories, max(ks))
        return [answer(ids[i, :k], scores[i, :k]) for i, k in enumerate(ks)]

    async def __call__(self, request: Request) -> dict[str, Any]:
        result: dict[str, Any] = await self.retrieve(await request.json())
        return result


def main(argv: list[str]) -> int:
    import ray

    data_dir, port, options = parse_argv("service.bench.peers.ray_serve", argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # the replicas' cores only; Serve's controller and HTTP proxy reserve none
    ray.init(
        num_cpus=options.workers * options.threads,
        include_dashboard=False,
        object_store_memory=256 * 2**20,  # nothing large goes through it
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=QUIET)
        threads = str(options.threads)
        app = Retriever.options(  # type: ignore[attr-defined]
            num_replicas=options.workers,
            max_ongoing_requests=2 * options.batch,
            logging_config=QUIET,
            ray_actor_options={
                "num_cpus": options.threads,
                "runtime_env": {
                    "env_vars": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
                },
            },
        ).bind(str(data_dir), options.threads, options.batch, options.wait_ms / 1000)
        serve.run(app, route_prefix="/v1/retrieve", blocking=False)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
