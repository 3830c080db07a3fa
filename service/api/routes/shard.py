"""POST /v1/shard/search: this replica's top-k for a user vector a router computed.

Internal, but harmless on every replica: it searches the live index exactly as /v1/retrieve
does (filters inside the search, k items whenever k are eligible), for a given vector instead of
a user's events, and reports which shard of which build the index is (`extra["shard"]` of its
manifest; null for an unsharded index), so the router can check its fleet. No cache: the router
caches whole answers. A vector of another length than the live model's breaks the OpenAPI
document (422); a router that names the models its vector can query (`model_fingerprints`)
none of which the live index was built for gets 409 `unservable`, and leaves this shard out. A
router has no local index: 409 `unservable` there.
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter
from starlette.responses import Response

from service.api.deps import StateDep, local_engine
from service.api.routes._json import StrictJSONRoute, json_bytes
from service.api.schemas import STATE_ERROR_RESPONSES, ShardSearchRequest, ShardSearchResponse
from service.core.filters import Filters
from service.core.serving import scored_items, to_json

router = APIRouter(tags=["retrieval"], route_class=StrictJSONRoute)


@router.post(
    "/v1/shard/search", response_model=ShardSearchResponse, responses=STATE_ERROR_RESPONSES
)
async def shard_search(req: ShardSearchRequest, state: StateDep) -> Response:
    engine = local_engine(state)
    req.check_limits(state.settings, engine.dim)  # 422: the request breaks the document
    req.check_model(engine.manifest.model_fingerprint)  # 409: valid, but not for this index
    filters = Filters.of(req.surfaces, req.exclude)  # normalised here, once, as retrieve does
    vector = np.asarray(req.vector, dtype=np.float32)
    ids, scores = await engine.retrieve(vector, req.k, filters, req.history)
    return json_bytes(
        to_json(
            {
                "items": scored_items(ids, scores),
                "model_version": engine.model_version,
                "model_fingerprint": engine.manifest.model_fingerprint,
                "index_version": engine.index_version,
                "shard": engine.manifest.extra.get("shard"),
            }
        )
    )
