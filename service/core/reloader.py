"""Hot swap: load an index version (and its model, when it needs another) in the background,
check and warm it, then swap it in by replacing the one engine reference the app holds.

`open_engine` is the one way an engine is loaded, at startup and on every reload:

1. `verify_version`: the manifest is parsed and the sha256 of every file checked, before
   `faiss.read_index` sees any of them;
2. the model: the live one when the manifest names its fingerprint, else the configured model
   directory or the manifest's `extra["model_dir"]`, whichever has that fingerprint (a model and
   its index swap as one unit) or was trained backward-compatible with it (`models.compat`: a
   new model may serve the still-live old index), else refused with `model_mismatch`;
3. the index is read, passed through the gate (`check_servable`: empty, dimension, metric,
   NaN / inf vectors) and the model/index check, and warmed up; so is its MUVERA index
   (`open_multi`), when the version was built with `--mode multi`.

`Reloader` owns the live local engine: the first load (`start`) and every swap (reload,
rollback, the CURRENT watcher) reach it through `_install`, the one place an engine becomes live.
Anything refused raises; `Reloader` turns it into a `ReloadError` with a reason from
`RejectReason`, reports it (`on_refused`, the failure counter) and leaves the old engine serving.
Requests hold the engine they started with, so they finish on that version. It knows nothing of
the app: the lifespan hands it the admission and the metrics hooks.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio
import anyio.to_thread

from index import (
    IndexIntegrityError,
    IndexRejectedError,
    InvalidVersionError,
    Manifest,
    NoIndexError,
    RejectReason,
    check_servable,
    check_version_id,
    current_version,
    older_versions,
    open_multi,
    open_version,
    set_current,
    verify_version,
)
from models.artifacts import ModelArtifactError, model_fingerprint, read_config
from models.compat import serves_index_of
from models.embedder import Embedder
from service.core.engine import Admission, ArtifactMismatchError, Engine, index_dim
from service.core.heap import freeze_heap
from service.settings import Settings

log = logging.getLogger(__name__)

STARTING = "the service is starting: model and index are not loaded yet"
FIX_MISSING = (
    "run `uniserve serve` (with bootstrap on it trains a model on the shipped sample and "
    "publishes an index) or `uniserve train` then `uniserve build-index`"
)
FIX_INDEX = "publish an index built from the loaded model with `uniserve build-index`"

# Artifact problems that bootstrap can repair; anything else is reported as is.
REPAIRABLE = (ModelArtifactError, NoIndexError, IndexRejectedError)


def reason_of(exc: BaseException) -> RejectReason:
    """The metric label of a failed load."""
    if isinstance(exc, IndexRejectedError):
        return exc.reason
    if isinstance(exc, NoIndexError):
        return RejectReason.NOT_FOUND
    if isinstance(exc, ModelArtifactError):
        return RejectReason.MODEL_MISMATCH  # the index's model cannot be loaded
    if isinstance(exc, OSError):
        return RejectReason.IO
    return RejectReason.INTERNAL


def not_ready_reason(exc: Exception) -> str:
    """What is wrong and how to fix it, for /readyz and 503 responses."""
    if isinstance(exc, ModelArtifactError | NoIndexError):
        return f"{exc}; {FIX_MISSING}"
    if isinstance(exc, IndexIntegrityError):
        return f"the live index is damaged: {exc}; {FIX_INDEX}"
    if isinstance(exc, ArtifactMismatchError):
        return f"{exc}; {FIX_INDEX}"
    if isinstance(exc, IndexRejectedError):
        return f"the live index was refused ({exc.reason.value}): {exc}; {FIX_INDEX}"
    return f"loading the model and index failed: {exc!r}; see the service log"


def created_timestamp(manifest: Manifest) -> float:
    """The manifest's creation time as epoch seconds (0.0 when unparsable)."""
    try:
        return datetime.fromisoformat(manifest.created_at).timestamp()
    except ValueError:
        return 0.0


def open_engine(
    settings: Settings,
    admission: Admission,
    *,
    version: str | None = None,
    current: Engine | None = None,
) -> Engine:
    """Load, check and warm an engine for index `version` (default: CURRENT). Blocking."""
    root = settings.index_path
    if version is None:
        version = current_version(root)
        if version is None:
            raise NoIndexError(f"no CURRENT pointer under {str(root)!r}")
    manifest = verify_version(root, version)  # sha256 of every file before faiss reads one
    embedder = _embedder_for(manifest, settings, current)
    index = open_version(root, manifest)
    check_servable(index, dim=index_dim(embedder, manifest))
    multi = open_multi(root, manifest, index)  # None unless built with --mode multi
    engine = Engine(embedder, index, manifest, admission=admission, multi=multi)
    engine.warm_up()
    return engine


