"""`LiveCatalogue`: catalogue changes (upserts, retirements) made live without a rebuild.

It owns the index root's change log (`service.store.changelog.ChangeLog`) and keeps the live
engine's `Delta` (`service.core.delta`) equal to the log after the engine's version:

- `upsert` / `retire` (the admin routes): checked (features the model reads; the delta limit,
  `delta_full` naming it), appended to the log and fsynced, then applied to the live engine,
  all before the caller's answer; a refused call writes and applies nothing;
- `installing(engine)`: what the `Reloader` runs around every swap (first load, reload,
  rollback, the CURRENT watcher): the new engine is brought up to the log (a version built
  through change N replays the changes after N; an older one, after a rollback, re-applies
  more), then goes live, with no call applied in between;
- `poll_once` / `watch`: changes other replicas wrote to the shared log are applied within one
  poll interval, or at once when a Redis nudge (`service.store.redis_feed`) calls `poll_once`.

One lock serialises the three, and the blocking parts (file I/O, encoding) run in a worker
thread. It knows nothing of HTTP; the hooks report to the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from service.core.engine import Engine
from service.errors import ErrorType, ServiceError
from service.store.changelog import CatalogueItem, Change, ChangeLog, Op

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChangeOutcome:
    """What one admin call applied, on which version, and where the log stands."""

    upserted: int
    retired: int
    delta_size: int
    index_version: str
    seq: int


class LiveCatalogue:
    def __init__(
        self,
        index_root: Path,
        live: Callable[[], Engine | None],
        *,
        max_delta: int,
        on_applied: Callable[[Engine, Sequence[Change], bool], None] | None = None,
        on_call: Callable[[Op, int], None] | None = None,
        on_written: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        """`live()`: the live engine (None while not ready). `max_delta`: the most distinct ids
        the delta may hold (upserted or retired) before calls get `delta_full`.
        `on_applied(engine, changes, replayed)` runs after changes are applied to an engine
        (`replayed`: by a swap bringing a version up to the log, not as they arrive), `on_call(op, items)` after a call,
        `on_written(seq)` after a call's change is live here (the Redis nudge to the other
        replicas; it must not raise)."""
        self.log = ChangeLog(index_root)
        self.max_delta = max_delta
        self._live = live
        self._on_applied = on_applied or (lambda engine, changes, replayed: None)
        self._on_call = on_call or (lambda op, n: None)
        self._on_written = on_written
        self._lock = anyio.Lock()

    # ------------------------------------------------------------------ admin calls
    async def upsert(self, items: Sequence[CatalogueItem]) -> ChangeOutcome:
        """Make `items` retrievable (vectors from the live model); later ones of an id win."""
        return await self._change("upsert", items=items)

    async def retire(self, item_ids: Sequence[str]) -> ChangeOutcome:
        """Never return `item_ids` again (until upserted again)."""
        return await self._change("retire", item_ids=item_ids)

    async def _change(
        self, op: Op, *, items: Sequence[CatalogueItem] = (), item_ids: Sequence[str] = ()
    ) -> ChangeOutcome:
        async with self._lock:  # no swap, poll or other call in between
            engine = self._engine()
            if op == "upsert":
                engine.check_items([(i.item_id, i.surface, i.features) for i in items])
            outcome = await anyio.to_thread.run_sync(
                self._write_and_apply, engine, op, items, item_ids
            )
        self._on_call(op, len(items) if op == "upsert" else len(item_ids))
        if self._on_written is not None:
            await self._on_written(outcome.seq)
        return outcome

    def _engine(self) -> Engine:
        engine = self._live()
        if engine is None:
            raise ServiceError(
                ErrorType.NOT_READY,
                "no index is loaded yet: catalogue changes need the live model; retry once "
                "/readyz answers 200",
            )
        return engine

    def _write_and_apply(
        self,
        engine: Engine,
        op: Op,
        items: Sequence[CatalogueItem],
        item_ids: Sequence[str],
    ) -> ChangeOutcome:
        pending = Change(0, op, tuple(items), tuple(item_ids))

        def check(_others: list[Change]) -> None:  # under the log's lock, before writing
            size = engine.delta.size_after([*self.log.since(engine.delta.seq), pending])
            if size > self.max_delta:
                raise ServiceError(
                    ErrorType.DELTA_FULL,
                    f"the live catalogue delta would hold {size} changed items, over its "
                    f"limit of {self.max_delta} (UNISERVE_DELTA_MAX_ITEMS); nothing was "
                    "applied: run `uniserve build-index` (it folds the change log into a new "
                    "index version, which empties the delta) and retry",
                )

        change, _ = self.log.append(
            op,
            items=items,
            item_ids=item_ids,
            index_version=engine.index_version,
            check=check,
            after=engine.delta.seq,
        )
        self._apply(engine)
        return ChangeOutcome(
            upserted=len(items),
            retired=len(item_ids),
            delta_size=engine.delta.size,
            index_version=engine.index_version,
            seq=change.seq,
        )

    def _apply(self, engine: Engine, *, replayed: bool = False) -> None:
        """Apply the log's records after the engine's delta (blocking)."""
        changes = self.log.since(engine.delta.seq)
        if changes:
            engine.apply_changes(changes)
            self._on_applied(engine, changes, replayed)

    def _catch_up(self, engine: Engine, replayed: bool = False) -> None:
        self.log.refresh()
        self._apply(engine, replayed=replayed)

    # ------------------------------------------------------------------ swaps
    @asynccontextmanager
    async def installing(self, engine: Engine) -> AsyncIterator[None]:
        """Bring `engine` up to the log, then let the caller make it live, with no change
        applied in between (the `Reloader`'s hook around every swap)."""
        async with self._lock:
            started = time.perf_counter()
            try:
                await anyio.to_thread.run_sync(self._catch_up, engine, True)
            except Exception:  # the version still goes live; the watcher retries the log
                log.exception("catalogue: applying the change log to %s failed", engine)
            else:
                if engine.delta.size:
                    log.info(
                        "catalogue: %d changes after change %d applied to %s in %.2f s",
                        engine.delta.size,
                        engine.delta.base_seq,
                        engine.index_version,
                        time.perf_counter() - started,
                    )
            yield

    # ------------------------------------------------------------------ other replicas
    async def poll_once(self) -> int:
        """Apply what other replicas appended to the log; returns the changes applied."""
        async with self._lock:
            engine = self._live()
            if engine is None:
                return 0
            before = engine.delta.seq
            await anyio.to_thread.run_sync(self._catch_up, engine)
            return engine.delta.seq - before

    async def watch(self, interval: float) -> None:
        """`poll_once` every `interval` seconds until cancelled."""
        while True:
            await anyio.sleep(interval)
            try:
                await self.poll_once()
            except Exception:
                log.exception("catalogue watcher: unexpected error; still watching")
