"""The store suites' fixtures: a real `redis-server` per test (`tests.helpers.RedisServer`), and a
real 3-master Redis Cluster per test (`tests.helpers.RedisClusterServers`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import RedisClusterServers, RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    """A real 3-master Redis Cluster per test; fails (never skips) without redis-server or
    redis-cli."""
    directory = tmp_path / "redis-cluster"
    directory.mkdir()
    cluster = RedisClusterServers(directory)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
