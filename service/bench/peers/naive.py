"""The naive service: the retrieve endpoint as most teams first write it. A plain `def` FastAPI
route (so it runs in FastAPI's thread pool, https://fastapi.tiangolo.com/async/), one
`Pipeline.encode_and_search` per request, stdlib JSON; no batching across requests, no
backpressure. One uvicorn process (`--workers` and the batching options are ignored).

    python -m service.bench.peers.naive DATA_DIR PORT [--threads N]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from service.bench.peers import parse_argv
from service.bench.peers.pipeline import Pipeline, answer, history_of


def naive_app(data_dir: Path, threads: int = 1) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import Response

    pipeline = Pipeline.load(data_dir, threads)
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/retrieve")
    def retrieve(body: dict[str, Any]) -> Response:
        ids, scores = pipeline.encode_and_search(
            [history_of(body["events"])], int(body.get("k", 10))
        )
        return Response(json.dumps(answer(ids[0], scores[0])), media_type="application/json")

    return app


def main(argv: list[str]) -> int:
    import uvicorn

    data_dir, port, options = parse_argv("service.bench.peers.naive", argv)
    app = naive_app(data_dir, options.threads)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
