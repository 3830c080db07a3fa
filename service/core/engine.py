"""The serving engine: a loaded model, the live index and the catalogue vectors, nothing of HTTP.

Every torch or faiss call runs in a worker thread, never on the event loop. User-encoder calls
and ANN searches of concurrent requests are coalesced by two `Batcher`s (`encode_batch`,
`search_batch`): one forward pass and one FAISS search per batch. Backpressure is explicit: each
batcher's queue is bounded and other calls are admitted up to `max_inflight`; beyond that a call
fails at once with `overloaded` instead of queueing.

An engine is immutable: a model and an index (with its manifest) checked to belong together. A
hot swap builds a whole new engine and replaces the one reference the app holds; a request takes
that reference once, so it finishes on the version it started with. Engines an app swaps in
share one `Admission`, so the in-flight bound holds across a swap. The one part that changes
is the live catalogue's `delta` (`service.core.delta`), itself immutable: applying changes
replaces that reference, and a search takes it once with the request. `ModelEngine` is the
half that needs only the model (user vectors, rank, item embeddings): what a shard router serves
with.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import anyio
import anyio.to_thread
import numpy as np

from index import IndexRejectedError, ItemIndex, Manifest, MultiIndex, RejectReason
from index.item_index import Eligible
from models.blend import lookup
from models.compat import serves_index_of
from models.embedder import Embedder, ItemSpec
from models.features import SURFACE_FIELD
from models.vocab import History
from service.core.batcher import Batcher, BatchStats
from service.core.delta import Delta, merge
from service.core.filters import NO_FILTERS, Filters
from service.errors import ErrorType, ServiceError
from service.settings import Settings
from service.store.changelog import CHANGES_THROUGH, Change

T = TypeVar("T")


_SURFACE_MASKS_KEPT = 64  # distinct `surfaces` filters (and their prepared masks) memoised


class ArtifactMismatchError(IndexRejectedError):
    """The index was not built from the loaded model (other fingerprint, dimension or metric)."""


def index_dim(embedder: Embedder, manifest: Manifest) -> int:
    """The dimension an index version searches in: the model's, or the Matryoshka prefix it was
    built over (`uniserve build-index --dim`, recorded as `matryoshka_dim`)."""
    prefix = manifest.extra.get("matryoshka_dim")
    return prefix if isinstance(prefix, int) and not isinstance(prefix, bool) else embedder.dim


def check_compatible(embedder: Embedder, index: ItemIndex, manifest: Manifest) -> None:
    """Raise ArtifactMismatchError unless the index was built from this model's item vectors,
    or from those of an old model this one was trained to be backward-compatible with."""
    problems: list[tuple[RejectReason, str]] = []
    if not serves_index_of(embedder.config, embedder.fingerprint, manifest.model_fingerprint):
        problems.append(
            (
                RejectReason.MODEL_MISMATCH,
                f"index was built for model fingerprint {manifest.model_fingerprint[:12]}... "
                f"but the loaded model is {embedder.fingerprint[:12]}...",
            )
        )
    served = index_dim(embedder, manifest)
    if not (index.dim == manifest.dim == served and 1 <= served <= embedder.dim):
        prefix = f" (prefix {served} of it)" if served != embedder.dim else ""
        problems.append(
            (
                RejectReason.DIMENSION,
                f"dimensions differ: index {index.dim}, manifest {manifest.dim}, "
                f"model {embedder.dim}{prefix}",
            )
        )
    if index.metric != "ip":
        problems.append(
            (
                RejectReason.METRIC,
                f"index metric is {index.metric!r}; the model scores by inner product",
            )
        )
    if problems:
        raise ArtifactMismatchError(
            f"index version {manifest.version!r} does not match the model "
            f"{embedder.version!r}: " + "; ".join(text for _, text in problems),
            problems[0][0],
        )


@dataclass(frozen=True)
class BatchingConfig:
    """Dynamic batching of user-encoder calls and of ANN searches (see `service.core.batcher`)."""

    max_batch: int = 64
    max_wait: float = 0.0  # seconds a batch waits for more items once the worker is free
    max_queue: int = 64  # items waiting per stage; beyond, requests get 429 at once
    faiss_threads: int | None = None  # OpenMP threads of the search worker; None: FAISS default


@dataclass(frozen=True)
class EncodeJob:
    embedder: Embedder
    history: History


@dataclass(frozen=True)
class SearchJob:
    engine: Engine
    vector: np.ndarray  # (D,) float32
    k: int
    filters: Filters
    delta: Delta  # the engine's live catalogue changes when the request was made
    history: Sequence[str] = ()  # the user's item ids, oldest first: the blend's recent items


def encode_batch(jobs: list[EncodeJob]) -> list[np.ndarray]:
    """One user-encoder forward pass per model in the batch (one, except during a swap)."""
    out: list[np.ndarray] = [np.empty(0, np.float32)] * len(jobs)
    groups: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(id(job.embedder), []).append(i)
    for members in groups.values():
        embedder = jobs[members[0]].embedder
        vectors = embedder.user_vectors(
            [jobs[i].history for i in members], batch_size=len(members)
        )  # (b, D)
        for row, i in enumerate(members):
            out[i] = vectors[row]
    return out


def search_batch(jobs: list[SearchJob]) -> list[tuple[list[str], np.ndarray]]:
    """One FAISS search per (engine, filter, k) group of the batch: (item ids, scores) per job.

    Jobs sharing a filter share one eligibility mask, so the filter stays inside the search;
    grouping by k as well keeps every result identical to that job searched on its own.
    With live catalogue changes (`Delta`), rows of retired and upserted ids are masked inside
    the ANN search and the delta's items are searched exactly beside it, merged by score.
    When the model is served with a blend (`models.blend`), each job's top-k is re-scored
    with its history's co-occurrence term (`Engine.blended`).
    """
    out: list[tuple[list[str], np.ndarray]] = [([], np.empty(0, np.float32))] * len(jobs)
    groups: dict[tuple[int, Filters, int, int], list[int]] = {}
    for i, job in enumerate(jobs):
        key = (id(job.engine), job.filters, job.k, id(job.delta))
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        first = jobs[members[0]]
        engine, delta = first.engine, first.delta
        allowed = engine.allowed_rows(first.filters, delta.hidden_rows)  # (N,) bool or None
        queries = engine.index_queries(np.stack([jobs[i].vector for i in members]))  # (b, d)
        scores, rows = engine.index.search(queries, first.k, allowed=allowed)  # (b, k)
        extra = delta.search(queries, first.k, first.filters) if delta.count else None
        for row, i in enumerate(members):
            valid = rows[row] >= 0
            found = (engine.index.item_ids[rows[row][valid]].tolist(), scores[row][valid])
            found = found if extra is None else merge(found, extra[row], first.k)
            if engine.blend is not None and jobs[i].history:
                found = engine.blended(
                    found, jobs[i].history, queries[row], first.k, allowed, delta, first.filters
                )
            out[i] = found
    return out


def _set_faiss_threads(n: int | None) -> None:
    """OpenMP's thread count is per calling thread: set it in the thread that searches."""
    if n is not None:
        import faiss

        faiss.omp_set_num_threads(n)


