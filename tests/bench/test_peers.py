"""The peers of `uniserve bench service` (service/bench/peers/) serve what the shared pipeline
computes: over the session's model and index (the embedded default, tests/conftest.py), each
peer is started for real as the benchmark starts it (`servers.server`, its own interpreter and
wire), the same requests are sent to it at once so its batcher forms batches, and every answer
must hold the items `Pipeline.encode_and_search` finds in-process, in order, with the same
scores. The benchmark's load client then sends it a short step and every request must succeed
(each peer's framing, Ray Serve's chunked answers included). A peer whose framework is not
installed is skipped with its import error (PyTriton needs its own venv:
scripts/setup_triton_venv.sh). Also the app ceiling (uniserve's app driven without HTTP), and
the pure parts of the run: the common comparison rate and the `--peers` list. No timing is
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.bench.load import Client, StepResult, run_step
from service.bench.peers import PEERS, Peer, PeerOptions
from service.bench.peers.pipeline import Pipeline, history_of
from service.bench.servers import Server, server
from service.bench.service import app_ceiling, common_rate, parse_peers

K = 10
REQUESTS = 12
HISTORY = 20


@pytest.fixture(scope="module")
def bodies(uniserve_data_dir: Path) -> list[bytes]:
    """Seeded retrieve bodies over the model's catalogue (one history holds an unknown id)."""
    from models.embedder import Embedder

    embedder = Embedder.from_dir(uniserve_data_dir / "model")
    rng = np.random.default_rng(0)
    out = []
    for u in range(REQUESTS):
        rows = rng.integers(0, len(embedder.item_ids), HISTORY)
        events = [
            {"item_id": str(embedder.item_ids[r]), "surface": str(embedder.item_surfaces[r])}
            for r in rows
        ]
        if u == 0:
            events[-1] = {"item_id": "never-seen", "surface": "feed"}
        out.append(json.dumps({"events": events, "k": K}).encode())
    return out


@pytest.fixture(scope="module")
def expected(uniserve_data_dir: Path, bodies: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) (REQUESTS, K) of all the bodies in one in-process call."""
    pipeline = Pipeline.load(uniserve_data_dir, threads=1)
    histories = [history_of(json.loads(body)["events"]) for body in bodies]
    return pipeline.encode_and_search(histories, K)


async def send_at_once(srv: Server, bodies: list[bytes]) -> list[httpx.Response]:
    url = f"http://127.0.0.1:{srv.port}{srv.path}"
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(
            *(client.post(url, content=body, headers=headers) for body in srv.bodies(bodies))
        )


async def one_step(srv: Server, bodies: list[bytes]) -> StepResult:
    client = Client(srv.port)
    try:
        return await run_step(client, srv.bodies(bodies), 40.0, len(bodies) / 40.0, srv.path)
    finally:
        client.close()


@pytest.mark.parametrize("name", list(PEERS))
def test_every_peer_answers_what_the_shared_pipeline_computes(
    name: str,
    uniserve_data_dir: Path,
    bodies: list[bytes],
    expected: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    peer = PEERS[name]
    missing = peer.unavailable()
    if missing is not None:
        pytest.skip(f"{name} is not installed: {missing}")
    options = PeerOptions(threads=1, batch=4, wait_ms=20.0, workers=1)
    log = tmp_path / f"{name}.log"
    with server(name, uniserve_data_dir, 1, {}, options=options, log=log) as srv:
        answers = asyncio.run(send_at_once(srv, bodies))
        step = asyncio.run(one_step(srv, bodies))
    ids, scores = expected
    for row, response in enumerate(answers):
        assert response.status_code == 200, response.text
        got = peer.read(response.json())
        assert [item_id for item_id, _ in got] == ids[row].tolist()
        np.testing.assert_allclose([s for _, s in got], scores[row], rtol=1e-5, atol=1e-6)
    assert step.statuses == {"200": len(bodies)}


def test_a_peer_whose_framework_is_missing_reports_the_import_error() -> None:
    ghost = Peer("ghost", "service.bench.peers.ghost", "/", ("no_such_framework",), "pip it", "")
    reason = ghost.unavailable()
    assert reason is not None
    assert "No module named 'no_such_framework'" in reason and "pip it" in reason
    assert PEERS["naive"].unavailable() is None  # this interpreter runs the naive service


def test_the_app_without_http_answers_every_body_through_the_real_app(
    uniserve_data_dir: Path, bodies: list[bytes]
) -> None:
    """`bench service`'s app ceiling drives uniserve's own app (no HTTP) over the session's
    model and index, and reports the answers as the app gave them: an invalid body among the
    retrieves is a 422, not a success."""
    invalid = b'{"k": 3}'  # neither a user nor events
    sent = [bodies[0], *bodies[1:6], invalid, *bodies[6:10]]  # the first warms up, unsent
    got = app_ceiling(uniserve_data_dir, sent, batch=4, threads=1, in_flight=3, passes=2)
    assert got["requests"] == 10 and got["in_flight"] == 3
    assert got["statuses"] == {"200": 9, "422": 1}
    assert got["rps"] > 0


def step(rate: float, p99_ms: float) -> StepResult:
    return StepResult(rate, rate, 100, 100, 0, 0, p99_ms / 2, p99_ms, p99_ms, 0.0)


def test_latencies_are_compared_at_the_highest_rate_every_service_sustained() -> None:
    runs = {
        "uniserve": [step(50, 5), step(100, 8), step(200, 30), step(400, 90)],
        "naive": [step(50, 6), step(100, 20), step(200, 400)],
        "ray": [step(50, 9), step(100, 45), step(200, 60), step(150, 48)],
    }
    assert common_rate(runs) == 100
    runs["slow"] = [step(50, 70)]  # sustains nothing: the lowest rate all of them ran
    assert common_rate(runs) == 50
    runs["other"] = [step(75, 10)]  # shares no rate with the rest
    assert common_rate(runs) is None


def test_the_peers_option_takes_all_none_or_names() -> None:
    assert parse_peers("all") == ["triton", "ray", "litserve"]
    assert parse_peers("none") == []
    assert parse_peers("ray, litserve") == ["ray", "litserve"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown peer"):
        parse_peers("ray,torchserve")
