"""Shadow model: a candidate index version (and its model) answering a sample of retrieves in
the background, so its online hit rate can be measured on the same users as the live one's.

The shadow computes in a process of its own (`service.core.shadow_worker`): loaded there
exactly as a reload loads a version (`open_engine`: files verified, the model the manifest
names, the gate, a warm-up), from the live index root or another one, with its own batchers,
outside the live process's GIL and at the lowest CPU priority (SCHED_IDLE), so it takes only
CPU time live serving leaves. What it costs the live process is a sampled call's bookkeeping
here and a message each way.

`Shadow.takes` decides which retrieves are shadowed: a `sample` fraction of them, at most
`max_pending` at once (beyond that, dropped and counted), none while live requests in progress
are at half their admission limit or more (`live_busy`: dropped and counted; the worker only
gets idle CPU, but its answers still cost the live process a little) or while the worker's
socket is full (dropped and counted). Once the worker has exited (killed, crashed), every
sampled retrieve counts as failed until a shadow is loaded again. `Shadow.answer` asks the
worker for its top-k for the same history, k and filters after the live answer was made (the
tracker calls it from the background, `service.core.online`). Mode "multi" retrieves are not
shadowed. `ShadowSlot` holds the one shadow of an app, swapped by `load` / `unload`, each
stopping the worker it replaces.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

import anyio

from service.core.online import RetrieveCall
from service.core.shadow_worker import Query, ShadowWorker
from service.settings import Settings
from service.store.served import ServedList

log = logging.getLogger(__name__)

OUTCOMES = ("answered", "dropped", "failed")  # `uniserve_shadow_requests_total{outcome}`


class Shadow:
    def __init__(
        self,
        worker: ShadowWorker,
        *,
        root: Path,
        sample: float,
        max_pending: int,
        on_outcome: Callable[[str], None] | None = None,
        rng: Callable[[], float] = random.random,
        live_busy: Callable[[], bool] | None = None,
    ) -> None:
        """`live_busy`: whether live traffic is near its admission limit now (then the
        shadow takes nothing); None: never."""
        if not 0.0 <= sample <= 1.0 or max_pending < 1:
            raise ValueError(
                f"sample ({sample}) must be in [0, 1], max_pending ({max_pending}) >= 1"
            )
        self.worker = worker
        self.root = root
        self.sample = sample
        self.max_pending = max_pending
        self.pending = 0
        self._on_outcome = on_outcome or (lambda outcome: None)
        self._rng = rng
        self._live_busy = live_busy or (lambda: False)

    @property
    def index_version(self) -> str:
        return self.worker.index_version

    @property
    def model_version(self) -> str:
        return self.worker.model_version

    def takes(self, call: RetrieveCall) -> bool:
        """Whether this retrieve is shadowed (then `release` must follow); counts those in the
        sample that are not (dropped, or failed once the worker has exited)."""
        if call.mode != "single" or self.sample <= 0.0:
            return False
        if self.sample < 1.0 and self._rng() >= self.sample:
            return False
        if not self.worker.alive:
            self._on_outcome("failed")
            return False
        if self.pending >= self.max_pending or self._live_busy() or self.worker.backlogged:
            self._on_outcome("dropped")
            return False
        self.pending += 1
        return True

    def release(self, outcome: str = "dropped") -> None:
        """A taken retrieve is done: `outcome` one of OUTCOMES."""
        self.pending -= 1
        self._on_outcome(outcome)

    async def answer(self, call: RetrieveCall) -> ServedList:
        """The shadow's top-k for the live answer's history, k and filters."""
        items, surfaces = [e.item_id for e in call.history], [e.surface for e in call.history]
        ids = await self.worker.top_k(
            Query(items, surfaces, call.k, call.filters, call.exclude_seen)
        )
        return ServedList(
            tuple(ids), "shadow", self.model_version, self.index_version, call.served_at
        )

    async def aclose(self) -> None:
        await self.worker.aclose()


class ShadowSlot:
    """The app's shadow, if any: loaded, replaced and unloaded one at a time."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_outcome: Callable[[str], None] | None = None,
        on_change: Callable[[Shadow | None], None] | None = None,
        live_busy: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.shadow: Shadow | None = None
        self._on_outcome = on_outcome
        self._live_busy = live_busy
        self._on_change = on_change or (lambda shadow: None)
        self._lock = anyio.Lock()

    async def load(
        self,
        version: str,
        *,
        root: Path | None = None,
        sample: float | None = None,
    ) -> Shadow:
        """Load `version` as the shadow in a new worker process (replacing any other); raises
        what refused it when it does not load, the shadow in place unaffected."""
        async with self._lock:
            worker = await ShadowWorker.start(self.settings, version, root=root)
            shadow = Shadow(
                worker,
                root=root if root is not None else self.settings.index_path,
                sample=self.settings.shadow_sample if sample is None else sample,
                max_pending=self.settings.shadow_queue_size,
                on_outcome=self._on_outcome,
                live_busy=self._live_busy,
            )
            old, self.shadow = self.shadow, shadow
            self._on_change(shadow)
            log.info(
                "shadow: index %s with model %s in process %s, sampling %.3g of retrieves",
                shadow.index_version,
                shadow.model_version,
                worker.pid,
                shadow.sample,
            )
        if old is not None:
            await old.aclose()
        return shadow

    async def unload(self) -> None:
        async with self._lock:
            old, self.shadow = self.shadow, None
            self._on_change(None)
        if old is not None:
            await old.aclose()
            log.info("shadow %s unloaded", old.index_version)
