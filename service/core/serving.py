"""Request-level serving logic over the engine, cache and event store; nothing of HTTP.

`ServingCore` turns "who is the user, what did they just do, what do they want" into response
bodies: it assembles the user's history (stored events, then the request's), looks results up in
the cache under `cache_key`, computes misses with the `Engine`, and serialises the result once,
so a cache hit is served as stored bytes. The cache fails open: an error is a miss, never a 5xx.
Concurrent identical misses compute once (`SingleFlight` around lookup + compute + store).

Each public operation runs inside one `budget()` scope (the Redis link's per-request time
budget when Redis is configured, nothing otherwise). When the event store is unreachable, a
request that brings its own events is answered from those alone (uncached); one that relies on
stored events, and every event write, fails with `backend_unavailable` (503).

In router mode the engine is a `RouterEngine` (`service.core.router`): a retrieve encodes the user
here as usual and the shard replicas search (`_fan_out`); an answer missing shards is flagged
`partial` and returned as `Uncacheable`, so it is never stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import orjson

from service.core.engine import Engine, ItemSpec
from service.core.filters import Filters
from service.core.online import OnlineTracker, RetrieveCall
from service.core.router import RouterEngine
from service.errors import ErrorType, ServiceError
from service.store.cache import Cache, cache_key
from service.store.events import Event, EventStore, EventStoreUnavailable
from service.store.singleflight import SingleFlight

log = logging.getLogger(__name__)


def to_json(payload: Any) -> bytes:
    """Serialise a response body; NumPy arrays and scalars are written as JSON numbers."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def scored_items(ids: Sequence[str], scores: Sequence[float] | np.ndarray) -> list[dict[str, Any]]:
    """The `items` of every retrieve, rank and shard-search answer: `[{item_id, score}]`."""
    return [{"item_id": i, "score": s} for i, s in zip(ids, scores, strict=True)]


class Uncacheable(bytes):
    """A computed body that is answered but never cached (a router's partial result: the
    missing shard may be back for the next request)."""


@dataclass(frozen=True)
class UserHistory:
    user_id: str | None
    request_events: Sequence[Event]
    events: Sequence[Event]  # stored events, then the request's, oldest first
    watermark: int  # the user's event watermark when the stored events were read (0: none)
    cacheable: bool = True  # False when the stored events could not be read (store down)

    def model_input(self) -> tuple[list[str], list[str]]:
        """(item ids, surfaces) as the embedder takes them."""
        return [e.item_id for e in self.events], [e.surface for e in self.events]

    def key_params(self) -> dict[str, Any]:
        """What, beside the watermark, determines this history (for cache keys)."""
        return {"user": self.user_id, "events": self._event_keys}

    @cached_property
    def _event_keys(self) -> list[tuple[str, str]]:  # made once: a retrieve needs two keys
        return [(e.item_id, e.surface) for e in self.request_events]


