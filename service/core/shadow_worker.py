"""The shadow's worker process: a shadow index version loaded and answered outside the live
process's GIL, at the lowest CPU priority, so the OS gives it only CPU time live serving leaves.

`ShadowWorker.start` spawns the process (multiprocessing "spawn": the live process has threads
and is never forked) and waits for it to load. The child (`run`) first puts every thread of its
own at SCHED_IDLE (`idle_priority`; `nice 19` where that is refused) and pins torch, OpenMP
and FAISS to one thread, then loads the version exactly as a reload would (`open_shadow`:
`open_engine`'s files verified, the model the manifest names found on disk, the gate, a warm-up)
with its own `Admission`, and reports its index and model versions, or why it was refused,
which `start` raises as an `IndexRejectedError` with the same reason (`reason_of`) and message.
It then answers `Query`s (`top_k`, batched by its own batchers) until its socket closes, then
exits: when the parent unloads it (`aclose`), and when the parent dies, since only the parent
holds the other end. Messages are length-prefixed JSON both ways, never pickle.

The parent's side never blocks on the socket: replies are read by one task on the event loop
(asyncio streams over a socketpair), a call is a write into the transport and a future.
`backlogged` says the kernel's socket buffer is full (the child is not reading: the caller
drops the call); a child that exits (killed, crashed) is noticed by that task at EOF: its calls
in flight and every later one fail with `ShadowWorkerError`, logged once. It is not restarted:
the operator loads the shadow again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import socket
import struct
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import anyio.to_thread
import orjson

from index import IndexRejectedError, RejectReason
from service.core.filters import Filters
from service.settings import Settings

if TYPE_CHECKING:
    from service.core.engine import Engine

log = logging.getLogger(__name__)

THREADS = 1  # torch, OpenMP and FAISS threads of the worker: it only takes idle CPU anyway
STOP_SECONDS = 10.0  # how long an unloaded worker may take to exit before it is killed
_LENGTH = struct.Struct("!I")  # each message: its JSON's length, then the JSON (never pickle)


class Query(NamedTuple):
    """A retrieve as the shadow answers it: the live answer's history, k and filters."""

    items: Sequence[str]  # the history's item ids, oldest first
    surfaces: Sequence[str]  # their surfaces
    k: int
    filters: Filters
    exclude_seen: bool


class Loaded(NamedTuple):
    """What the worker reports once its version is loaded."""

    index_version: str
    model_version: str


class ShadowWorkerError(Exception):
    """A call the worker could not answer (it exited, was unloaded, or its engine raised)."""


# ------------------------------------------------------------------------------ the child
def idle_priority() -> str:
    """Put every thread of this process at SCHED_IDLE (run only when a core is otherwise
    idle), or at nice 19 where that is refused; returns which."""
    tids = [int(tid) for tid in os.listdir("/proc/self/task")]
    try:
        for tid in tids:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):
        for tid in tids:
            os.setpriority(os.PRIO_PROCESS, tid, 19)
        return "nice 19"


def open_shadow(settings: Settings, version: str, *, root: Path | None = None) -> Engine:
    """Load, check and warm index `version` under `root` (default: the live index root) with
    its own admission. Blocking. Raises as `open_engine` does."""
    from service.core.engine import Admission
    from service.core.reloader import open_engine

    if root is not None:
        settings = settings.model_copy(update={"index_root": root})
    return open_engine(settings, Admission.from_settings(settings), version=version)


async def top_k(engine: Engine, query: Query) -> list[str]:
    """The engine's top-k item ids for the query, computed as the live retrieve computes them."""
    items = list(query.items)
    filters = query.filters.excluding(items) if query.exclude_seen else query.filters
    vector = (await engine.user_vectors([(items, list(query.surfaces))]))[0]  # (D,)
    ids, _ = await engine.retrieve(vector, query.k, filters, items)
    return ids