def _embedder_for(manifest: Manifest, settings: Settings, current: Engine | None) -> Embedder:
    """The model the index was built for: the live one, or one found on disk by fingerprint."""
    wanted = manifest.model_fingerprint
    if current is not None and serves_index_of(
        current.embedder.config, current.embedder.fingerprint, wanted
    ):
        return current.embedder
    places = [Path(settings.model_path)]
    recorded = manifest.extra.get("model_dir")
    if isinstance(recorded, str) and recorded:
        places.append(Path(recorded))
    found: list[str] = []
    missing: ModelArtifactError | None = None
    for place in dict.fromkeys(places):
        try:
            fingerprint = model_fingerprint(place)
        except ModelArtifactError as exc:
            missing = missing or exc
            continue
        if fingerprint == wanted or serves_index_of(read_config(place), fingerprint, wanted):
            if place != Path(settings.model_path):
                log.warning(
                    "index %s was built for the model at %s, not the configured %s: "
                    "serving that model with it",
                    manifest.version,
                    place,
                    settings.model_path,
                )
            return Embedder.from_dir(place)
        found.append(f"{place} has {fingerprint[:12]}...")
    if not found and missing is not None:
        raise missing  # no model anywhere: say so, not "mismatch"
    raise ArtifactMismatchError(
        f"index version {manifest.version!r} was built for model {wanted[:12]}... and no model "
        f"with that fingerprint is at hand ({'; '.join(found)}); publish the model and index "
        "together (`uniserve build-index --model DIR` records DIR in the manifest)",
        RejectReason.MODEL_MISMATCH,
    )


def _point_current_at(root: Path, version: str) -> None:
    """set_current unless CURRENT already names `version` (an unusable CURRENT is replaced)."""
    try:
        named = current_version(root)
    except InvalidVersionError:
        named = None
    if named != version:
        set_current(root, version)


@asynccontextmanager
async def _nothing(engine: Engine) -> AsyncIterator[None]:
    yield


@dataclass(frozen=True)
class SwapOutcome:
    changed: bool  # False: the asked-for version was already live
    index_version: str
    model_version: str
    previous_index_version: str | None
    previous_model_version: str | None


