"""Shadow model: a candidate index version (and its model) answering a sample of retrieves in
the background, so its online hit rate can be measured on the same users as the live one's.

`open_shadow` loads a published version exactly as a reload would (`open_engine`: files
verified, the model the manifest names, the gate, a warm-up), from the live index root or
another one, with its own `Admission`: its own batchers and threads, so its queue can never
fill the live one's. Its work still takes the same cores, so `Shadow.takes` yields to live
load: while live requests in progress are at half their admission limit or more (`live_busy`),
the retrieve is not shadowed (dropped and counted). Otherwise it takes a `sample` fraction of
them, at most `max_pending` at once (beyond that, dropped and counted);
`Shadow.answer` computes its top-k for the same history, k and filters after the live answer was
made (the tracker calls it from the background, `service.core.online`). Mode "multi" retrieves
are not shadowed. `ShadowSlot` holds the one shadow of an app, swapped by `load` / `unload`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread

from service.core.engine import Admission, Engine
from service.core.online import RetrieveCall
from service.core.reloader import open_engine
from service.settings import Settings
from service.store.served import ServedList

log = logging.getLogger(__name__)

OUTCOMES = ("answered", "dropped", "failed")  # `uniserve_shadow_requests_total{outcome}`


class Shadow:
    def __init__(
        self,
        engine: Engine,
        admission: Admission,
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
        self.engine = engine
        self.admission = admission
        self.root = root
        self.sample = sample
        self.max_pending = max_pending
        self.pending = 0
        self._on_outcome = on_outcome or (lambda outcome: None)
        self._rng = rng
        self._live_busy = live_busy or (lambda: False)

    @property
    def index_version(self) -> str:
        return self.engine.index_version

    @property
    def model_version(self) -> str:
        return self.engine.model_version

    def takes(self, call: RetrieveCall) -> bool:
        """Whether this retrieve is shadowed (then `release` must follow); counts overflow."""
        if call.mode != "single" or self.sample <= 0.0:
            return False
        if self.sample < 1.0 and self._rng() >= self.sample:
            return False
        if self.pending >= self.max_pending or self._live_busy():
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
        items = [e.item_id for e in call.history]
        history = (items, [e.surface for e in call.history])
        filters = call.filters.excluding(items) if call.exclude_seen else call.filters
        vector = (await self.engine.user_vectors([history]))[0]  # (D,)
        ids, _ = await self.engine.retrieve(vector, call.k, filters, items)
        return ServedList(
            tuple(ids), "shadow", self.model_version, self.index_version, call.served_at
        )

    async def aclose(self) -> None:
        await self.admission.aclose()


def open_shadow(
    settings: Settings,
    version: str,
    *,
    root: Path | None = None,
    live: Engine | None = None,
) -> tuple[Engine, Admission]:
    """Load, check and warm index `version` under `root` (default: the live index root) with
    its own admission. Blocking. Raises as `open_engine` does."""
    if root is not None:
        settings = settings.model_copy(update={"index_root": root})
    admission = Admission.from_settings(settings)
    return open_engine(settings, admission, version=version, current=live), admission


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
        live: Engine | None = None,
        sample: float | None = None,
    ) -> Shadow:
        """Load `version` as the shadow (replacing any other); raises when it does not load."""
        async with self._lock:
            engine, admission = await anyio.to_thread.run_sync(
                lambda: open_shadow(self.settings, version, root=root, live=live)
            )
            shadow = Shadow(
                engine,
                admission,
                root=root if root is not None else self.settings.index_path,
                sample=self.settings.shadow_sample if sample is None else sample,
                max_pending=self.settings.shadow_queue_size,
                on_outcome=self._on_outcome,
                live_busy=self._live_busy,
            )
            old, self.shadow = self.shadow, shadow
            self._on_change(shadow)
            log.info(
                "shadow: index %s with model %s, sampling %.3g of retrieves",
                shadow.index_version,
                shadow.model_version,
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
