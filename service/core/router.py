"""Router mode: the model without a local index, searching the shard replicas instead.

With `UNISERVE_SHARD_URLS` set, a uniserve replica loads only its model and answers
`/v1/retrieve` by encoding the user once (batched, cached, exactly as a normal replica) and
fanning the search out to the shard replicas (`service.core.fanout`). Everything that needs only the
model works as usual: `/v1/users/embed`, `/v1/rank` (scored against the model's own item
vectors), `/v1/items/embed`, `/v1/events`. What needs a local index does not: retrieve with
mode "multi", `/v1/shard/search`, `/admin/reload` and `/admin/rollback` are 409 `unservable`
(valid requests this replica cannot serve; reload the shards instead). The model must be one
the shards' indexes were built for, or one trained backward-compatible with it
(`models.compat`); the router sends those fingerprints with every shard search, and a shard
whose index it cannot query refuses (409 `unservable`) and is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NoReturn

import numpy as np

from models.compat import compatible_fingerprints
from models.embedder import Embedder
from service.core.engine import Admission, ModelEngine
from service.core.fanout import Merged, ShardFanout
from service.core.filters import NO_FILTERS, Filters
from service.errors import ErrorType, ServiceError
from service.settings import Settings

NOT_SHARDED = (
    "this replica is a router (UNISERVE_SHARD_URLS is set): it holds no local index; "
    "{what} on the shard replicas"
)


class RouterEngine(ModelEngine):
    """A model plus the fan-out to the shards that hold the index."""

    def __init__(
        self, embedder: Embedder, fanout: ShardFanout, *, admission: Admission | None = None
    ) -> None:
        super().__init__(embedder, admission=admission)
        self.fanout = fanout

    @property
    def index_version(self) -> str:
        """The shards' index versions as they last reported them, joined by '+' ('unknown' for
        a shard not yet heard from). Cache keys carry it, so results cached before a shard
        swapped versions stop being served once a fan-out has seen the new version."""
        return "+".join(s.index_version or "unknown" for s in self.fanout.status)

    def require_multi(self) -> NoReturn:
        raise ServiceError(
            ErrorType.UNSERVABLE,
            "mode 'multi' is not served in router mode: "
            + NOT_SHARDED.format(what="use mode 'single', or send multi requests"),
        )

    async def retrieve(
        self,
        user_vector: np.ndarray,
        k: int,
        filters: Filters = NO_FILTERS,
        history: Sequence[str] = (),
    ) -> Merged:
        """Top-k item ids and scores (desc) among eligible items of the shards that answered.

        Eligibility as in `Engine.retrieve`; each shard applies the filters inside its own
        search, so k items come back whenever the answering shards hold k eligible items.
        With a blend (models/blend.py), the user's recent items go along: each shard adds
        their co-occurrence term to its own items (an item's blended score does not depend
        on its shard), so the merged top-k is the unsharded one.
        """
        recent = list(history[-self.blend.neighbours.last :]) if self.blend is not None else []
        return await self.fanout.search(
            np.asarray(user_vector, dtype=np.float32).reshape(-1),
            k,
            surfaces=None if filters.surfaces is None else list(filters.surfaces),
            exclude=list(filters.exclude),
            history=recent,
        )


def load_router_model(settings: Settings) -> Embedder:
    """The router's model, loaded and warmed by one dummy user embedding (blocking)."""
    embedder = Embedder.from_dir(settings.model_path)
    embedder.user_vectors([([], [])])  # (1, D)
    return embedder


def router_fingerprints(embedder: Embedder) -> list[str]:
    """Fingerprints of the models whose indexes a router's user vectors can query: its own,
    then those it was trained backward-compatible with (`models.compat`)."""
    own = embedder.fingerprint
    return [own, *sorted(compatible_fingerprints(embedder.config) - {own})]


def make_router(
    settings: Settings,
    embedder: Embedder,
    admission: Admission,
    on_call: Callable[[int, str, float], None] | None = None,
) -> RouterEngine:
    """The router engine over `embedder`, with its fan-out to `settings.shards` (in the event
    loop: the fan-out's HTTP client lives there). The router's API key, when set, is sent to
    the shards: a fleet shares one key."""
    key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    fanout = ShardFanout(
        settings.shards,
        settings.shard_timeout_seconds,
        headers={"authorization": f"Bearer {key}"} if key else None,
        # the indexes its user vectors can query (`models.compat.serves_index_of`)
        model_fingerprints=router_fingerprints(embedder),
        on_call=on_call,
        # one connection per shard for every request this replica computes at once
        max_connections=settings.pending_ceiling * len(settings.shards),
    )
    return RouterEngine(embedder, fanout, admission=admission)
