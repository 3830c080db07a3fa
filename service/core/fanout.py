"""Fan one search out to the shard replicas over HTTP and merge their top-k; nothing of FastAPI.

`ShardFanout` holds one `httpx.AsyncClient` for every shard (its connection pool is reused by
all requests) and sends one `POST /v1/shard/search` per shard at once, each bounded by the
per-shard timeout. Every shard searches its own items with the same filters and returns its k
best eligible items, so the k best of their union are exactly the k best of the whole catalogue.

A shard that times out, refuses the connection, answers an error or a body that does not fit
is left out of the merge and named in `Merged.missing`: the caller answers with a partial
result, never an error, unless every shard is missing. A shard is also left out when it
serves an index built for a model the router's user vectors do not fit (`model_fingerprints`:
sent with every search, so the shard refuses it with 409 `unservable`, and checked again in
its answer), or another shard than its position in the URL list says (a misconfigured fleet
would otherwise silently lose part of the catalogue). What each shard last reported is kept in
`status`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson

SEARCH_PATH = "/v1/shard/search"
_DETAIL_CHARS = 300  # of a failed shard's answer kept for the log and GET /v1/index


class ShardAnswerError(Exception):
    """A shard answered, but not with a usable result (error status, bad body, wrong shard)."""


@dataclass
class ShardStatus:
    """What one shard last reported, for GET /v1/index and the router's cache keys."""

    url: str
    outcome: str = "unknown"  # ok, timeout, error; unknown before the first call
    index_version: str | None = None  # of the last successful answer
    shard: dict[str, Any] | None = None  # its manifest's extra["shard"]: index, count, build_id
    detail: str = ""  # why the last call failed ("" after a success)
    at: float | None = None  # when the last call ended, epoch seconds


@dataclass(frozen=True)
class Merged:
    """The merged top-k of the shards that answered, and the shards that did not."""

    item_ids: list[str]
    scores: list[float]  # descending; ties broken by item id
    versions: list[str]  # index version of each answering shard, in shard order
    missing: list[int] = field(default_factory=list)  # shard positions left out

    @property
    def index_version(self) -> str:
        return "+".join(self.versions)


def merge_topk(answers: Iterable[Sequence[tuple[str, float]]], k: int) -> list[tuple[str, float]]:
    """The k best (item id, score) of several shards' top-k lists, by score descending, ties by
    item id (deterministic whatever order the shards answered in); an id met twice (a shard
    listed twice) counts once."""
    ranked = sorted((pair for answer in answers for pair in answer), key=lambda p: (-p[1], p[0]))
    out: list[tuple[str, float]] = []
    seen: set[str] = set()
    for item_id, score in ranked:
        if item_id not in seen:
            seen.add(item_id)
            out.append((item_id, score))
            if len(out) == k:
                break
    return out


class ShardFanout:
    def __init__(
        self,
        urls: Sequence[str],
        timeout: float,
        *,
        headers: dict[str, str] | None = None,
        model_fingerprints: Sequence[str] | None = None,
        on_call: Callable[[int, str, float], None] | None = None,
        max_connections: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`urls`: base URL of shard 0, 1, ...; `timeout`: seconds one shard may take, the
        connection included; `headers`: sent with every call (the API key);
        `model_fingerprints`: the models whose indexes the router's user vectors can query (its
        own and those it was trained compatible with; None: any);
        `on_call(shard, outcome, seconds)`: after every call (metrics)."""
        if not urls:
            raise ValueError("a fan-out needs at least one shard URL")
        self.urls = tuple(url.rstrip("/") for url in urls)
        self.timeout = timeout
        self.status = [ShardStatus(url) for url in self.urls]
        self.model_fingerprints = None if model_fingerprints is None else list(model_fingerprints)
        self._on_call = on_call or (lambda shard, outcome, seconds: None)
        self._client = httpx.AsyncClient(
            headers={"content-type": "application/json", **(headers or {})},
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def search(
        self,
        vector: np.ndarray,
        k: int,
        *,
        surfaces: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        history: Sequence[str] = (),
    ) -> Merged:
        """Every shard's k best eligible items for the user vector (D,), merged; `history`:
        the recent item ids whose blend term the shards add (models/blend.py)."""
        body = orjson.dumps(
            {
                # float64 values of the float32 vector: JSON round-trips them exactly
                "vector": np.asarray(vector, dtype=np.float32).astype(np.float64).tolist(),
                "k": k,
                "surfaces": None if surfaces is None else list(surfaces),
                "exclude": list(exclude),
                **({"history": list(history)} if history else {}),
                **(
                    {}
                    if self.model_fingerprints is None
                    else {"model_fingerprints": self.model_fingerprints}
                ),
            }
        )
        answers = await asyncio.gather(*(self._call(i, body) for i in range(len(self.urls))))
        found = [answer for answer in answers if answer is not None]
        top = merge_topk((items for items, _ in found), k)
        return Merged(
            item_ids=[item_id for item_id, _ in top],
            scores=[score for _, score in top],
            versions=[version for _, version in found],
            missing=[i for i, answer in enumerate(answers) if answer is None],
        )

    async def _call(self, shard: int, body: bytes) -> tuple[list[tuple[str, float]], str] | None:
        """Shard `shard`'s (items, index version), or None when it is left out."""
        status = self.status[shard]
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._client.post(self.urls[shard] + SEARCH_PATH, content=body)
            items, version = self._read(shard, response)
        except (TimeoutError, httpx.TimeoutException):
            outcome, detail = "timeout", f"no answer within {self.timeout} s"
        except (httpx.HTTPError, ShardAnswerError) as exc:
            outcome, detail = "error", f"{type(exc).__name__}: {exc}"[:_DETAIL_CHARS]
        else:
            self._on_call(shard, "ok", time.perf_counter() - started)
            status.outcome, status.detail, status.at = "ok", "", time.time()
            return items, version
        self._on_call(shard, outcome, time.perf_counter() - started)
        status.outcome, status.detail, status.at = outcome, detail, time.time()
        return None

    def _read(self, shard: int, response: httpx.Response) -> tuple[list[tuple[str, float]], str]:
        """Check a shard's answer and record what it reports; ShardAnswerError if unusable."""
        if response.status_code != 200:
            raise ShardAnswerError(f"HTTP {response.status_code}: {response.text[:_DETAIL_CHARS]}")
        try:
            body = orjson.loads(response.content)
            items = [(str(i["item_id"]), float(i["score"])) for i in body["items"]]
            version, fingerprint, spec = (
                str(body["index_version"]),
                str(body["model_fingerprint"]),
                body["shard"],
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ShardAnswerError(f"unexpected answer ({exc!r})") from exc
        expected = {"index": shard, "count": len(self.urls)}
        if not isinstance(spec, dict) or {k: spec.get(k) for k in expected} != expected:
            raise ShardAnswerError(
                f"{self.urls[shard]} serves {_describe(spec)}, but is listed as shard {shard} "
                f"of {len(self.urls)} in UNISERVE_SHARD_URLS"
            )
        if self.model_fingerprints is not None and fingerprint not in self.model_fingerprints:
            raise ShardAnswerError(
                f"index {version!r} was built for model {fingerprint[:12]}..., which the "
                "router's model cannot query; serve the shards' model on the router"
            )
        status = self.status[shard]
        status.index_version, status.shard = version, spec
        return items, version


def _describe(spec: object) -> str:
    if not isinstance(spec, dict):
        return "an unsharded index"
    return f"shard {spec.get('index')!r} of {spec.get('count')!r}"