class ReloadError(Exception):
    """A reload or rollback refused an index version; the old engine keeps serving."""

    def __init__(self, version: str | None, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.version = version
        self.reason = reason
        self.message = message


class Reloader:
    """Owns the live local engine: loads the first one, swaps later ones in (reload, rollback,
    the CURRENT watcher), one at a time. `engine` is None until a load succeeds;
    `not_ready_reason` then says why. `on_swap(engine, reloaded)` runs whenever an engine goes
    live (`reloaded` False for the first one); `on_refused(reason)` whenever a version is."""

    def __init__(
        self,
        settings: Settings,
        admission: Admission,
        *,
        on_swap: Callable[[Engine, bool], None] | None = None,
        on_refused: Callable[[RejectReason], None] | None = None,
        installing: Callable[[Engine], AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        """`installing(engine)`: entered around every swap, just before the engine goes live
        (the live catalogue brings the new engine up to its change log there)."""
        self.settings = settings
        self.admission = admission
        self.engine: Engine | None = None
        self.not_ready_reason = STARTING
        self.refused: str | None = None  # version the watcher last failed on: not retried
        self._on_swap = on_swap or (lambda engine, reloaded: None)
        self._on_refused = on_refused or (lambda reason: None)
        self._installing = installing or _nothing
        self._lock = anyio.Lock()

    @property
    def root(self) -> Path:
        return self.settings.index_path

    # ------------------------------------------------------------------ first load
    async def start(self, load: Callable[[], Engine]) -> None:
        """The first engine: `load()` (blocking: in a worker thread) makes it live, or its
        failure becomes `not_ready_reason` (the app then starts, not ready)."""
        async with self._lock:
            try:
                engine = await anyio.to_thread.run_sync(load)
            except Exception as exc:
                self.engine = None
                self.not_ready_reason = not_ready_reason(exc)
                if isinstance(exc, REPAIRABLE):
                    log.error("not ready: %s", self.not_ready_reason)
                else:
                    log.exception("not ready: %s", self.not_ready_reason)
                return
            await self._go_live(engine, reloaded=False)

    def close(self, reason: str) -> None:
        """Nothing serves from now on (shutdown); `reason` answers requests still arriving."""
        self.engine = None
        self.not_ready_reason = reason

    # ------------------------------------------------------------------ swaps
    async def reload(self, version: str | None = None) -> SwapOutcome:
        """Load `version` (default: CURRENT) and swap it in, unless it is already live."""
        async with self._lock:
            live = self.engine
            target = version
            if target is None:
                try:
                    target = await anyio.to_thread.run_sync(current_version, self.root)
                except (OSError, InvalidVersionError) as exc:  # CURRENT unreadable or hostile
                    raise self._failed(None, exc) from exc
                if target is None:
                    raise self._failed(None, NoIndexError(f"no CURRENT under {str(self.root)!r}"))
            if live is not None and live.index_version == target:
                return self._outcome(live, live, changed=False)
            try:
                engine = await self._open(target, live)
            except ReloadError:
                self.refused = target  # the watcher leaves it be; an explicit reload retries
                raise
            await self._go_live(engine, reloaded=True)
            return self._outcome(engine, live, changed=True)

    async def rollback(self, to: str | None = None) -> SwapOutcome:
        """Swap to version `to`, or to the newest version older than the live one that loads,
        then point CURRENT at it. Versions that fail to load are skipped (and counted); `to`
        must load. The id is checked before any file is touched (`check_version_id`)."""
        if to is not None:
            return await self._rollback_to(to)
        async with self._lock:
            live = self.engine
            before = live.index_version if live is not None else None
            if before is None:
                try:
                    before = await anyio.to_thread.run_sync(current_version, self.root)
                except (OSError, InvalidVersionError) as exc:
                    raise self._failed(None, exc) from exc
            older = await anyio.to_thread.run_sync(older_versions, self.root, before)
            errors: list[ReloadError] = []
            for version in older:  # newest first
                try:
                    engine = await self._open(version, live)
                except ReloadError as exc:
                    errors.append(exc)
                    continue
                try:
                    await anyio.to_thread.run_sync(set_current, self.root, version)
                except Exception as exc:
                    raise self._failed(version, exc) from exc
                await self._go_live(engine, reloaded=True)
                return self._outcome(engine, live, changed=True)
            if not errors:
                raise ReloadError(
                    None,
                    RejectReason.NOT_FOUND,
                    f"no index version older than {before!r} to roll back to",
                )
            raise ReloadError(
                None,
                errors[0].reason,
                f"no version older than {before!r} could be loaded: "
                + "; ".join(e.message for e in errors),
            )

    async def _rollback_to(self, version: str) -> SwapOutcome:
        try:
            check_version_id(version)
        except InvalidVersionError as exc:
            raise self._failed(None, exc) from exc
        async with self._lock:
            live = self.engine
            if live is not None and live.index_version == version:
                engine, changed = live, False
            else:
                engine, changed = await self._open(version, live), True
            try:
                await anyio.to_thread.run_sync(_point_current_at, self.root, version)
            except Exception as exc:
                raise self._failed(version, exc) from exc
            if changed:
                await self._go_live(engine, reloaded=True)
            return self._outcome(engine, live, changed=changed)

    async def _open(self, version: str, live: Engine | None) -> Engine:
        load = functools.partial(
            open_engine, self.settings, self.admission, version=version, current=live
        )
        try:
            return await anyio.to_thread.run_sync(load)
        except Exception as exc:
            raise self._failed(version, exc) from exc

    def _failed(self, version: str | None, exc: BaseException) -> ReloadError:
        reason = reason_of(exc)
        self._on_refused(reason)
        live = self.engine
        serving = f"still serving {live.index_version!r}" if live else "still not ready"
        message = f"index version {version!r} refused ({reason.value}): {exc}; {serving}"
        if reason is RejectReason.INTERNAL:
            log.error("%s", message, exc_info=exc)
        else:
            log.warning("%s", message)
        return ReloadError(version, reason, message)

    async def _go_live(self, engine: Engine, *, reloaded: bool) -> None:
        async with self._installing(engine):
            self._install(engine, reloaded=reloaded)

    def _install(self, engine: Engine, *, reloaded: bool) -> None:
        """The one way an engine goes live: one reference replaced. Requests holding the old
        engine finish on it."""
        self.engine = engine
        self.not_ready_reason = ""
        self.refused = None
        freeze_heap()  # the old engine's cycles collected, the new one kept out of full passes
        self._on_swap(engine, reloaded)
        log.info(
            "%s index %s (%s, %d items, dim %d, params %s) with model %s",
            "swapped in" if reloaded else "ready:",
            engine.index_version,
            engine.index.index_type,
            engine.index.count,
            engine.dim,
            engine.index.search_params,
            engine.model_version,
        )

    @staticmethod
    def _outcome(engine: Engine, previous: Engine | None, *, changed: bool) -> SwapOutcome:
        return SwapOutcome(
            changed=changed,
            index_version=engine.index_version,
            model_version=engine.model_version,
            previous_index_version=previous.index_version if previous else None,
            previous_model_version=previous.model_version if previous else None,
        )

    # ------------------------------------------------------------------ watcher
    async def poll_once(self) -> SwapOutcome | None:
        """Swap to CURRENT when it names another version than the live one (and not the one
        the watcher was last refused). Returns the outcome, None when nothing was swapped."""
        try:
            target = await anyio.to_thread.run_sync(current_version, self.root)
        except (OSError, InvalidVersionError) as exc:
            log.warning("cannot use CURRENT under %s: %s", self.root, exc)
            return None
        live = self.engine
        if target is None or target == self.refused:
            return None
        if live is not None and live.index_version == target:
            return None
        try:
            return await self.reload(target)
        except ReloadError:
            return None

    async def watch(self) -> None:
        """Poll CURRENT every `index_poll_seconds` until cancelled."""
        interval = self.settings.index_poll_seconds
        while True:
            await anyio.sleep(interval)
            try:
                await self.poll_once()
            except Exception:
                log.exception("index watcher: unexpected error; still watching")