def run(
    sock: socket.socket, settings: Settings, version: str, root: Path | None, level: int
) -> None:
    """The worker process: load `version`, then answer queries until `sock` closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the parent stops us
    priority = idle_priority()  # before torch or FAISS start a thread
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(THREADS)
    logging.basicConfig(level=level, format="%(asctime)s shadow-worker %(levelname)s %(message)s")
    try:
        import torch

        torch.set_num_threads(THREADS)
        own = {
            "torch_threads": THREADS,
            "faiss_threads": THREADS,
            # room for every call the parent may have pending (`Shadow.max_pending`)
            "batch_queue_size": max(settings.batch_queue_size, settings.shadow_queue_size),
        }
        engine = open_shadow(settings.model_copy(update=own), version, root=root)
    except Exception as exc:  # the parent raises it again with its reason (`reason_of`)
        from service.core.reloader import reason_of

        refused = {"reason": reason_of(exc).value, "message": str(exc)}
        with contextlib.suppress(OSError):  # the parent may be gone
            sock.sendall(_message({"refused": refused}))
        return
    log.info("index %s loaded in process %d at %s", version, os.getpid(), priority)
    try:
        loaded = {"index_version": engine.index_version, "model_version": engine.model_version}
        sock.sendall(_message({"loaded": loaded}))
    except OSError:
        return  # the parent is gone
    asyncio.run(_answer_until_closed(sock, engine))


async def _answer_until_closed(sock: socket.socket, engine: Engine) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    calls: set[asyncio.Task[None]] = set()

    async def answer(call_id: int, query: Query) -> None:
        reply: dict[str, Any] = {"id": call_id}
        try:
            reply["ids"] = await top_k(engine, query)
        except Exception as exc:
            reply["error"] = f"{type(exc).__name__}: {exc}"
        writer.write(_message(reply))

    try:
        while True:
            call = await _read(reader)
            task = asyncio.get_running_loop().create_task(answer(call["id"], _query(call)))
            calls.add(task)
            task.add_done_callback(calls.discard)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the parent unloaded us or is gone
    finally:
        for task in list(calls):
            task.cancel()
        await engine.admission.aclose()
        writer.close()


# ------------------------------------------------------------------------------ messages
def _message(obj: dict[str, Any]) -> bytes:
    body = orjson.dumps(obj)
    return _LENGTH.pack(len(body)) + body


async def _read(reader: asyncio.StreamReader) -> dict[str, Any]:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    message: dict[str, Any] = orjson.loads(await reader.readexactly(length))
    return message


def _call(call_id: int, query: Query) -> dict[str, Any]:
    return {
        "id": call_id,
        "items": list(query.items),
        "surfaces": list(query.surfaces),
        "k": query.k,
        "only_surfaces": query.filters.surfaces,
        "exclude": query.filters.exclude,
        "exclude_seen": query.exclude_seen,
    }


def _query(call: dict[str, Any]) -> Query:
    surfaces = call["only_surfaces"]
    return Query(
        call["items"],
        call["surfaces"],
        call["k"],
        Filters(None if surfaces is None else tuple(surfaces), tuple(call["exclude"])),
        call["exclude_seen"],
    )


# ------------------------------------------------------------------------------ the parent
class ShadowWorker:
    """The live process's end of one worker: `top_k` calls, `aclose` to stop it."""

    def __init__(
        self,
        process: BaseProcess,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        loaded: Loaded,
    ) -> None:
        self.process = process
        self.pid = process.pid
        self.index_version, self.model_version = loaded
        self.failure: str | None = None  # why calls fail now; None: the worker answers
        self._reader, self._writer = reader, writer
        self._calls: dict[int, asyncio.Future[list[str]]] = {}
        self._ids = itertools.count()
        self._replies = asyncio.get_running_loop().create_task(self._read_replies())

    @classmethod
    async def start(
        cls, settings: Settings, version: str, *, root: Path | None = None
    ) -> ShadowWorker:
        """Spawn a worker for index `version` under `root` (default: the live index root) and
        wait until it is loaded; raises what refused it, as `open_engine` does."""
        ours, theirs = socket.socketpair()
        process = multiprocessing.get_context("spawn").Process(
            target=run,
            args=(theirs, settings, version, root, logging.getLogger().getEffectiveLevel()),
            name=f"uniserve-shadow-{version}",
            daemon=True,  # stopped by multiprocessing's exit handler if the parent exits
        )
        try:
            try:
                await anyio.to_thread.run_sync(process.start)
            finally:
                theirs.close()  # the child's end lives in the child only
            reader, writer = await asyncio.open_unix_connection(sock=ours)
        except BaseException:
            ours.close()
            await _stop(process)
            raise
        try:
            first: dict[str, Any] | None = await _read(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            first = None
        except BaseException:  # cancelled while loading
            writer.close()
            await _stop(process)
            raise
        if first is None or "loaded" not in first:
            writer.close()
            await _stop(process)
            if first is not None and "refused" in first:
                refused = first["refused"]
                raise IndexRejectedError(refused["message"], RejectReason(refused["reason"]))
            raise ShadowWorkerError(
                f"the shadow worker for {version!r} exited while loading (exit code "
                f"{process.exitcode})"
            )
        loaded = first["loaded"]
        return cls(
            process, reader, writer, Loaded(loaded["index_version"], loaded["model_version"])
        )

    @property
    def alive(self) -> bool:
        return self.failure is None

    @property
    def backlogged(self) -> bool:
        """The socket's kernel buffer is full (the worker is not reading): a call would queue
        in this process."""
        return self._writer.transport.get_write_buffer_size() > 0

    async def top_k(self, query: Query) -> list[str]:
        """The worker's top-k item ids; `ShadowWorkerError` when it cannot answer."""
        if self.failure is not None:
            raise ShadowWorkerError(f"the shadow worker (process {self.pid}) {self.failure}")
        call_id = next(self._ids)
        future = self._calls[call_id] = asyncio.get_running_loop().create_future()
        try:
            self._writer.write(_message(_call(call_id, query)))
            return await future
        finally:
            self._calls.pop(call_id, None)

    async def _read_replies(self) -> None:
        try:
            while True:
                reply = await _read(self._reader)
                future = self._calls.get(reply["id"])
                if future is None or future.done():
                    continue  # its caller is gone
                if "error" in reply:
                    future.set_exception(ShadowWorkerError(reply["error"]))
                else:
                    future.set_result(reply["ids"])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # it exited
        except Exception:
            log.exception("shadow worker %d sent a bad reply: stopping it", self.pid)
        if self.failure is not None:  # unloaded
            return
        self.failure = "exited"
        self._fail_calls()
        self._writer.close()
        await _stop(self.process)
        log.error(
            "shadow worker for %s (process %d) exited with code %s: the shadow's calls count as "
            "failed until a shadow is loaded again",
            self.index_version,
            self.pid,
            self.process.exitcode,
        )

    def _fail_calls(self) -> None:
        error = ShadowWorkerError(f"the shadow worker (process {self.pid}) {self.failure}")
        for future in self._calls.values():
            if not future.done():
                future.set_exception(error)

    async def aclose(self) -> None:
        """Stop the worker: it sees its socket close and exits (killed if it takes longer than
        STOP_SECONDS); calls in flight fail."""
        if self.failure is None:
            self.failure = "was unloaded"
        self._writer.close()
        self._fail_calls()
        self._replies.cancel()
        await _stop(self.process)


async def _stop(process: BaseProcess) -> None:
    """Wait for `process` to exit (its socket closed), killing it after STOP_SECONDS; also
    when the caller is being cancelled."""

    def reap() -> None:
        if process.pid is None:  # never started
            return
        process.join(STOP_SECONDS)
        if process.exitcode is None:
            log.warning(
                "shadow worker %d did not exit in %.0f s: killed", process.pid, STOP_SECONDS
            )
            process.kill()
            process.join()

    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(reap)