class Admission:
    """Admission and batching shared by every engine an app swaps in.

    User-encoder calls and ANN searches go through two `Batcher`s (bounded queues, one worker
    thread each, so encoding and searching overlap); a full queue refuses at once with
    `overloaded`. Other engine calls (rank, item embedding) are admitted up to `max_inflight`
    at once (then queued for one of `worker_threads` threads, or running) or refused at once;
    they never wait for admission.
    """

    def __init__(
        self,
        max_inflight: int = 64,
        worker_threads: int | None = None,
        batching: BatchingConfig | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.max_inflight = max_inflight
        self.worker_threads = worker_threads or min(max_inflight, os.cpu_count() or 1)
        self.inflight = 0
        self._limiter: anyio.CapacityLimiter | None = None  # made on first use, in the loop
        b = self.batching = batching or BatchingConfig()
        stage = functools.partial(
            Batcher,
            max_batch=b.max_batch,
            max_wait=b.max_wait,
            max_queue=b.max_queue,
            on_batch=on_batch,
        )
        self.encoder: Batcher[EncodeJob, np.ndarray] = stage(encode_batch, name="encode")
        self.searcher: Batcher[SearchJob, tuple[list[str], np.ndarray]] = stage(
            search_batch,
            name="search",
            thread_init=functools.partial(_set_faiss_threads, b.faiss_threads),
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, on_batch: Callable[[BatchStats], None] | None = None
    ) -> Admission:
        batching = BatchingConfig(
            max_batch=settings.batch_max_size,
            max_wait=settings.batch_max_wait_ms / 1000,
            max_queue=settings.batch_queue_size,
            faiss_threads=settings.faiss_threads,
        )
        return cls(settings.max_inflight, batching=batching, on_batch=on_batch)

    async def aclose(self) -> None:
        await self.encoder.aclose()
        await self.searcher.aclose()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` in a worker thread, or raise `overloaded` when the bound is reached."""
        if self.inflight >= self.max_inflight:
            raise ServiceError(
                ErrorType.OVERLOADED,
                f"{self.inflight} requests are already being computed (max_inflight="
                f"{self.max_inflight}); retry shortly",
            )
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.worker_threads)
        self.inflight += 1
        try:
            return await anyio.to_thread.run_sync(
                functools.partial(fn, *args), limiter=self._limiter
            )
        finally:
            self.inflight -= 1


class ModelEngine:
    """The model half of an engine: user encoding (batched), interest vectors, ranking and
    item embedding, all from the model alone. `Engine` adds the live index; a router
    (`service.core.router.RouterEngine`) serves with this half and searches remote shards."""

    def __init__(
        self,
        embedder: Embedder,
        *,
        max_inflight: int = 64,
        worker_threads: int | None = None,
        admission: Admission | None = None,
    ) -> None:
        """`admission` is shared with the engine this one replaces; a new one when None."""
        self.embedder = embedder
        self.item_vectors = embedder.item_vectors()  # (N_model, D) float32, row = item_ids[row]
        self.blend = embedder.blend  # the co-occurrence term served with the model, if any
        self.admission = admission or Admission(max_inflight, worker_threads)
        self.loaded_at = time.time()  # when this engine was built (epoch seconds)

    @property
    def inflight(self) -> int:
        return self.admission.inflight

    @inflight.setter
    def inflight(self, value: int) -> None:
        self.admission.inflight = value

    @property
    def max_inflight(self) -> int:
        return self.admission.max_inflight

    @property
    def model_version(self) -> str:
        return self.embedder.version

    @property
    def delta_seq(self) -> int:
        """The live catalogue change last applied (0: none; a router applies none)."""
        return 0

    @property
    def dim(self) -> int:
        return self.embedder.dim

    @property
    def item_features(self) -> dict[str, str]:
        """The metadata fields `embed_items` reads, by kind ("categorical" | "text"), in the
        model's order; the surface is not one of them (it has its own place in an item)."""
        return {
            name: kind
            for name, kind in self.embedder.metadata_fields.items()
            if name != SURFACE_FIELD
        }

    # ------------------------------------------------------------------ threads + backpressure
    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await self.admission.run(fn, *args)

    # ------------------------------------------------------------------ operations
    async def user_vectors(self, histories: Sequence[History]) -> np.ndarray:
        """(B, D) float32 user vectors; unknown item ids and surfaces map to UNK tokens.

        Each history joins the encode batcher, so concurrent requests share forward passes.
        """
        if not histories:
            return np.zeros((0, self.dim), np.float32)
        encoder = self.admission.encoder
        if len(histories) == 1:  # every request: no gather (a task per history) on the loop
            return (await encoder.submit(EncodeJob(self.embedder, histories[0])))[None]
        vectors = await asyncio.gather(
            *(encoder.submit(EncodeJob(self.embedder, h)) for h in histories)
        )
        return np.stack(vectors)

    async def user_interests(
        self, histories: Sequence[History], num_interests: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Interest vectors (B, K, D) float32 and their (B, K) bool mask (models/multi.py)."""
        return await self._run(self.embedder.user_multi_vectors, histories, num_interests)

    async def rank(
        self, user_vector: np.ndarray, candidates: Sequence[str], history: Sequence[str] = ()
    ) -> tuple[list[str], np.ndarray, list[str]]:
        """Score candidates by inner product with the model's item vectors, plus the blend's
        co-occurrence term of `history` (the user's item ids, oldest first) when the model is
        served with one: the score `retrieve` ranks by.

        Returns (ids sorted by score desc, scores, unknown ids); duplicates are ranked once, ties
        keep the candidates' order.
        """
        return await self._run(self._rank, user_vector, candidates, history)

    def _rank(
        self, user_vector: np.ndarray, candidates: Sequence[str], history: Sequence[str] = ()
    ) -> tuple[list[str], np.ndarray, list[str]]:
        unique = list(dict.fromkeys(candidates))
        rows = self.embedder.item_rows(unique)  # (M,)
        known = rows >= 0
        unknown = [c for c, ok in zip(unique, known, strict=True) if not ok]
        ids = [c for c, ok in zip(unique, known, strict=True) if ok]
        scores = self.item_vectors[rows[known]] @ user_vector  # (m,)
        scores += self.blend_bonus(rows[known], history)
        order = np.argsort(-scores, kind="stable")
        return [ids[i] for i in order], scores[order], unknown

    def blend_bonus(self, rows: np.ndarray, history: Sequence[str]) -> np.ndarray | float:
        """The blend's term for the model's catalogue `rows` (M,) (-1: none) given a history:
        (M,) float32, or 0.0 when the model has no blend or the history is empty."""
        if self.blend is None or not history:
            return 0.0
        return self.blend.row_bonus(self.embedder.vocab, history, rows)

    async def embed_items(self, items: Sequence[ItemSpec]) -> np.ndarray:
        """(B, D) float32 item vectors; unknown ids get metadata-only (cold-start) vectors."""
        self.check_items(items)
        try:
            return await self._run(self.embedder.embed_items, items)
        except ValueError as exc:  # the embedder's documented rejection of bad metadata
            raise ServiceError(ErrorType.INVALID_INPUT, f"items: {exc}") from exc

    def check_items(self, items: Sequence[ItemSpec]) -> None:
        """`invalid_input` unless every item's features are fields this model reads (the
        surface has its own place in an item, not among the features)."""
        fields = self.item_features
        for i, (_, _, features) in enumerate(items):
            if SURFACE_FIELD in features:
                raise ServiceError(
                    ErrorType.INVALID_INPUT,
                    f"items[{i}].features: pass the surface as items[{i}].surface, not a feature",
                )
            unknown = sorted(set(features).difference(fields))
            if unknown:
                raise ServiceError(
                    ErrorType.INVALID_INPUT,
                    f"items[{i}].features: unknown field(s) {unknown}; "
                    f"this model reads {sorted(fields)}",
                )


class Engine(ModelEngine):
    """A model and the live index version built from it (checked to belong together)."""

    def __init__(
        self,
        embedder: Embedder,
        index: ItemIndex,
        manifest: Manifest,
        *,
        max_inflight: int = 64,
        worker_threads: int | None = None,
        admission: Admission | None = None,
        multi: MultiIndex | None = None,
    ) -> None:
        """`admission` is shared with the engine this one replaces; a new one when None.
        `multi`: the version's MUVERA index (same rows as `index`), when built with one."""
        check_compatible(embedder, index, manifest)
        if multi is not None and (multi.count != index.count or multi.dim != embedder.dim):
            raise ArtifactMismatchError(
                f"index version {manifest.version!r}: the multi-vector index has "
                f"{multi.count} rows of dim {multi.dim}, the index {index.count} rows and the "
                f"model dim {embedder.dim}",
                RejectReason.DIMENSION,
            )
        super().__init__(
            embedder, max_inflight=max_inflight, worker_threads=worker_threads, admission=admission
        )
        self.index = index
        self.multi = multi
        self.manifest = manifest
        # the index may hold a Matryoshka prefix of the model's vectors: queries are cut alike
        self.index_dim = index_dim(embedder, manifest)
        self._surface_masks: dict[tuple[str, ...], np.ndarray] = {}
        # (surfaces, id of the delta's hidden rows) -> (those rows, their prepared mask)
        self._eligible: dict[
            tuple[tuple[str, ...] | None, int], tuple[np.ndarray | None, Eligible]
        ] = {}
        # live catalogue changes since the version was built: the one reference replaced as
        # changes are applied (`apply_changes`), by `service.core.catalogue.LiveCatalogue`
        self.delta = Delta.empty(changes_through(manifest))
        if self.blend is not None:  # what `blended` needs, made once per version
            self._index_row_of_model = index.row_of(embedder.item_ids)  # (N_model,), -1: none
            self._index_space_items = self.index_queries(self.item_vectors)  # (N_model, d)

    @property
    def delta_seq(self) -> int:
        return self.delta.seq

    def apply_changes(self, changes: Sequence[Change]) -> None:
        """Apply catalogue changes (blocking: upserted items are encoded by this engine's
        model, as `build-index` encodes a catalogue); requests already searching keep the
        delta they took."""
        from service.jobs.catalog import encode_items  # torch + pyarrow: the job's encoding

        delta = self.delta.applied(
            changes,
            functools.partial(encode_items, self.embedder),
            self.index_queries,
            self.index.row_of,
            self.embedder.item_rows,
        )
        if delta is not self.delta:  # masks prepared for the old hidden rows are stale now
            self._eligible = {}
        self.delta = delta

    @property
    def index_version(self) -> str:
        return self.manifest.version

    def index_queries(self, user_vectors: np.ndarray) -> np.ndarray:
        """User vectors (B, D) in the index's space (B, index_dim): the first index_dim
        dimensions, unit norm again for a cosine model, exactly as the build cut the items."""
        if self.index_dim == self.embedder.dim:
            return user_vectors
        return self.embedder.prefix(user_vectors, self.index_dim)

    def warm_up(self) -> None:
        """One dummy user embedding and one search, so the first request pays no lazy init."""
        vec = self.embedder.user_vectors([([], [])])  # (1, D)
        self.index.search(self.index_queries(vec), 1)
        if self.multi is not None:
            vecs, mask = self.embedder.user_multi_vectors([([], [])], 1)  # (1, 1, D)
            self.multi.search(vecs, 1, query_mask=mask, candidates=1)

    # ------------------------------------------------------------------ index operations
    async def retrieve(
        self,
        user_vector: np.ndarray,
        k: int,
        filters: Filters = NO_FILTERS,
        history: Sequence[str] = (),
    ) -> tuple[list[str], np.ndarray]:
        """Top-k item ids and scores (desc) among eligible items.

        Eligible: surface in `filters.surfaces` (all when None) and id not in `filters.exclude`
        (unknown ids ignored). The filter is applied inside the ANN search, so k items come back
        whenever at least k items are eligible. `history`: the user's item ids, oldest first;
        when the model is served with a blend, the score is the model's plus the co-occurrence
        term of its recent items (`blended`).
        """
        vector = np.asarray(user_vector, dtype=np.float32).reshape(-1)
        job = SearchJob(self, vector, k, filters, self.delta, history)
        return await self.admission.searcher.submit(job)

    def blended(
        self,
        found: tuple[list[str], np.ndarray],
        history: Sequence[str],
        query: np.ndarray,
        k: int,
        allowed: Eligible | None,
        delta: Delta,
        filters: Filters,
    ) -> tuple[list[str], np.ndarray]:
        """The top-k by the blended score, from the search's top-k by the model's score.

        The blend's term is >= 0, and > 0 only for the recent items' co-occurring neighbours
        (by the row of their id in the model): so the blended top-k is among the search's
        top-k (re-scored: model score + term) and those neighbours, scored here against
        `query`, the user vector in the index's space: an upserted neighbour with its delta
        vector when the delta's `filters` pass it, one of the live index with the model's
        vector of its id cut to that space (as the build cuts it) when `allowed` (the
        search's mask: filters, retired and upserted rows) passes its row. Exact whenever the
        search's top-k is (a flat index); with ANN, as good as its recall.
        """
        near, bonus = self.blend.sparse_bonus(self.embedder.vocab, history)  # type: ignore[union-attr]
        if not near.size:
            return found
        ids, scores = found
        found_rows = self.embedder.item_rows(ids)  # (k,) model rows, -1: none
        rescored = scores.astype(np.float32) + lookup(near, bonus, found_rows)  # (k,)
        fresh = ~np.isin(near, found_rows)  # (P,) neighbours not already found
        index_rows = self._index_row_of_model[near]  # (P,)
        in_index = fresh & (index_rows >= 0)
        if allowed is not None:
            in_index &= allowed.mask[np.maximum(index_rows, 0)]
        extra_ids = self.index.item_ids[index_rows[in_index]].tolist()
        extra_scores = [self._index_space_items[near[in_index]] @ query + bonus[in_index]]
        if delta.count:  # upserted neighbours: hidden in the index, held by the delta
            held = delta.rows_of_model(near)  # (P,) delta rows, -1: none
            in_delta = fresh & (held >= 0)
            if in_delta.any():
                in_delta[in_delta] = delta.eligible(filters)[held[in_delta]]
                extra_ids += delta.ids[held[in_delta]].tolist()
                extra_scores.append(delta.search_vectors[held[in_delta]] @ query + bonus[in_delta])
        all_ids = [*ids, *extra_ids]
        all_scores = np.concatenate([rescored, *extra_scores]).astype(np.float32)  # (k + e,)
        order = np.argsort(-all_scores, kind="stable")[:k]
        return [all_ids[i] for i in order], all_scores[order]

    def require_multi(self) -> MultiIndex:
        """The MUVERA index, or `unservable` (409: the request is valid, this index cannot
        serve it) when the live index was built without one."""
        if self.multi is None:
            raise ServiceError(
                ErrorType.UNSERVABLE,
                f"mode 'multi' needs an index built with multi-vectors; the live index "
                f"{self.index_version!r} has none (publish one with `uniserve build-index "
                "--mode multi`, or use mode 'single')",
            )
        return self.multi

    async def retrieve_multi(
        self,
        history: History,
        k: int,
        *,
        num_interests: int,
        candidates: int,
        filters: Filters = NO_FILTERS,
    ) -> tuple[list[str], np.ndarray, float]:
        """Top-k item ids and Chamfer scores (desc) among eligible items, and the seconds spent
        re-ranking: `candidates` rows by MUVERA FDE inner product (filters inside the FAISS
        search), re-ranked by exact Chamfer similarity of the user's interest vectors with each
        item's multi-vectors. Eligibility as in `retrieve`."""
        multi = self.require_multi()
        return await self._run(
            self._retrieve_multi, multi, history, k, num_interests, candidates, filters
        )

    def _retrieve_multi(
        self,
        multi: MultiIndex,
        history: History,
        k: int,
        num_interests: int,
        candidates: int,
        filters: Filters,
    ) -> tuple[list[str], np.ndarray, float]:
        vecs, mask = self.embedder.user_multi_vectors([history], num_interests)  # (1, K, D)
        allowed = self.allowed_rows(filters, self.delta.retired_rows)  # (N,) bool or None
        timings: dict[str, float] = {}
        scores, rows = multi.search(
            vecs, k, query_mask=mask, candidates=candidates, allowed=allowed, timings=timings
        )  # (1, k)
        valid = rows[0] >= 0
        return self.index.item_ids[rows[0][valid]].tolist(), scores[0][valid], timings["rerank"]

    def allowed_rows(self, filters: Filters, hidden: np.ndarray | None = None) -> Eligible | None:
        """The index rows passing the filters and not `hidden` (rows of retired or upserted
        ids), prepared for search (`Eligible`); None when every row passes. Without an
        `exclude` list the answer depends only on the surfaces and the delta's `hidden` array,
        so it is memoised per pair: a search with a live catalogue delta does not pay O(N)
        per request to mask, count and pack the index's rows."""
        hidden = None if hidden is None or not hidden.size else hidden
        if filters.surfaces is None and not filters.exclude and hidden is None:
            return None
        key = (filters.surfaces, id(hidden))
        if not filters.exclude:
            memo = self._eligible.get(key)
            if memo is not None and memo[0] is hidden:  # the same array, not a reused id
                return memo[1]
        mask = None
        if filters.surfaces is not None:
            mask = self._surface_masks.get(filters.surfaces)
            if mask is None:
                mask = self.index.surface_mask(filters.surfaces)  # (N,)
                if len(self._surface_masks) < _SURFACE_MASKS_KEPT:
                    self._surface_masks[filters.surfaces] = mask
        if filters.exclude:
            rows = self.index.row_of(filters.exclude)  # (M,)
            rows = rows[rows >= 0]
            if rows.size:
                mask = np.ones(self.index.count, dtype=bool) if mask is None else mask.copy()
                mask[rows] = False
        if hidden is not None:
            mask = np.ones(self.index.count, dtype=bool) if mask is None else mask.copy()
            mask[hidden] = False
        if mask is None:
            return None
        eligible = Eligible(mask)
        if not filters.exclude:
            if len(self._eligible) >= _SURFACE_MASKS_KEPT:
                self._eligible.clear()
            self._eligible[key] = (hidden, eligible)
        return eligible

    # ------------------------------------------------------------------ rank with the delta
    def _rank(
        self, user_vector: np.ndarray, candidates: Sequence[str], history: Sequence[str] = ()
    ) -> tuple[list[str], np.ndarray, list[str]]:
        """As `ModelEngine._rank`, over the catalogue as it is served (the live index and its
        delta): an upserted item is scored with its delta vector; an item of the live index
        with the model's vector of its id, or, when the model has none (a catalogue's
        cold-start item, an upsert a rebuild folded in), with its index vector against the
        user vector in the index's space; a retired item, and one neither holds, is unknown.
        The blend's term is added as `retrieve` adds it (by the id's row in the model)."""
        delta = self.delta
        unique = list(dict.fromkeys(candidates))
        rows = self.embedder.item_rows(unique)  # (M,)
        index_rows = self.index.row_of(unique)  # (M,)
        m = len(unique)
        in_delta = np.fromiter((c in delta.row for c in unique), bool, m)  # (M,)
        retired = np.fromiter((c in delta.retired for c in unique), bool, m)  # (M,)
        in_index = (index_rows >= 0) & ~in_delta & ~retired
        by_model = in_index & (rows >= 0)  # the model's vector of the id, as ModelEngine
        by_index = in_index & (rows < 0)  # no id in the model: the index's vector
        scores = np.zeros(m, np.float32)  # (M,)
        scores[by_model] = self.item_vectors[rows[by_model]] @ user_vector
        if in_delta.any():
            held = [delta.row[c] for c, hit in zip(unique, in_delta, strict=True) if hit]
            scores[in_delta] = delta.vectors[held] @ user_vector
        if by_index.any():
            query = self.index_queries(user_vector[None])[0]  # (d,)
            try:
                vectors = self.index.faiss_index.reconstruct_batch(index_rows[by_index])  # (b, d)
                scores[by_index] = vectors @ query
            except RuntimeError:  # an index type that cannot give its vectors back
                by_index[:] = False
        known = by_model | by_index | in_delta
        scores += self.blend_bonus(np.where(known, rows, -1), history)
        unknown = [c for c, ok in zip(unique, known, strict=True) if not ok]
        ids = [c for c, ok in zip(unique, known, strict=True) if ok]
        kept = scores[known]  # (k,)
        order = np.argsort(-kept, kind="stable")
        return [ids[i] for i in order], kept[order], unknown


def changes_through(manifest: Manifest) -> int:
    """The change log position a version was built through (`build-index` folds the log in
    and records it); 0 when it folded none."""
    seq = manifest.extra.get(CHANGES_THROUGH, 0)
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else 0
