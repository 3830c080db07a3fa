"""Security and robustness: auth, hostile input, paths and versions, safe artifacts, shutdown,
fuzzing. Issue 8, one group of tests per requirement.

Everything runs against the real app over the session's real artifacts: in process through its
lifespan (httpx ASGITransport) where no socket matters, and as a real `uniserve serve`
subprocess (uvicorn on free loopback ports) for the admin port, the streamed 1 GB body, SIGTERM
with requests in flight and the schemathesis run against the live OpenAPI document. Refusals
of hostile paths are proven with a Python audit hook: no file outside the index root is opened
and no connection is made. The pickle payload is live (a control run in a subprocess shows it
creates its marker file) and the marker must never appear when uniserve is handed it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from pydantic import ValidationError

from index import (
    IndexIntegrityError,
    InvalidVersionError,
    build_index,
    current_version,
    publish,
    rollback,
    set_current,
    verify_version,
)
from models.artifacts import WEIGHTS_FILE, ModelArtifactError, load_model, load_weights
from service.cli import EXIT_ERROR, EXIT_REFUSED, main
from service.settings import Settings
from tests.helpers import REPO, copy_data, free_port, start_serve, wait_until_ok

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

    from models.embedder import Embedder
    from tests.conftest import Served, ServeFn

READ_KEY = "read-key-6f1c0e2a9b7d4e3f"
ADMIN_KEY = "admin-key-0d9e8c7b6a5f4e3d"
WRONG_KEY = "wrong-key-1a2b3c4d5e6f7a8b"
HAS_REDIS = shutil.which("redis-server") is not None


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(resp: Any, status: int, error_type: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "error_type"}, body
    assert body["error_type"] == error_type
    return str(body["error"])


# ---------------------------------------------------------------------------- audit hook
# Records file opens and network activity while a test asks it to (audit hooks cannot be
# removed, so it is installed once and does nothing the rest of the time).
_AUDITED: list[tuple[str, str]] | None = None
_AUDIT_EVENTS = {"open", "os.listdir", "os.scandir", "socket.connect", "socket.getaddrinfo"}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _AUDITED is not None and event in _AUDIT_EVENTS:
        _AUDITED.append((event, str(args[0]) if args else ""))


sys.addaudithook(_audit)


class audited:
    """`with audited() as seen:` collects (event, target) pairs for opens and connections."""

    def __enter__(self) -> list[tuple[str, str]]:
        global _AUDITED
        _AUDITED = []
        return _AUDITED

    def __exit__(self, *exc: object) -> None:
        global _AUDITED
        _AUDITED = None


# ---------------------------------------------------------------------------- in-process apps
@dataclass
class InProcess:
    """The real app, lifespan included, running in its own event loop thread (a blocking
    portal), so one instance can serve a whole module of plain tests."""

    served: Served
    portal: BlockingPortal

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        send = functools.partial(self.served.client.request, method, path, **kwargs)
        response: httpx.Response = self.portal.call(send)
        return response


@contextmanager
def in_process(settings: Settings) -> Iterator[InProcess]:
    from anyio.from_thread import start_blocking_portal

    from tests.conftest import _serve

    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(_serve(settings)) as served,
    ):
        yield InProcess(served, portal)


@pytest.fixture(scope="module")
def secured(
    uniserve_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcess]:
    """The real app with both keys set, over a private copy of the session artifacts."""
    data = copy_data(uniserve_data_dir, tmp_path_factory.mktemp("secured") / "data")
    settings = Settings(
        data_dir=data,
        bootstrap=False,
        index_poll_seconds=0,
        api_key=READ_KEY,
        admin_key=ADMIN_KEY,
    )
    with in_process(settings) as app:
        yield app


def item_of(served: Served) -> str:
    engine = served.state.engine
    assert engine is not None
    return str(engine.index.item_ids[0])


def live_version(served: Served) -> str:
    engine = served.state.engine
    assert engine is not None
    return engine.index_version


# Every route of the app: (method, path, JSON body); "{item}" / "{live}" are filled in per app.
ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/v1/users/embed", {"events": [{"item_id": "{item}"}]}),
    ("POST", "/v1/events", {"user_id": "auth-matrix", "events": [{"item_id": "{item}"}]}),
    ("POST", "/v1/retrieve", {"events": [{"item_id": "{item}"}], "k": 3}),
    ("POST", "/v1/rank", {"events": [{"item_id": "{item}"}], "candidates": ["{item}"]}),
    ("POST", "/v1/items/embed", {"items": [{"item_id": "{item}"}]}),
    ("GET", "/v1/index", None),
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", None),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
    ("POST", "/admin/reload", None),
    ("POST", "/admin/rollback", {"to": "{live}"}),
    ("POST", "/admin/items/upsert", {"items": [{"item_id": "auth-matrix-new"}]}),
    ("POST", "/admin/items/retire", {"item_ids": ["auth-matrix-gone"]}),
]
KEYS: dict[str, str | None] = {
    "none": None,
    "wrong": WRONG_KEY,
    "read": READ_KEY,
    "admin": ADMIN_KEY,
}


def _fill(body: Any, served: Served) -> Any:
    if body is None:
        return None
    text = (
        json.dumps(body).replace("{item}", item_of(served)).replace("{live}", live_version(served))
    )
    return json.loads(text)


def call(app: InProcess, method: str, path: str, body: Any, key: str | None) -> httpx.Response:
    headers = bearer(key) if key is not None else {}
    return app.request(method, path, json=_fill(body, app.served), headers=headers)


def expected_status(path: str, key_name: str) -> tuple[int, str | None]:
    """What the auth matrix promises: (status, error_type or None for success)."""
    if path.startswith("/admin"):
        return {
            "none": (401, "unauthorized"),
            "wrong": (401, "unauthorized"),
            "read": (403, "forbidden"),
            "admin": (200, None),
        }[key_name]
    if path.startswith("/v1"):
        return {
            "none": (401, "unauthorized"),
            "wrong": (401, "unauthorized"),
            "read": (200, None),
            "admin": (403, "forbidden"),
        }[key_name]
    return 200, None  # probes, metrics, docs: open


# ---------------------------------------------------------------------------- real servers
class Server:
    """A real `uniserve serve` subprocess on free loopback ports, with both keys."""

    def __init__(self, data: Path, *, admin_port: int | None = None, **env: str) -> None:
        self.data = data
        self.port = free_port()
        self.admin_port = admin_port
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data.parent / f"serve-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str | None:
        return None if self.admin_port is None else f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> Server:
        env = {"UNISERVE_API_KEY": READ_KEY, "UNISERVE_ADMIN_KEY": ADMIN_KEY, **self.env}
        args = ["--no-bootstrap", "--data-dir", str(self.data), "--port", str(self.port)]
        if self.admin_port is not None:
            args += ["--admin-port", str(self.admin_port)]
        self.proc = start_serve(args, self.log, env)
        try:
            wait_until_ok(f"{self.url}/readyz", self.proc, self.log, 180)
        except RuntimeError:
            self.stop()
            raise
        return self

    def rss_bytes(self) -> int:
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match is not None
        return int(match.group(1)) * 1024

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture(scope="module")
def live(uniserve_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real `uniserve serve` with both keys and a separate admin port."""
    data = copy_data(uniserve_data_dir, tmp_path_factory.mktemp("live") / "data")
    server = Server(data, admin_port=free_port()).start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------- 1. auth