class ServingCore:
    def __init__(
        self,
        engine: Engine | RouterEngine,
        cache: Cache,
        events: EventStore,
        *,
        cache_ttl: float,
        on_cache: Callable[[str, str], None] | None = None,
        flights: SingleFlight[bytes] | None = None,
        budget: Callable[[], AbstractContextManager[object]] | None = None,
        on_stage: Callable[[str, float], None] | None = None,
        multi_candidates: int = 200,
        multi_interests: int = 4,
        online: OnlineTracker | None = None,
    ) -> None:
        """`multi_candidates`: rows re-ranked by exact Chamfer per multi-mode retrieve;
        `multi_interests`: interest vectors per user in multi mode; `online`: told of every
        retrieve answered for a user id and every stored event (online quality)."""
        self.engine = engine
        self.cache = cache
        self.events = events
        self.cache_ttl = cache_ttl
        self._on_cache = on_cache or (lambda op, result: None)
        self.flights = flights if flights is not None else SingleFlight()  # share across requests
        self._budget = budget or nullcontext
        self._on_stage = on_stage or (lambda stage, seconds: None)
        self.multi_candidates = multi_candidates
        self.multi_interests = multi_interests
        self.online = online

    # ------------------------------------------------------------------ history
    async def history(self, user_id: str | None, events: Sequence[Event] | None) -> UserHistory:
        """The user's stored events followed by `events`.

        The caller has checked that a user id, events or both are given (the request schemas
        do, where a request enters). Raises unknown_user when the user has no stored events and
        the request brings none.
        """
        request_events = list(events or ())
        if user_id is None:
            return UserHistory(None, request_events, request_events, 0)
        try:
            stored, watermark = await self.events.read(user_id)  # read together: consistent
        except EventStoreUnavailable as exc:
            if not request_events:
                raise ServiceError(
                    ErrorType.BACKEND_UNAVAILABLE,
                    f"user {user_id!r}'s stored events cannot be read now ({exc}); retry "
                    "shortly or send the events with the request",
                ) from exc
            log.debug("event store down: serving %r from the request's events only", user_id)
            return UserHistory(user_id, request_events, request_events, 0, cacheable=False)
        if not stored and not request_events:
            raise ServiceError(
                ErrorType.UNKNOWN_USER,
                f"user {user_id!r} has no stored events; send events with the request or "
                "POST them to /v1/events first",
            )
        return UserHistory(user_id, request_events, [*stored, *request_events], watermark)

    async def record_events(self, user_id: str, events: Sequence[Event]) -> bytes:
        with self._budget():
            try:
                stored, _ = await self.events.append(user_id, events)
            except EventStoreUnavailable as exc:
                raise ServiceError(
                    ErrorType.BACKEND_UNAVAILABLE,
                    f"events were not stored ({exc}); retry shortly (a retry after a timeout "
                    "may store them twice)",
                ) from exc
        if self.online is not None:  # outside the budget: its work has its own
            self.online.events(user_id, events)
        return to_json({"user_id": user_id, "stored": stored})

    # ------------------------------------------------------------------ cache (fails open)
    def _key(self, op: str, history: UserHistory, **params: Any) -> str | None:
        """The cache key of `op` for this history, or None when it must not be cached."""
        if not history.cacheable:
            return None
        return cache_key(
            op,
            model_version=self.engine.model_version,
            index_version=self.engine.index_version,
            watermark=history.watermark,
            params={**history.key_params(), **params},
        )

    async def _lookup(
        self, op: str, key: str, valid: Callable[[bytes], bool] | None = None
    ) -> bytes | None:
        if self.cache_ttl <= 0:
            return None
        started = time.perf_counter()
        try:
            value = await self.cache.get(key)
            if value is not None and valid is not None and not valid(value):
                raise ValueError(f"cached {op} value has an unexpected shape ({len(value)} B)")
        except ConnectionError as exc:  # backend down (already logged by it): a miss
            log.debug("cache get failed (%s); treating as a miss", exc)
            self._on_cache(op, "error")
            return None
        except Exception:
            log.warning("cache get failed; treating as a miss", exc_info=True)
            self._on_cache(op, "error")
            return None
        finally:
            self._on_stage("cache", time.perf_counter() - started)
        self._on_cache(op, "miss" if value is None else "hit")
        return value

    async def _store(self, key: str, value: bytes) -> None:
        if self.cache_ttl <= 0:
            return
        try:
            await self.cache.set(key, value, self.cache_ttl)
        except ConnectionError as exc:
            log.debug("cache set failed (%s); result not cached", exc)
        except Exception:
            log.warning("cache set failed; result not cached", exc_info=True)

    async def _cached(
        self,
        op: str,
        key: str | None,
        compute: Callable[[], Awaitable[bytes]],
        valid: Callable[[bytes], bool] | None = None,
    ) -> bytes:
        """The cached value under `key`, else `compute()` stored there; concurrent callers with
        the same key share one lookup and one computation. key None: compute, cache nothing."""
        if key is None:
            return await compute()

        async def lookup_or_compute() -> bytes:
            if (hit := await self._lookup(op, key, valid)) is not None:
                return hit
            value = await compute()
            if not isinstance(value, Uncacheable):
                await self._store(key, value)
            return value

        return await self.flights.do(key, lookup_or_compute)

    # ------------------------------------------------------------------ operations
    async def user_vector(self, history: UserHistory) -> np.ndarray:
        """(D,) float32 user vector, cached per history."""

        async def compute() -> bytes:
            vector = (await self.engine.user_vectors([history.model_input()]))[0]  # (D,)
            return bytes(vector.astype(np.float32, copy=False).tobytes())

        raw = await self._cached(
            "user_vector",
            self._key("user_vector", history),
            compute,
            valid=lambda raw: len(raw) == 4 * self.engine.dim,
        )
        return np.frombuffer(raw, dtype=np.float32)

    async def embed_user(
        self, user_id: str | None, events: Sequence[Event] | None, *, multi: bool = False
    ) -> bytes:
        """The user vector; with `multi`, also the user's interest vectors (uncached)."""
        with self._budget():
            history = await self.history(user_id, events)
            vector = await self.user_vector(history)
            body: dict[str, Any] = {"embedding": vector}
            if multi:
                vecs, mask = await self.engine.user_interests(
                    [history.model_input()], self.multi_interests
                )  # (1, K, D), (1, K)
                body["interests"] = vecs[0][mask[0]]
        return to_json({**body, "model_version": self.engine.model_version})

    async def retrieve(
        self,
        user_id: str | None,
        events: Sequence[Event] | None,
        *,
        k: int,
        surfaces: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        exclude_seen: bool = False,
        mode: str = "single",
    ) -> bytes:
        """Top-k items as a response body. Mode "single": ANN search with the user vector;
        "multi": MUVERA candidates re-ranked by exact Chamfer (`Engine.retrieve_multi`).
        `surfaces` and `exclude` are normalised here, once (`Filters.of`)."""
        started = time.perf_counter()
        if mode == "multi":
            self.engine.require_multi()  # a clear 409 before any lookup
        filters = Filters.of(surfaces, exclude)
        with self._budget():
            history = await self.history(user_id, events)
            key = self._key(
                "retrieve",
                history,
                k=k,
                surfaces=filters.surfaces,
                exclude=filters.exclude,
                seen=exclude_seen,
                delta=self.engine.delta_seq,  # live catalogue changes applied
                **(
                    {"mode": mode, "candidates": self.multi_candidates, "K": self.multi_interests}
                    if mode == "multi"
                    else {}
                ),
            )

            async def compute() -> bytes:
                eligible = (
                    filters.excluding(e.item_id for e in history.events)
                    if exclude_seen
                    else filters
                )
                if isinstance(self.engine, RouterEngine):
                    vector = await self.user_vector(history)
                    return await self._fan_out(
                        self.engine, vector, k, eligible, history.model_input()[0]
                    )
                if mode == "multi":
                    ids, scores, rerank_seconds = await self.engine.retrieve_multi(
                        history.model_input(),
                        k,
                        num_interests=self.multi_interests,
                        candidates=self.multi_candidates,
                        filters=eligible,
                    )
                    self._on_stage("rerank", rerank_seconds)
                else:
                    vector = await self.user_vector(history)
                    ids, scores = await self.engine.retrieve(
                        vector, k, eligible, history.model_input()[0]
                    )
                return to_json(
                    {
                        "items": scored_items(ids, scores),
                        "model_version": self.engine.model_version,
                        "index_version": self.engine.index_version,
                    }
                )

            body = await self._cached("retrieve", key, compute)
        self._on_stage("total", time.perf_counter() - started)
        if self.online is not None and user_id is not None:  # outside the budget, as above
            call = RetrieveCall(
                user_id, history.events, k, filters, exclude_seen, mode, self.online.clock()
            )
            self.online.served(call, body)
        return body

    async def _fan_out(
        self,
        router: RouterEngine,
        vector: np.ndarray,
        k: int,
        filters: Filters,
        history: Sequence[str],
    ) -> bytes:
        """A router's retrieve body: the shards' merged top-k, flagged `partial` (and not
        cached) when shards are missing; 503 backend_unavailable when every shard is."""
        merged = await router.retrieve(vector, k, filters, history)
        if not merged.versions:
            raise ServiceError(
                ErrorType.BACKEND_UNAVAILABLE,
                f"no shard answered (all {len(merged.missing)} failed or timed out; see GET "
                "/v1/index for why); retry shortly",
            )
        body = to_json(
            {
                "items": scored_items(merged.item_ids, merged.scores),
                "model_version": router.model_version,
                "index_version": merged.index_version,
                "partial": bool(merged.missing),
                "missing_shards": merged.missing,
            }
        )
        return Uncacheable(body) if merged.missing else body

    async def rank(
        self, user_id: str | None, events: Sequence[Event] | None, candidates: Sequence[str]
    ) -> bytes:
        with self._budget():
            history = await self.history(user_id, events)

            async def compute() -> bytes:
                vector = await self.user_vector(history)
                ids, scores, unknown = await self.engine.rank(
                    vector, candidates, history.model_input()[0]
                )
                return to_json(
                    {
                        "items": scored_items(ids, scores),
                        "unknown": unknown,
                        "model_version": self.engine.model_version,
                        "index_version": self.engine.index_version,
                    }
                )

            key = self._key(
                "rank", history, candidates=list(candidates), delta=self.engine.delta_seq
            )
            return await self._cached("rank", key, compute)

    async def embed_items(self, items: Sequence[ItemSpec]) -> bytes:
        vectors = await self.engine.embed_items(items)  # (B, D)
        return to_json({"embeddings": vectors, "model_version": self.engine.model_version})
