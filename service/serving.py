"""Request-level serving logic over the engine, cache and event store; nothing of HTTP.

`ServingCore` turns "who is the user, what did they just do, what do they want" into response
bodies: it assembles the user's history (stored events, then the request's), looks results up in
the cache under `cache_key`, computes misses with the `Engine`, and serialises the result once,
so a cache hit is served as stored bytes. The cache fails open: an error is a miss, never a 5xx.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from service.cache import Cache, cache_key
from service.engine import Engine, ItemSpec
from service.errors import ErrorType, ServiceError
from service.events import Event, EventStore

log = logging.getLogger(__name__)


def to_json(payload: Any) -> bytes:
    """Serialise a response body; NumPy arrays and scalars are written as JSON numbers."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


@dataclass(frozen=True)
class UserHistory:
    user_id: str | None
    request_events: Sequence[Event]
    events: Sequence[Event]  # stored events, then the request's, oldest first
    watermark: int  # the user's event watermark when the stored events were read (0: none)

    def model_input(self) -> tuple[list[str], list[str]]:
        """(item ids, surfaces) as the embedder takes them."""
        return [e.item_id for e in self.events], [e.surface for e in self.events]

    def key_params(self) -> dict[str, Any]:
        """What, beside the watermark, determines this history (for cache keys)."""
        return {
            "user": self.user_id,
            "events": [[e.item_id, e.surface] for e in self.request_events],
        }


class ServingCore:
    def __init__(
        self,
        engine: Engine,
        cache: Cache,
        events: EventStore,
        *,
        cache_ttl: float,
        on_cache: Callable[[str, str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.events = events
        self.cache_ttl = cache_ttl
        self._on_cache = on_cache or (lambda op, result: None)

    # ------------------------------------------------------------------ history
    async def history(self, user_id: str | None, events: Sequence[Event] | None) -> UserHistory:
        """The user's stored events followed by `events`.

        Raises invalid_input when neither is given and unknown_user when the user has no stored
        events and the request brings none.
        """
        request_events = list(events or ())
        if user_id is None:
            if not request_events:
                raise ServiceError(ErrorType.INVALID_INPUT, "give a user_id, events, or both")
            return UserHistory(None, request_events, request_events, 0)
        # Watermark first: if events land in between, the result is keyed under the older
        # watermark, which the next request no longer uses. The other order could cache stale
        # results under the new watermark.
        watermark = await self.events.watermark(user_id)
        stored = await self.events.recent(user_id)
        if not stored and not request_events:
            raise ServiceError(
                ErrorType.UNKNOWN_USER,
                f"user {user_id!r} has no stored events; send events with the request or "
                "POST them to /v1/events first",
            )
        return UserHistory(user_id, request_events, [*stored, *request_events], watermark)

    async def record_events(self, user_id: str, events: Sequence[Event]) -> bytes:
        stored, _ = await self.events.append(user_id, events)
        return to_json({"user_id": user_id, "stored": stored})

    # ------------------------------------------------------------------ cache (fails open)
    def _key(self, op: str, history: UserHistory, **params: Any) -> str:
        return cache_key(
            op,
            model_version=self.engine.model_version,
            index_version=self.engine.index_version,
            watermark=history.watermark,
            params={**history.key_params(), **params},
        )

    async def _lookup(self, op: str, key: str) -> bytes | None:
        if self.cache_ttl <= 0:
            return None
        try:
            value = await self.cache.get(key)
        except Exception:
            log.warning("cache get failed; treating as a miss", exc_info=True)
            self._on_cache(op, "error")
            return None
        self._on_cache(op, "miss" if value is None else "hit")
        return value

    async def _store(self, key: str, value: bytes) -> None:
        if self.cache_ttl <= 0:
            return
        try:
            await self.cache.set(key, value, self.cache_ttl)
        except Exception:
            log.warning("cache set failed; result not cached", exc_info=True)

    # ------------------------------------------------------------------ operations
    async def user_vector(self, history: UserHistory) -> np.ndarray:
        """(D,) float32 user vector, cached per history."""
        key = self._key("user_vector", history)
        raw = await self._lookup("user_vector", key)
        if raw is not None and len(raw) == 4 * self.engine.dim:
            return np.frombuffer(raw, dtype=np.float32)
        vector = (await self.engine.user_vectors([history.model_input()]))[0]  # (D,)
        await self._store(key, vector.tobytes())
        return vector

    async def embed_user(self, user_id: str | None, events: Sequence[Event] | None) -> bytes:
        history = await self.history(user_id, events)
        vector = await self.user_vector(history)
        return to_json({"embedding": vector, "model_version": self.engine.model_version})

    async def retrieve(
        self,
        user_id: str | None,
        events: Sequence[Event] | None,
        *,
        k: int,
        surfaces: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        exclude_seen: bool = False,
    ) -> bytes:
        history = await self.history(user_id, events)
        surface_set = sorted(set(surfaces)) if surfaces is not None else None
        excluded = set(exclude)
        key = self._key(
            "retrieve",
            history,
            k=k,
            surfaces=surface_set,
            exclude=sorted(excluded),
            seen=exclude_seen,
        )
        if (hit := await self._lookup("retrieve", key)) is not None:
            return hit
        if exclude_seen:
            excluded.update(e.item_id for e in history.events)
        vector = await self.user_vector(history)
        ids, scores = await self.engine.retrieve(vector, k, surfaces=surface_set, exclude=excluded)
        body = to_json(
            {
                "items": [{"item_id": i, "score": s} for i, s in zip(ids, scores, strict=True)],
                "model_version": self.engine.model_version,
                "index_version": self.engine.index_version,
            }
        )
        await self._store(key, body)
        return body

    async def rank(
        self, user_id: str | None, events: Sequence[Event] | None, candidates: Sequence[str]
    ) -> bytes:
        history = await self.history(user_id, events)
        key = self._key("rank", history, candidates=list(candidates))
        if (hit := await self._lookup("rank", key)) is not None:
            return hit
        vector = await self.user_vector(history)
        ids, scores, unknown = await self.engine.rank(vector, candidates)
        body = to_json(
            {
                "items": [{"item_id": i, "score": s} for i, s in zip(ids, scores, strict=True)],
                "unknown": unknown,
                "model_version": self.engine.model_version,
            }
        )
        await self._store(key, body)
        return body

    async def embed_items(self, items: Sequence[ItemSpec]) -> bytes:
        vectors = await self.engine.embed_items(items)  # (B, D)
        return to_json({"embeddings": vectors, "model_version": self.engine.model_version})
