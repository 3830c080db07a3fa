"""The replay (`uniserve bench replay`) through the real app: the sample's held-out events
streamed with the session model live (its HNSW index) and the same model as shadow over an
exact (Flat) index of the same catalogue. The service's online hits of the Flat shadow equal
the offline exact count on the same users; the promotion refuses the same model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from index import current_version, set_current
from models.data import load_corpus
from service.bench.replay import replay_users, run_replay
from service.settings import Settings
from tests.helpers import copy_data

if TYPE_CHECKING:
    from tests.conftest import ServeFn

ADMIN = "replay-admin-key-8b2e4f1a6c"
USERS = 40


@pytest.mark.anyio
async def test_replay_counts_online_hits_as_offline_exact_search_does(
    serve: ServeFn, uniserve_data_dir: Path, tmp_path: Path
) -> None:
    from service.jobs.pipeline import build_and_publish

    data = copy_data(uniserve_data_dir, tmp_path / "data")
    root, model = data / "indexes", data / "model"
    live = current_version(root)
    assert live is not None
    exact = build_and_publish(model, root, index_type="Flat", keep=10).version
    set_current(root, live)  # the Flat version is the shadow, not CURRENT
    settings = Settings(
        data_dir=data,
        bootstrap=False,
        admin_key=ADMIN,
        index_poll_seconds=0,
        shadow_version=exact,
        shadow_sample=1.0,
    )
    users = replay_users(load_corpus("sample"), USERS)
    assert len(users) == USERS and all(u.history for u in users)
    async with serve(settings) as served:
        result = await run_replay(
            served.client,
            users,
            admin_headers={"Authorization": f"Bearer {ADMIN}"},
            models={"shadow": model},
            promote={"min_events": USERS // 2},
        )
    assert result["streamed"] == USERS and result["online"]["pending"] == 0
    versions = {v["role"]: v for v in result["online"]["versions"]}
    assert versions["live"]["index_version"] == live
    assert versions["shadow"]["index_version"] == exact
    assert versions["live"]["events"] == versions["shadow"]["events"] == USERS
    assert versions["shadow"]["hits"]["10"] == result["offline"]["shadow"]["hits"]
    decision = result["promotion"]
    assert decision["promoted"] is False, decision  # the same model does not win
