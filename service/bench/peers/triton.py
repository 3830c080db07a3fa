"""The Triton peer: `Pipeline.encode_and_search` bound to Triton Inference Server with PyTriton,
Triton's dynamic batcher in front of it, on CPU.

Written the way PyTriton's binding pages say
(https://triton-inference-server.github.io/pytriton/latest/binding_models/ and
https://triton-inference-server.github.io/pytriton/latest/binding_configuration/): an inference
function decorated with `@batch` (it receives the batch Triton's dynamic batcher formed, as one
array per input) bound with `ModelConfig(max_batch_size=B, batcher=DynamicBatcher(
max_queue_delay_microseconds=...))`; `--workers` instances of the model (a list of inference
callables, one per instance, sharing one loaded pipeline). Everything else is Triton's default,
as its batcher guide starts from (https://docs.nvidia.com/deeplearning/triton-inference-server/
user-guide/docs/batcher.html): no queue bound or queue timeout (an overload queues, it is not
refused), no preferred batch sizes.

The wire is Triton's own, KServe v2 JSON over HTTP: `POST /v2/models/retrieve/infer` with the
history as BYTES tensors `history_ids` and `history_surfaces` (1, T) and `k` INT32 (1, 1); the answer's
`item_ids` BYTES and `scores` FP32 are (1, k), padded with "" / 0 to the batch's largest k
(`service.bench.peers.kserve_request` / `kserve_items`).

PyTriton needs numpy<2: run it with the interpreter `scripts/setup_triton_venv.sh` makes.

    python -m service.bench.peers.triton DATA_DIR PORT [--threads N] [--batch B]
        [--wait-ms MS] [--workers W]
"""

from __future__ import annotations

import os
import signal
import sys
import sysconfig
from collections.abc import Callable
from typing import Any

import numpy as np

from service.bench.peers import parse_argv
from service.bench.peers.pipeline import Pipeline

MODEL = "retrieve"


def use_own_libpython() -> None:
    """Make Triton's Python backend stub load this interpreter's libpython.

    The stub links `libpython3.X.so` dynamically and, left alone, finds the system's (Debian's
    3.11.2) while it runs this interpreter's standard library (3.11.7 here); their
    `_thread.RLock` differ and the model fails to load ("'_thread.RLock' object has no
    attribute '_recursion_count'", https://github.com/triton-inference-server/pytriton/issues/51).
    Triton and its stubs are started after this, so they inherit the path."""
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        paths = (str(sysconfig.get_config_var("LIBDIR")), os.environ.get("LD_LIBRARY_PATH", ""))
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in paths if p)


def make_infer(pipeline: Pipeline) -> Callable[..., dict[str, np.ndarray]]:
    from pytriton.decorators import batch

    @batch  # type: ignore[misc]
    def infer(
        history_ids: np.ndarray, history_surfaces: np.ndarray, k: np.ndarray
    ) -> dict[str, np.ndarray]:
        # history_ids, history_surfaces: (B, T) bytes; k: (B, 1) int32
        histories = [
            ([i.decode() for i in row_ids], [s.decode() for s in row_surfaces])
            for row_ids, row_surfaces in zip(history_ids, history_surfaces, strict=True)
        ]
        ks = k[:, 0]  # (B,)
        ids, scores = pipeline.encode_and_search(histories, int(ks.max()))  # (B, K), (B, K)
        for row, row_k in enumerate(ks):
            ids[row, row_k:] = ""
            scores[row, row_k:] = 0.0
        return {"item_ids": np.char.encode(ids.astype(str), "utf-8"), "scores": scores}

    out: Callable[..., dict[str, np.ndarray]] = infer
    return out


def main(argv: list[str]) -> int:
    use_own_libpython()
    # a SIGTERM stops it as Ctrl-C does: its `serve`/`run` catches KeyboardInterrupt and cleans up
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    from service.bench.servers import free_port

    data_dir, port, options = parse_argv("service.bench.peers.triton", argv)
    pipeline = Pipeline.load(data_dir, options.threads)
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=port,
        grpc_address="127.0.0.1",
        grpc_port=free_port(),
        metrics_address="127.0.0.1",
        metrics_port=free_port(),
        exit_timeout_secs=5,
    )
    inputs: list[Any] = [
        Tensor(name="history_ids", dtype=np.bytes_, shape=(-1,)),
        Tensor(name="history_surfaces", dtype=np.bytes_, shape=(-1,)),
        Tensor(name="k", dtype=np.int32, shape=(1,)),
    ]
    outputs: list[Any] = [
        Tensor(name="item_ids", dtype=np.bytes_, shape=(-1,)),
        Tensor(name="scores", dtype=np.float32, shape=(-1,)),
    ]
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL,
            infer_func=[make_infer(pipeline) for _ in range(options.workers)],
            inputs=inputs,
            outputs=outputs,
            config=ModelConfig(
                max_batch_size=options.batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=int(options.wait_ms * 1000)),
            ),
            strict=True,
        )
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
