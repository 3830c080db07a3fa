"""The LitServe peer: `Pipeline.encode_and_search` as a `LitAPI` with LitServe's own batching.

Written the way LitServe's batching page says (https://lightning.ai/docs/litserve/features/batching):
`max_batch_size` and `batch_timeout` on the `LitAPI` (0.2.x moved them there from `LitServer`,
https://lightning.ai/docs/litserve/api-reference/litapi), `decode_request` per request,
`predict` over the list of decoded requests (LitAPI's default `batch` keeps a list of
non-tensors as it is), `encode_response` per answer. On CPU, `LitServer(accelerator="cpu",
workers_per_device=N)` runs N inference processes, and as many HTTP server processes by default
(`num_api_servers=None`, https://lightning.ai/docs/litserve/api-reference/litserver); each
worker loads its own model and index in `setup`. Timeout: LitServer's default (30 s, then 504).

    python -m service.bench.peers.litserve DATA_DIR PORT [--threads N] [--batch B]
        [--wait-ms MS] [--workers W]
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import litserve as ls

from service.bench.peers import parse_argv
from service.bench.peers.pipeline import History, Pipeline, answer, history_of


class RetrieveAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, data_dir: Path, threads: int, max_batch_size: int, batch_timeout: float):
        super().__init__(
            max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/v1/retrieve"
        )
        self.data_dir = data_dir
        self.threads = threads

    def setup(self, device: str) -> None:
        self.pipeline = Pipeline.load(self.data_dir, self.threads)

    # `request` is left unannotated: LitServe then parses the body as JSON (a dict)
    def decode_request(self, request) -> tuple[History, int]:  # type: ignore[no-untyped-def]
        return history_of(request["events"]), int(request.get("k", 10))

    def predict(self, x: Any) -> Any:
        """A list of decoded requests -> a list of answers (one of each when not batching)."""
        batch: list[tuple[History, int]] = x if self.max_batch_size > 1 else [x]
        k = max(k for _, k in batch)
        ids, scores = self.pipeline.encode_and_search([h for h, _ in batch], k)
        out = [answer(ids[i, :ki], scores[i, :ki]) for i, (_, ki) in enumerate(batch)]
        return out if self.max_batch_size > 1 else out[0]

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main(argv: list[str]) -> int:
    data_dir, port, options = parse_argv("service.bench.peers.litserve", argv)
    # a SIGTERM stops it as Ctrl-C does: its `serve`/`run` catches KeyboardInterrupt and cleans up
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    api = RetrieveAPI(data_dir, options.threads, options.batch, options.wait_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=options.workers)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