@pytest.mark.parametrize("key_name", list(KEYS))
@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[r[1] for r in ROUTES])
def test_auth_matrix_every_route_every_key(
    secured: InProcess, method: str, path: str, body: Any, key_name: str
) -> None:
    resp = call(secured, method, path, body, KEYS[key_name])
    status, error_type = expected_status(path, key_name)
    if error_type is None:
        assert resp.status_code == status, resp.text
    else:
        message = assert_error(resp, status, error_type)
        assert READ_KEY not in message and ADMIN_KEY not in message  # never echoed
        if status == 401:
            assert resp.headers["www-authenticate"] == "Bearer"


def test_keys_only_as_bearer_checked_before_the_body_in_constant_time(
    secured: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    get = functools.partial(secured.request, "GET")
    post = functools.partial(secured.request, "POST")
    for headers in (
        {"Authorization": READ_KEY},  # no scheme
        {"Authorization": f"Basic {READ_KEY}"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {READ_KEY}x"},
        {"Authorization": f"Bearer {READ_KEY[:-1]}"},
        {"X-API-Key": READ_KEY},  # one header scheme only
    ):
        assert_error(get("/v1/index", headers=headers), 401, "unauthorized")
    assert get("/v1/index", params={"api_key": READ_KEY}).status_code == 401
    assert get("/v1/index", headers={"authorization": f"bearer {READ_KEY}"}).is_success
    # default deny: an unknown path needs the key before it can even be a 404
    assert_error(get("/v2/anything"), 401, "unauthorized")
    assert_error(get("/v2/anything", headers=bearer(READ_KEY)), 404, "not_found")
    # the body of an unauthenticated request is never read: garbage or 1 GB, it is a 401
    garbage = post(
        "/v1/retrieve", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(garbage, 401, "unauthorized")
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1 << 14):  # 1 GiB in 64 KiB chunks, if anyone read it
            sent += 65536
            yield b" " * 65536

    resp = post("/v1/retrieve", content=endless(), headers={"content-type": "application/json"})
    assert_error(resp, 401, "unauthorized")
    assert sent <= 65536  # httpx hands over at most one chunk before the answer
    # constant time: sha256 digests (equal length) compared with hmac.compare_digest, both
    # keys every time, whatever was sent
    import service.api.auth

    compared: list[tuple[int, int]] = []
    real = service.api.auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(service.api.auth.hmac, "compare_digest", spy)
    for headers in ({}, bearer("x"), bearer(READ_KEY), bearer(ADMIN_KEY + "-longer-than-it")):
        get("/v1/index", headers=headers)
    assert compared == [(32, 32)] * 8


def test_without_keys_v1_is_open_and_admin_routes_are_disabled(uniserve_data_dir: Path) -> None:
    settings = Settings(data_dir=uniserve_data_dir, bootstrap=False, index_poll_seconds=0)
    with in_process(settings) as app:
        for key in KEYS.values():
            assert call(app, "GET", "/v1/index", None, key).status_code == 200
            for method, path, body in ROUTES[-2:]:
                message = assert_error(call(app, method, path, body, key), 403, "forbidden")
                assert "UNISERVE_ADMIN_KEY" in message
        security = app.request("GET", "/openapi.json").json()["paths"]["/v1/index"]["get"]
        assert "security" not in security  # the docs do not ask for a key nobody checks


BAD_KEYS = [
    "",
    "   ",
    "changeme",
    "CHANGE-ME",
    "secret",
    "password",
    "admin",
    "your-admin-key",
    "your_api_key_here",
    "<admin-key>",
    "${UNISERVE_ADMIN_KEY}",
    "replace-with-a-long-random-secret",
    "short-key",
    "aaaaaaaaaaaaaaaaaaaaaaaa",
]


@pytest.mark.parametrize("field", ["admin_key", "api_key"])
@pytest.mark.parametrize("bad", BAD_KEYS)
def test_startup_refuses_empty_placeholder_and_short_keys(field: str, bad: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**{field: bad})
    message = str(caught.value)
    assert field in message and "input_value" not in message  # the value is never echoed
    if len(bad) > 8:
        assert bad not in message


def test_startup_refuses_shared_keys_and_a_shared_port(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="different secrets"):
        Settings(api_key=ADMIN_KEY, admin_key=ADMIN_KEY)
    with pytest.raises(ValidationError, match="admin_port must differ"):
        Settings(port=9000, admin_port=9000)
    assert Settings(admin_port=9001).admin_host == "127.0.0.1"  # loopback unless told
    placeholder = "changeme-please-0123456789"
    monkeypatch.setenv("UNISERVE_ADMIN_KEY", placeholder)
    assert main(["serve", "--no-bootstrap", "--data-dir", str(tmp_path)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "admin_key" in err and "placeholder" in err and placeholder not in err


# ---------------------------------------------------------------------------- 2. limits
DEEP = {"events": [{"item_id": "1"}], "k": 3, "surfaces": [[[[[[[[["x"]]]]]]]]]}
HOSTILE: list[tuple[str, bytes | dict[str, Any], int, str]] = [
    # non-finite numbers, in every place a number may go
    ("/v1/retrieve", b'{"events": [{"item_id": "1", "ts": NaN}], "k": 3}', 422, "non-finite"),
    ("/v1/retrieve", b'{"events": [{"item_id": "1", "ts": Infinity}], "k": 3}', 422, "non-finite"),
    ("/v1/retrieve", b'{"events": [{"item_id": "1", "ts": -Infinity}], "k": 3}', 422, "non-finite"),
    ("/v1/retrieve", b'{"events": [{"item_id": "1", "ts": 1e999}], "k": 3}', 422, "non-finite"),
    ("/v1/retrieve", b'{"events": [{"item_id": "1"}], "k": -1e999}', 422, "non-finite"),
    ("/v1/items/embed", b'{"items": [{"features": {"f": NaN}}]}', 422, "non-finite"),
    ("/v1/rank", b'{"events": [{"item_id": 1e400}], "candidates": ["1"]}', 422, "non-finite"),
    # nesting, invalid text
    ("/v1/retrieve", DEEP, 422, "nested deeper"),
    ("/v1/retrieve", b"[" * 100_000, 422, "JSON"),
    ("/v1/retrieve", b"[" * 5000 + b"]" * 5000, 422, "JSON"),
    ("/v1/retrieve", b'{"user_id": "\xff\xfe", "k": 3}', 422, "JSON"),
    ("/v1/retrieve", b'{"user_id": "\\ud800", "k": 3}', 422, "JSON"),
    # type confusion (found by schemathesis: `"ts": true` used to be read as 1.0)
    ("/v1/retrieve", {"events": [{"item_id": "1", "ts": True}], "k": 3}, 422, "events[0].ts"),
    ("/v1/retrieve", {"events": [{"item_id": "1", "ts": "1.5"}], "k": 3}, 422, "events[0].ts"),
    ("/v1/retrieve", {"events": [{"item_id": "1"}], "k": "3"}, 422, "k"),
    (
        "/v1/retrieve",
        {"events": [{"item_id": "1"}], "k": 3, "exclude_seen": 1},
        422,
        "exclude_seen",
    ),
    # numbers out of range
    ("/v1/retrieve", {"events": [{"item_id": "1"}], "k": 10**30}, 422, "k"),
    ("/v1/retrieve", {"events": [{"item_id": "1"}], "k": 1001}, 422, "UNISERVE_MAX_K"),
    ("/v1/retrieve", {"user_id": 2**60, "k": 3}, 422, "user_id"),
    # string lengths
    ("/v1/retrieve", {"user_id": "u" * 257, "k": 3}, 422, "user_id"),
    ("/v1/events", {"user_id": "u", "events": [{"item_id": "i" * 10_000}]}, 422, "item_id"),
    ("/v1/items/embed", {"items": [{"features": {"title": "w " * 6000}}]}, 422, "title"),
    ("/v1/items/embed", {"items": [{"features": {"f" * 300: "x"}}]}, 422, "features"),
    (
        "/v1/items/embed",
        {"items": [{"features": {f"f{i}": "x" for i in range(65)}}]},
        422,
        "features",
    ),
    # counts
    (
        "/v1/events",
        {"user_id": "u", "events": [{"item_id": "1"}] * 1001},
        422,
        "UNISERVE_MAX_EVENTS",
    ),
    ("/v1/rank", {"user_id": "u", "candidates": ["1"] * 10_001}, 422, "UNISERVE_MAX_CANDIDATES"),
    ("/v1/retrieve", {"user_id": "u", "k": 3, "exclude": ["1"] * 10_001}, 422, "exclude"),
    ("/v1/retrieve", {"user_id": "u", "k": 3, "surfaces": ["s"] * 1001}, 422, "surfaces"),
    ("/v1/items/embed", {"items": [{"item_id": "1"}] * 1001}, 422, "UNISERVE_MAX_ITEMS"),
    # size
    ("/v1/retrieve", b'{"user_id": "' + b"u" * 1_000_001 + b'", "k": 3}', 413, "larger than"),
]


@pytest.mark.parametrize(("path", "body", "status", "named"), HOSTILE)
def test_hostile_input_is_422_or_413_in_the_error_shape(
    secured: InProcess, path: str, body: bytes | dict[str, Any], status: int, named: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**bearer(READ_KEY), "content-type": "application/json"}
    resp = secured.request("POST", path, content=content, headers=headers)
    message = assert_error(resp, status, "invalid_input" if status == 422 else "too_large")
    assert named in message


@pytest.mark.slow
def test_a_streamed_1gb_body_gets_413_early_and_memory_stays_flat(live: Server) -> None:
    url = f"{live.url}/v1/events"
    headers = {**bearer(READ_KEY), "content-type": "application/json"}
    with httpx.Client(timeout=60) as client:
        client.get(f"{live.url}/healthz")
        rss_before = live.rss_bytes()
        for declared in (False, True):  # chunked; then a declared Content-Length of 1 GiB
            sent = 0

            def gigabyte() -> Iterator[bytes]:
                nonlocal sent
                for _ in range(1 << 14):  # 16384 chunks of 64 KiB = 1 GiB
                    sent += 65536
                    yield b" " * 65536

            extra = {"content-length": str(1 << 30)} if declared else {}
            resp = client.post(url, content=gigabyte(), headers={**headers, **extra})
            assert "larger than 1000000 bytes" in assert_error(resp, 413, "too_large")
            assert resp.headers["connection"] == "close"
            assert sent < 64 << 20, sent  # cut off after a few MiB (socket buffers), not 1 GiB
        rss_after = live.rss_bytes()
        assert rss_after - rss_before < 64 << 20, (rss_before, rss_after)
        assert client.get(f"{live.url}/readyz").status_code == 200  # and it still serves


# ---------------------------------------------------------------------------- separate port
@pytest.mark.slow
def test_admin_routes_docs_and_metrics_live_on_the_admin_port_only(live: Server) -> None:
    assert live.admin_url is not None
    with httpx.Client(timeout=30) as client:
        public = live.url
        assert client.get(f"{public}/healthz").status_code == 200
        assert client.get(f"{public}/readyz").status_code == 200
        assert client.get(f"{public}/v1/index", headers=bearer(READ_KEY)).status_code == 200
        for path in ("/docs", "/openapi.json", "/metrics", "/redoc"):
            assert_error(client.get(f"{public}{path}"), 404, "not_found")
        for path in ("/admin/reload", "/admin/rollback"):
            assert_error(
                client.post(f"{public}{path}", headers=bearer(ADMIN_KEY)), 404, "not_found"
            )
        admin = live.admin_url
        assert client.get(f"{admin}/docs").status_code == 200
        spec = client.get(f"{admin}/openapi.json").json()
        assert {"/admin/reload", "/admin/rollback", "/v1/retrieve", "/metrics"} <= set(
            spec["paths"]
        )
        resp = client.post(f"{admin}/admin/reload", headers=bearer(ADMIN_KEY))
        assert resp.status_code == 200, resp.text
        assert_error(
            client.post(f"{admin}/admin/reload", headers=bearer(READ_KEY)), 403, "forbidden"
        )
        # one process, one state: the admin port's metrics count the public port's requests
        metrics = client.get(f"{admin}/metrics").text
        assert 'uniserve_requests_total{route="/v1/index",status="2xx"}' in metrics
    with pytest.raises(OSError):  # the admin listener is on loopback only
        socket.create_connection((_non_loopback_address(), live.admin_port or 0), timeout=2)


def _non_loopback_address() -> str:
    """An address of this machine that is not loopback (skips when there is none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            address: str = s.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("no non-loopback address to probe")
    return address


# ---------------------------------------------------------------------------- 3. paths
TRAVERSAL = [
    "..",
    ".",
    "../versions",
    "../../../../etc/passwd",
    "v1/../../outside",
    "a/b",
    "%2e%2e%2f%2e%2e%2foutside",
    "%2e%2e/outside",
    "%252e%252e%252foutside",  # double-encoded
    "..%2f..%2foutside",
    "%c0%ae%c0%ae%c0%af",  # overlong UTF-8 dots and slash
    "..\\..\\outside",
    "versions\\..\\..\\outside",
    "\\\\server\\share\\x",
    "/etc/passwd",
    "/tmp",
    "C:\\Windows\\System32",
    "c:/windows",
    "file:///etc/passwd",
    "http://169.254.169.254/latest/meta-data/",
    "https://example.com/index.faiss",
    "s3://bucket/versions/x",
    "~/x",
    "....//outside",
    "..;/outside",
    "v1..",
    ".hidden",
    "v1.",
    "v\x001",
    " v1",
    "v1\n../x",
    "\u2025/outside",  # two-dot leader
    "v" * 129,
    "",
]


@pytest.fixture
def hostile_root(uniserve_data_dir: Path, tmp_path: Path) -> Path:
    """A copy of the session's index root, plus a valid version outside it to be lured to."""
    root = shutil.copytree(uniserve_data_dir / "indexes", tmp_path / "root" / "indexes")
    live = current_version(root)
    assert live is not None
    outside = tmp_path / "outside"
    shutil.copytree(root / "versions" / live, outside / "versions" / live)
    (tmp_path / "root" / "outside").symlink_to(outside)
    return root


def _opened_outside(seen: list[tuple[str, str]], root: Path) -> list[tuple[str, str]]:
    inside = str(root.resolve())
    return [
        (event, target)
        for event, target in seen
        if event.startswith("socket") or not os.path.realpath(target).startswith(inside)
    ]


@pytest.mark.parametrize("version", TRAVERSAL)
def test_traversal_versions_are_refused_before_anything_is_opened(
    hostile_root: Path, version: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = hostile_root
    before = current_version(root)
    with audited() as seen:
        for refuse in (verify_version, set_current, lambda r, v: rollback(r, to=v)):
            with pytest.raises(InvalidVersionError):
                refuse(root, version)
    assert seen == []  # not a single file opened, directory listed or connection made
    with audited() as seen:
        assert main(["rollback", "--index-root", str(root), "--to", version]) == EXIT_REFUSED
    assert "invalid_version" in capsys.readouterr().err
    assert _opened_outside(seen, root) == []
    if version.strip() in ("", "v1"):
        return  # as a CURRENT line: blank (no CURRENT) or a valid id once stripped
    (root / "CURRENT").write_bytes(version.encode() + b"\n")
    with audited() as seen, pytest.raises(InvalidVersionError):
        current_version(root)
    assert seen == [("open", str(root / "CURRENT"))]  # CURRENT itself, nothing it names
    (root / "CURRENT").write_text(f"{before}\n")
    assert current_version(root) == before


def test_symlinks_leaving_the_root_are_refused(hostile_root: Path, tmp_path: Path) -> None:
    root = hostile_root
    live = current_version(root)
    assert live is not None
    outside = tmp_path / "outside" / "versions" / live
    # a version directory that is a symlink to a (valid!) version outside the root
    (root / "versions" / "lured").symlink_to(outside)
    # a version whose index file is a symlink out, with the right sha256 in its manifest
    inner = shutil.copytree(root / "versions" / live, root / "versions" / "inner")
    manifest = json.loads((inner / "manifest.json").read_text())
    manifest["version"] = "inner"
    (inner / "manifest.json").write_text(json.dumps(manifest))
    (inner / "index.faiss").unlink()
    (inner / "index.faiss").symlink_to(outside / "index.faiss")
    # CURRENT itself a symlink to a file naming a version
    (tmp_path / "pointer").write_text(f"{live}\n")
    for version in ("lured", "inner"):
        with audited() as seen, pytest.raises(InvalidVersionError, match="outside"):
            verify_version(root, version)
        assert _opened_outside(seen, root) == []
    assert current_version(root) == live
    (root / "CURRENT").unlink()
    (root / "CURRENT").symlink_to(tmp_path / "pointer")
    with audited() as seen, pytest.raises(InvalidVersionError, match="regular file"):
        current_version(root)
    assert seen == []


@pytest.mark.anyio
async def test_version_ids_from_the_admin_api_are_checked(
    uniserve_data_dir: Path, tmp_path: Path, serve: ServeFn
) -> None:
    data = copy_data(uniserve_data_dir, tmp_path / "data")
    settings = Settings(data_dir=data, bootstrap=False, index_poll_seconds=0, admin_key=ADMIN_KEY)
    async with serve(settings) as served:
        live = live_version(served)
        client = served.client
        for version in TRAVERSAL:
            with audited() as seen:
                resp = await client.post(
                    "/admin/rollback", json={"to": version}, headers=bearer(ADMIN_KEY)
                )
            assert "to" in assert_error(resp, 422, "invalid_input")
            assert seen == []
        # a hostile CURRENT: reload refuses it (409, counted), the live version keeps serving
        (data / "indexes" / "CURRENT").write_text("../../outside\n")
        resp = await client.post("/admin/reload", headers=bearer(ADMIN_KEY))
        assert "invalid_version" in assert_error(resp, 409, "index_rejected")
        assert live_version(served) == live
        counter = served.state.metrics.index_reload_failures.labels("invalid_version")
        assert counter._value.get() == 1
        resp = await client.post("/admin/rollback", json={"to": live}, headers=bearer(ADMIN_KEY))
        assert resp.status_code == 200 and resp.json()["changed"] is False
        assert current_version(data / "indexes") == live  # CURRENT repaired by the rollback


# ---------------------------------------------------------------------------- 4. artifacts
class Payload:
    """Unpickling this creates `marker`: the side effect a planted pickle is after."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _pickles(marker: Path) -> dict[str, bytes]:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"weight": Payload(marker)}, buffer)  # torch.save: a zip holding a pickle
    return {"pickle": pickle.dumps(Payload(marker), protocol=4), "torch.save": buffer.getvalue()}


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_pickle_planted_as_weights_or_index_is_refused_and_never_runs(
    uniserve_data_dir: Path, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import faiss

    from models.artifacts import model_fingerprint
    from service.api.lifespan import load_engine

    payload = _pickles(tmp_path / "marker")[kind]
    if kind == "pickle":  # control: the payload is live when something does unpickle it
        control = tmp_path / "control-marker"
        control_payload = pickle.dumps(Payload(control), protocol=4)
        (tmp_path / "control.pkl").write_bytes(control_payload)
        code = "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())"
        subprocess.run([sys.executable, "-c", code, str(tmp_path / "control.pkl")], check=True)
        assert control.exists()
    data = copy_data(uniserve_data_dir, tmp_path / "data")
    model, root = data / "model", data / "indexes"
    live = current_version(root)
    assert live is not None
    (model / WEIGHTS_FILE).write_bytes(payload)
    with pytest.raises(ModelArtifactError, match="pickle"):
        load_weights(model / WEIGHTS_FILE)
    with pytest.raises(ModelArtifactError, match="pickle"):
        load_model(model)
    # the service, with the index's manifest rewritten to name the planted model (an attacker
    # who controls the whole data dir): the weights are refused, not unpickled
    manifest_path = root / "versions" / live / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model_fingerprint"] = model_fingerprint(model)
    manifest["extra"]["model_dir"] = str(model)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelArtifactError, match="pickle"):
        load_engine(Settings(data_dir=data, bootstrap=False))
    # ... and as the FAISS file: the sha256 check refuses it before faiss reads a byte
    read: list[str] = []
    real_read_index = faiss.read_index

    def spy(path: str, *args: Any) -> Any:
        read.append(path)
        return real_read_index(path, *args)

    monkeypatch.setattr(faiss, "read_index", spy)
    index_file = root / "versions" / live / "index.faiss"
    index_file.write_bytes(payload)
    with pytest.raises(IndexIntegrityError, match="sha256"):
        verify_version(root, live)
    assert read == []
    # an attacker who also rewrites the manifest: faiss reads it and refuses (no pickle there)
    manifest["files"]["index.faiss"] = hashlib.sha256(payload).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    from index import load_version

    with pytest.raises(IndexIntegrityError):
        load_version(root, live)
    assert read == [str(index_file)]
    assert not (tmp_path / "marker").exists()  # the payload never ran


# Modules that deserialise pickles, and calls that do (by their dotted name's last two parts).
PICKLE_MODULES = {
    "pickle",
    "_pickle",
    "cPickle",
    "dill",
    "cloudpickle",
    "joblib",
    "shelve",
    "marshal",
}
PICKLE_CALLS = {
    ("torch", "load"),
    ("jit", "load"),
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
    ("yaml", "load"),
    ("yaml", "unsafe_load"),
}


def _dotted(node: ast.AST) -> list[str]:
    """`a.b.c` -> ["a", "b", "c"]; anything else -> []."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return [*inner, node.attr] if inner else []
    return []


def _unpickling(source: str, where: str) -> list[str]:
    """Imports of pickle-based modules and calls of loaders that unpickle, in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            found += [f"{line}: import {n}" for n in names if n.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            allows_pickle = any(
                k.arg == "allow_pickle"
                and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                for k in node.keywords
            )
            if tuple(name[-2:]) in PICKLE_CALLS or (name[-1:] == ["load"] and allows_pickle):
                found.append(f"{line}: {'.'.join(name)}(...)")
    return found


def test_no_code_path_unpickles() -> None:
    """No module of the service, models, index or scripts imports a pickle-based module or calls
    a loader that unpickles (torch.load, read_pickle, yaml.load, np.load(allow_pickle=True))."""
    planted = "import pickle\nimport numpy as np\ntorch.load(f)\nnp.load(f, allow_pickle=True)\n"
    assert len(_unpickling(planted, "planted")) == 3  # the check finds what it looks for
    offenders = [
        found
        for package in ("service", "models", "index", "scripts")
        for path in sorted((REPO / package).rglob("*.py"))
        for found in _unpickling(path.read_text(), str(path.relative_to(REPO)))
    ]
    assert offenders == []


# ---------------------------------------------------------------------------- 5. shutdown
def _start_request(port: int, path: str, body: bytes) -> socket.socket:
    """Send a request's head with `Expect: 100-continue` and wait for `100 Continue`: the
    request is then in flight inside the app (its route is reading the body)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: uniserve\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n"
        f"Authorization: Bearer {READ_KEY}\r\n\r\n"
    )
    sock.sendall(head.encode())
    interim = b""
    while b"\r\n\r\n" not in interim:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection before 100 Continue"
        interim += chunk
    assert interim.startswith(b"HTTP/1.1 100"), interim
    return sock


def _finish_request(sock: socket.socket, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send the body and read the whole response (the server closes the connection after it)."""
    sock.sendall(body)
    data = b""
    while chunk := sock.recv(65536):  # a reset here would raise ConnectionResetError
        data += chunk
    sock.close()
    head, _, content = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, content


@pytest.mark.slow
@pytest.mark.skipif(not HAS_REDIS, reason="redis-server is not installed (.ci/run installs it)")
def test_sigterm_finishes_requests_in_flight_closes_redis_and_exits_0(
    uniserve_data_dir: Path, tmp_path: Path
) -> None:
    from tests.store.test_redis import RedisServer

    (tmp_path / "redis").mkdir()
    redis_server = RedisServer(tmp_path / "redis").start()
    data = copy_data(uniserve_data_dir, tmp_path / "data")
    server = Server(
        data, UNISERVE_REDIS_URL=redis_server.url, UNISERVE_SHUTDOWN_TIMEOUT_SECONDS="20"
    )
    try:
        server.start()
        assert server.proc is not None
        engine_items = httpx.get(
            f"{server.url}/v1/index", headers=bearer(READ_KEY), timeout=10
        ).json()["count"]
        assert engine_items > 0
        user = f"sigterm-{uuid.uuid4().hex[:8]}"
        events = [{"item_id": str(i)} for i in range(0, 40, 4)]
        requests = {
            "/v1/events": {"user_id": user, "events": events},
            "/v1/retrieve": {"events": events, "k": 10},
            "/v1/rank": {"events": events, "candidates": [str(i) for i in range(300)]},
            "/v1/users/embed": {"events": events},
            "/v1/items/embed": {"items": [{"item_id": str(i)} for i in range(50)]},
        }
        bodies = {path: json.dumps(body).encode() for path, body in requests.items()}
        in_flight = {path: _start_request(server.port, path, body) for path, body in bodies.items()}
        os.kill(server.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while True:  # the listener closes while those requests are still waiting for bodies
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        assert server.proc.poll() is None  # still draining
        for path, sock in in_flight.items():
            status, headers, content = _finish_request(sock, bodies[path])
            assert status == 200, (path, content)
            assert headers["connection"] == "close"  # told not to come back on this connection
            assert json.loads(content)
        assert server.proc.wait(timeout=25) == 0  # before the shutdown timeout, and cleanly
        log = server.log.read_text()
        assert "stopped: requests in flight finished, backends closed" in log
        assert "Traceback" not in log and "ERROR" not in log
        client = redis_server.client()
        (events_key,) = client.keys("uniserve:v1:events:*")
        assert client.llen(events_key) == len(events)  # the in-flight write reached Redis
    finally:
        server.stop()
        redis_server.stop()


# ---------------------------------------------------------------------------- 6. fuzzing
@pytest.mark.slow
def test_schemathesis_finds_no_server_error_or_schema_violation(live: Server) -> None:
    """Schemathesis, as a new user runs it (`schemathesis run URL/openapi.json` with both keys):
    every phase (examples, coverage, fuzzing, stateful) and its default checks (all of them)
    against a real `uniserve serve`, admin routes included. Any failure fails the test: a 5xx,
    a response off its documented status codes, content types, headers or schemas, invalid
    input accepted, declared auth not enforced (schemathesis also resends cases without and
    with a wrong key), a schema-valid request rejected (the document describes the live model:
    its features, its vector length, the settings' limits; what the state cannot serve is 409)."""
    import schemathesis
    import schemathesis.engine
    from schemathesis.engine import Status, events

    assert live.admin_url is not None
    config = schemathesis.Config.from_dict(
        {
            "auth": {
                "openapi": {"apiKey": {"bearer": READ_KEY}, "adminKey": {"bearer": ADMIN_KEY}}
            },
            # the phases of `schemathesis run`, every one on (as by default), said explicitly
            "phases": {
                phase: {"enabled": True}
                for phase in ("examples", "coverage", "fuzzing", "stateful")
            },
            # cases per operation and phase, as in issue 23's `-n 60` (the CLI's default is 100):
            # about 2,500 requests, under a minute on two cores; every check runs on every case
            "generation": {"max-examples": 60},
            "checks": {
                # negative cases: the default expected statuses, with 413 added (a body over
                # max_body_bytes is refused before it is parsed, whatever it holds) and 428 and
                # 5xx removed (this API never asks for preconditions, and an invalid body is
                # never a server error): stricter than the default, not looser
                "negative_data_rejection": {
                    "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 429]
                }
            },
        }
    )
    schema = schemathesis.openapi.from_url(f"{live.admin_url}/openapi.json", config=config)
    assert len(list(schema.get_all_operations())) == 17

    failures: list[str] = []
    cases = 0
    phases: dict[str, Status] = {}
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            recorder = event.recorder
            cases += len(recorder.cases)
            failures += [
                f"{recorder.label}: {check.name}: {check.failure_info.failure.title}\n"
                f"{check.failure_info.failure.message}\n{check.failure_info.code_sample}"
                for checks in recorder.checks.values()
                for check in checks
                if check.status == Status.FAILURE and check.failure_info is not None
            ]
        elif isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: {event.info.title}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            raise event.exception
        elif isinstance(event, events.PhaseFinished):
            phases[event.phase.name.value] = event.status
        elif isinstance(event, events.EngineFinished):
            failures += [f"after the run: {f.title}\n{f.message}" for f in event.failures]
    assert failures == [], "\n\n".join(failures[:20])
    assert cases > 1000  # schema-valid and invalid requests for every operation
    ran = {name for name, status in phases.items() if status == Status.SUCCESS}
    assert {"examples", "coverage", "fuzzing", "stateful"} <= ran, phases
    assert "Traceback" not in live.log.read_text()


class IndexLifecycle(RuleBasedStateMachine):
    """reload / rollback / publish / events / retrieve against a model of what must be true:
    which version CURRENT names, which one serves, which are damaged, how many events a user
    has. Runs on the real app (httpx over ASGI in a portal thread) and real files."""

    app: InProcess
    embedder: Embedder
    root: Path
    max_per_user: int

    def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        headers = bearer(ADMIN_KEY) if path.startswith("/admin") else {}
        return self.app.request(method, path, json=body, headers=headers)

    def _publish(self, valid: bool) -> str:
        vectors, ids = self.embedder.item_vectors(), np.asarray(self.embedder.item_ids, object)
        rows = np.flatnonzero(np.random.default_rng(len(self.versions)).random(len(ids)) < 0.5)
        surfaces = np.asarray(self.embedder.item_surfaces, dtype=object)[rows]
        index = build_index(vectors[rows], ids[rows], surfaces, index_type="Flat")
        manifest = publish(
            index,
            self.root,
            model_fingerprint=self.embedder.fingerprint,
            model_version=self.embedder.version,
            keep=1000,
        )
        if not valid:  # damaged after publication: the manifest's sha256 no longer matches
            path = self.root / "versions" / manifest.version / "items.parquet"
            path.write_bytes(path.read_bytes()[:-5])
        self.versions[manifest.version] = (valid, set(ids[rows].tolist()))
        self.current = manifest.version
        return manifest.version

    @initialize()
    def fresh_root(self) -> None:
        for path in self.root.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.versions: dict[str, tuple[bool, set[str]]] = {}
        self.current = self.live = self._publish(valid=True)
        assert self.request("POST", "/admin/reload").json()["index_version"] == self.live
        self.user = f"machine-{uuid.uuid4().hex[:10]}"
        self.stored = 0

    @rule(valid=st.booleans(), then_reload=st.booleans())
    def publish_version(self, valid: bool, then_reload: bool) -> None:
        self._publish(valid)
        if then_reload:  # the usual deploy: publish, then swap (or have it refused)
            self.reload()

    @rule()
    def reload(self) -> None:
        resp = self.request("POST", "/admin/reload")
        if self.current == self.live:
            assert resp.status_code == 200 and resp.json()["changed"] is False
        elif self.versions[self.current][0]:
            assert resp.status_code == 200 and resp.json()["changed"] is True, resp.text
            self.live = self.current
        else:
            assert_error(resp, 409, "index_rejected")

    @rule()
    def rollback(self) -> None:
        resp = self.request("POST", "/admin/rollback")
        older = [v for v, (ok, _) in self.versions.items() if ok and v < self.live]
        if older:
            assert resp.status_code == 200, resp.text
            self.live = self.current = max(older)
            assert resp.json()["index_version"] == self.live
        else:
            assert_error(resp, 409, "index_rejected")

    @precondition(lambda self: len(self.versions) > 1)
    @rule(data=st.data())
    def rollback_to(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(sorted(self.versions)))
        resp = self.request("POST", "/admin/rollback", {"to": target})
        if target == self.live:
            assert resp.status_code == 200 and resp.json()["changed"] is False
            self.current = target
        elif self.versions[target][0]:
            assert resp.status_code == 200 and resp.json()["changed"] is True, resp.text
            self.live = self.current = target
        else:
            assert_error(resp, 409, "index_rejected")

    @rule(n=st.integers(1, 4))
    def post_events(self, n: int) -> None:
        events = [{"item_id": str(i)} for i in range(n)]
        resp = self.request("POST", "/v1/events", {"user_id": self.user, "events": events})
        self.stored = min(self.stored + n, self.max_per_user)
        assert resp.status_code == 200 and resp.json()["stored"] == self.stored

    @rule(k=st.integers(1, 20))
    def retrieve(self, k: int) -> None:
        resp = self.request("POST", "/v1/retrieve", {"user_id": self.user, "k": k})
        if self.stored == 0:
            assert_error(resp, 404, "unknown_user")
            return
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["index_version"] == self.live
        assert len(body["items"]) == k
        assert {item["item_id"] for item in body["items"]} <= self.versions[self.live][1]

    @invariant()
    def live_and_current_as_modelled(self) -> None:
        if not hasattr(self, "versions"):
            return
        assert self.request("GET", "/v1/index").json()["index_version"] == self.live
        assert current_version(self.root) == self.current


@pytest.mark.slow
def test_stateful_reload_rollback_events_retrieve_match_a_model(
    uniserve_data_dir: Path, tmp_path: Path
) -> None:
    data = copy_data(uniserve_data_dir, tmp_path / "data")
    settings_ = Settings(
        data_dir=data,
        bootstrap=False,
        index_poll_seconds=0,
        admin_key=ADMIN_KEY,
        events_max_per_user=6,
    )
    with in_process(settings_) as app:
        engine = app.served.state.engine
        assert engine is not None
        IndexLifecycle.app = app
        IndexLifecycle.embedder = engine.embedder
        IndexLifecycle.root = data / "indexes"
        IndexLifecycle.max_per_user = settings_.events_max_per_user
        run_state_machine_as_test(
            IndexLifecycle,
            settings=settings(
                max_examples=15,
                stateful_step_count=20,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
