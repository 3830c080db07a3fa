"""Dynamic batching: coalesce concurrent calls into one batched call run off the event loop.

A `Batcher` owns a bounded queue and a few consumer tasks. `submit(item)` enqueues the item and
awaits its result; when the queue is full it raises `ServiceError(overloaded)` at once (429)
instead of waiting, so latency stays bounded under overload. A consumer takes the oldest item,
gathers more until `max_batch` items or `max_wait` seconds after it started gathering, and runs
`run_batch(items) -> results` (one result per item, same order) in its own worker thread: torch
and FAISS release the GIL, so the event loop keeps accepting requests meanwhile. While a batch
runs, new items queue up, so under load batches fill by themselves and `max_wait` only matters
at low load (it trades a little latency for bigger batches).

A batch that raises fails only its own items; items whose caller gave up (cancelled) before
their batch started are dropped from it. The batcher knows nothing of HTTP, models or indexes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from service.errors import ErrorType, ServiceError

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchStats:
    """What one batch did, for metrics: its size, how long each item waited in the queue
    (seconds, from submit to the batch starting) and how long the batch ran."""

    name: str
    size: int
    queue_waits: tuple[float, ...]
    run_seconds: float
    failed: bool


class Batcher(Generic[In, Out]):
    def __init__(
        self,
        run_batch: Callable[[list[In]], Sequence[Out]],
        *,
        name: str,
        max_batch: int = 64,
        max_wait: float = 0.002,
        max_queue: int = 1024,
        workers: int = 1,
        on_batch: Callable[[BatchStats], None] | None = None,
        thread_init: Callable[[], None] | None = None,
    ) -> None:
        """`run_batch` runs in a worker thread and returns one result per item, in order;
        `thread_init` runs once in each worker thread first (per-thread settings such as
        OpenMP's thread count)."""
        if max_batch < 1 or max_queue < 1 or workers < 1 or max_wait < 0:
            raise ValueError(
                f"{name}: max_batch, max_queue and workers must be >= 1 and max_wait >= 0, got "
                f"{max_batch}, {max_queue}, {workers}, {max_wait}"
            )
        self.run_batch = run_batch
        self.name = name
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.workers = workers
        self._on_batch = on_batch or (lambda stats: None)
        self._thread_init = thread_init
        self._queue: asyncio.Queue[_Pending[In, Out]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.running = 0  # items in batches running now

    @property
    def depth(self) -> int:
        """Items waiting in the queue (not yet in a running batch)."""
        return self._queue.qsize() if self._queue is not None else 0

    def _start(self) -> asyncio.Queue[_Pending[In, Out]]:
        """Queue, thread pool and consumers, made on first use inside the running loop."""
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:
            self._loop = loop
            self._queue = asyncio.Queue(self.max_queue)
            self._executor = ThreadPoolExecutor(
                self.workers, thread_name_prefix=self.name, initializer=self._thread_init
            )
            self._tasks = [
                loop.create_task(self._consume(), name=f"{self.name}-batcher-{i}")
                for i in range(self.workers)
            ]
        return self._queue

    async def submit(self, item: In) -> Out:
        """The result of `item`'s batch; `overloaded` at once when the queue is full."""
        queue = self._start()
        pending: _Pending[In, Out] = _Pending(item, asyncio.get_running_loop().create_future())
        try:
            queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise ServiceError(
                ErrorType.OVERLOADED,
                f"the {self.name} queue is full ({self.max_queue} waiting); retry shortly",
            ) from None
        return await pending.future

    async def _gather(self, queue: asyncio.Queue[_Pending[In, Out]]) -> list[_Pending[In, Out]]:
        """The oldest item and what joins it within max_batch / max_wait."""
        batch = [await queue.get()]
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _consume(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:  # no local here keeps a finished batch's items alive until the next batch
            await self._run(await self._gather(queue))

    async def _run(self, gathered: list[_Pending[In, Out]]) -> None:
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        batch = [p for p in gathered if not p.future.done()]
        if not batch:
            return
        started = time.perf_counter()
        items = [p.item for p in batch]
        self.running += len(batch)
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, items)
            if len(results) != len(batch):
                raise RuntimeError(
                    f"{self.name}: run_batch returned {len(results)} results for {len(batch)} items"
                )
        except asyncio.CancelledError:  # closing: the batch's callers must not hang
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(
                        ServiceError(ErrorType.NOT_READY, "the service is shutting down")
                    )
            raise
        except Exception as exc:
            log.warning("%s batch of %d failed: %r", self.name, len(batch), exc)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            failed = True
        else:
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)
            failed = False
        finally:
            self.running -= len(batch)
        self._on_batch(
            BatchStats(
                self.name,
                len(batch),
                tuple(started - p.enqueued for p in batch),
                time.perf_counter() - started,
                failed,
            )
        )

    async def aclose(self) -> None:
        """Stop the consumers; queued and running items fail with `not_ready`."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._queue is not None:
            while not self._queue.empty():
                pending = self._queue.get_nowait()
                if not pending.future.done():
                    pending.future.set_exception(
                        ServiceError(ErrorType.NOT_READY, "the service is shutting down")
                    )
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._queue = None
        self._executor = None
