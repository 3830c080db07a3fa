"""`uniserve bench replay` (`scripts/replay.py`): a dataset's held-out events streamed against a
running service, online HR@10 per version next to the offline HR@10 of the same models on the
same users, then the gated promotion.

For each of `--users` test users of the dataset (leave-last-out: a history and the next item):
POST the history to `/v1/events` (the newest `--max-history` events, as the service keeps them),
retrieve the top `--k` by user id with `exclude_seen` (the protocol of the offline numbers: full
ranking, the history's items removed), then POST the held-out next event. Run it against a
service with a weaker model live and a candidate as its shadow at `UNISERVE_SHADOW_SAMPLE=1`
(`uniserve serve` with `UNISERVE_SHADOW_VERSION`), so both answer every user. The service's
own counts come from `GET /admin/online`; with `--live-model` / `--shadow-model` the same users'
offline HR@10 is computed here by exact search over each model's catalogue, to compare
(an approximate index serves slightly below its exact numbers: its recall@10 is in its
manifest). `--promote` then asks for the promotion (`POST /admin/promote`) and prints the
decision. The admin key is read from `UNISERVE_ADMIN_KEY`, the API key from `UNISERVE_API_KEY`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

K = 10


@dataclass(frozen=True)
class ReplayUser:
    user_id: str
    history: list[tuple[str, str]]  # (item id, surface), oldest first
    target: tuple[str, str]  # the held-out next event


def replay_users(corpus: Any, n: int, max_history: int = 200) -> list[ReplayUser]:
    """The first `n` users of the corpus's test split, each history cut to its newest
    `max_history` events (what the service's event store keeps by default)."""
    test = corpus.test
    users = []
    for i in range(min(n, len(test))):
        items, surfaces = test.history.sequence(i)
        history = list(zip(map(str, items), map(str, surfaces), strict=True))[-max_history:]
        target = (str(test.target_item[i]), str(test.target_surface[i]))
        users.append(ReplayUser(f"replay-{test.history.user_id[i]}", history, target))
    return users


async def stream(
    client: httpx.AsyncClient, users: Sequence[ReplayUser], *, k: int = K, concurrency: int = 4
) -> int:
    """For each user: history, retrieve by user id (seen items excluded), next event. Returns
    the number of users whose three requests all succeeded."""
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def one(user: ReplayUser) -> None:
        nonlocal done
        events = [{"item_id": i, "surface": s} for i, s in user.history]
        target = [{"item_id": user.target[0], "surface": user.target[1]}]
        async with gate:
            for path, body in (
                ("/v1/events", {"user_id": user.user_id, "events": events}),
                ("/v1/retrieve", {"user_id": user.user_id, "k": k, "exclude_seen": True}),
                ("/v1/events", {"user_id": user.user_id, "events": target}),
            ):
                resp = await client.post(path, json=body)
                if resp.status_code != 200:
                    print(f"{path} for {user.user_id}: {resp.status_code} {resp.text[:200]}")
                    return
        done += 1

    await asyncio.gather(*(one(user) for user in users))
    return done


async def online_tally(
    client: httpx.AsyncClient, headers: dict[str, str], *, wait_seconds: float = 60.0
) -> dict[str, Any]:
    """`GET /admin/online` once the service's background work is done (at most `wait_seconds`)."""
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while True:
        resp = await client.get("/admin/online", headers=headers)
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        if body["pending"] == 0 or asyncio.get_running_loop().time() > deadline:
            return body
        await asyncio.sleep(0.1)


def offline_hits(model_dir: Path, users: Sequence[ReplayUser], k: int = K) -> int:
    """Users whose next item is in the model's exact top-k over its whole catalogue by the
    served score (with the model's blend, if any), their history's items removed: what the
    service answers with a Flat index."""
    from models.embedder import Embedder

    embedder = Embedder.from_dir(model_dir)
    items = embedder.item_vectors()  # (N, D)
    histories = [([i for i, _ in u.history], [s for _, s in u.history]) for u in users]
    vectors = embedder.user_vectors(histories)  # (U, D)
    hits = 0
    for user, vector, (seen, _) in zip(users, vectors, histories, strict=True):
        scores = items @ vector  # (N,)
        if embedder.blend is not None:  # the co-occurrence term of the recent items
            near, bonus = embedder.blend.sparse_bonus(embedder.vocab, seen)
            scores[near] += bonus
        rows = embedder.item_rows(seen)
        scores[rows[rows >= 0]] = -np.inf
        top = np.argpartition(-scores, k)[:k] if len(scores) > k else np.arange(len(scores))
        hits += user.target[0] in {str(embedder.item_ids[r]) for r in top}
    return hits


async def run_replay(
    client: httpx.AsyncClient,
    users: Sequence[ReplayUser],
    *,
    admin_headers: dict[str, str],
    k: int = K,
    models: dict[str, Path] | None = None,
    promote: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Stream `users`, then the service's online tally per version, the offline hits of the
    models given (`{"live": dir, "shadow": dir}`) and, with `promote` (its body), the decision."""
    streamed = await stream(client, users, k=k)
    online = await online_tally(client, admin_headers)
    result: dict[str, Any] = {"users": len(users), "streamed": streamed, "online": online}
    result["offline"] = {
        role: {"model_dir": str(path), "hits": offline_hits(path, users, k), "users": len(users)}
        for role, path in (models or {}).items()
    }
    if promote is not None:
        resp = await client.post("/admin/promote", json=promote, headers=admin_headers)
        result["promotion"] = resp.json()
    return result


def print_result(result: dict[str, Any]) -> None:
    print(f"replayed {result['streamed']} of {result['users']} users")
    print(f"{'role':<8}{'index version':>36}{'events':>8}{'online HR@10':>14}{'offline HR@10':>15}")
    for v in result["online"]["versions"]:
        online = v["hits"]["10"] / v["events"] if v["events"] else float("nan")
        offline = result["offline"].get(v["role"])
        exact = f"{offline['hits'] / offline['users']:.4f}" if offline else "-"
        print(f"{v['role']:<8}{v['index_version']:>36}{v['events']:>8}{online:>14.4f}{exact:>15}")
    decision = result.get("promotion")
    if decision is not None:
        if "promoted" in decision:
            verdict = "PROMOTED" if decision["promoted"] else "REFUSED"
            print(f"promotion: {verdict}: {decision['reason']}")
        else:
            print(f"promotion: error: {decision.get('error')}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="uniserve bench replay", description=__doc__)
    p.add_argument(
        "--url", default="http://127.0.0.1:8000",
        help="the service's base URL (its admin port when UNISERVE_ADMIN_PORT is set: that "
        "listener serves /v1 too)",
    )  # fmt: skip
    p.add_argument("--data", default="sample", help="dataset (as `uniserve train --data`)")
    p.add_argument("--users", type=int, default=500, help="test users to replay")
    p.add_argument("--k", type=int, default=K, help="items per retrieve")
    p.add_argument("--live-model", type=Path, default=None, help="the live model's directory")
    p.add_argument("--shadow-model", type=Path, default=None, help="the shadow's model directory")
    p.add_argument("--promote", action="store_true", help="ask for the promotion at the end")
    p.add_argument("--min-events", type=int, default=None, help="promotion: events each side")
    p.add_argument("--confidence", type=float, default=None, help="promotion: confidence")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    admin_key = os.environ.get("UNISERVE_ADMIN_KEY", "")
    if not admin_key:
        print("uniserve bench replay: set UNISERVE_ADMIN_KEY (GET /admin/online)", file=sys.stderr)
        return 2
    from models.data import load_corpus

    users = replay_users(load_corpus(args.data), args.users)
    models = {
        role: path
        for role, path in (("live", args.live_model), ("shadow", args.shadow_model))
        if path is not None
    }
    promote = None
    if args.promote:
        promote = {
            name: value
            for name, value in (("min_events", args.min_events), ("confidence", args.confidence))
            if value is not None
        }
    result = asyncio.run(_run(args, users, admin_key, models, promote))
    print_result(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


async def _run(
    args: argparse.Namespace,
    users: list[ReplayUser],
    admin_key: str,
    models: dict[str, Path],
    promote: dict[str, Any] | None,
) -> dict[str, Any]:
    api_key = os.environ.get("UNISERVE_API_KEY", "")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    admin = {"Authorization": f"Bearer {admin_key}"}
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=120) as client:
        return await run_replay(
            client, users, admin_headers=admin, k=args.k, models=models, promote=promote
        )
