"""Observability and deployment: metrics cardinality, the dashboard and alerts against a real
Prometheus scraping a real uniserve, `promtool` checks, `uniserve report`, and the compose file.

The Prometheus test starts `uniserve serve` (a subprocess on a free loopback port, over the
session's real artifacts), a second one in router mode with that replica as its one shard, and
the real `prometheus` binary scraping both (temp dir, free port, 1 s scrape and rule
evaluation), drives traffic (cache miss then hit, a 422, an unknown path, a refused rollback, an
index reload that makes the replica serve shard 0 of 1, and retrieves through the router before
and after it: a shard error, then ok), then evaluates every PromQL expression of every dashboard panel
and every alert rule through Prometheus' HTTP API: each must be valid and return data. Alert
expressions end in `<comparison> <bound>`, which filters series out while all is well, so they
are evaluated with the comparison turned into `bool` (0/1 per series). `.ci/run` installs
`prometheus` (with `promtool`) and `docker-compose`; without them those tests are skipped.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml

from index import load_current, republish
from index.shard import ShardSpec
from service.settings import Settings
from tests.helpers import REPO, free_port, start_serve, stop, wait_until_ok

if TYPE_CHECKING:
    from tests.conftest import ServeFn

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "uniserve.json"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
RULES = DEPLOY / "prometheus" / "rules.yml"  # recording rules (online quality)
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"
ADMIN_KEY = "observability-admin-7f3a9c2e41"

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
DOCKER_COMPOSE = shutil.which("docker-compose")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus/promtool not installed (.ci/run installs them: apt-get install prometheus)",
)

# Grafana's variables, as the test substitutes them: every replica, and a 30 s rate window
# (about 30 scrapes at the test's 1 s interval).
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$instance": ".*"}


# ---------------------------------------------------------------------------- helpers
def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel, rows' nested panels included."""
    board = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            out.extend((panel["title"], t["expr"]) for t in panel.get("targets", []))

    walk(board["panels"])
    return out


def grafana_substitute(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
    return expr


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def recording_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


_COMPARISONS = re.compile(r"(==|!=|>=|<=|>|<)")


def with_bool(expr: str) -> str:
    """`<signal> > <bound>` -> `<signal> > bool <bound>`: the last comparison outside any
    parentheses, brackets, braces or strings gets the bool modifier, so the expression returns
    0/1 for every series of the signal instead of only the series past the bound."""
    depth, quote, last = 0, "", None
    i = 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and (m := _COMPARISONS.match(expr, i)):
            last = m
            i = m.end()
            continue
        i += 1
    if last is None:
        raise ValueError(f"alert expression has no top-level comparison: {expr!r}")
    return f"{expr[: last.end()]} bool{expr[last.end() :]}"


def series(registry: Any) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every exported sample's name and labels (values ignored)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in registry.collect()
        for sample in family.samples
    }


# ---------------------------------------------------------------------------- unit checks
def test_with_bool_marks_the_top_level_comparison_only() -> None:
    assert with_bool('up{job="a"} == 0') == 'up{job="a"} == bool 0'
    expr = 'max(x{route=~"/v1/.*",s!="5xx"}) / sum(rate(y[5m])) > 0.01'
    assert with_bool(expr) == expr.replace("> 0.01", "> bool 0.01")
    with pytest.raises(ValueError, match="no top-level comparison"):
        with_bool('sum(rate(x{a!="b"}[5m]))')


def test_every_alert_expression_has_a_top_level_comparison() -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert {
        "UniserveHighLatencyP99",
        "UniserveHighErrorRatio",
        "UniserveIndexStale",
        "UniserveIndexReloadFailed",
        "UniserveRedisBreakerOpen",
        "UniserveCatalogueDeltaNearLimit",
    } <= names
    for rule in rules:
        with_bool(rule["expr"])  # raises when the bound cannot be found


@pytest.mark.anyio
async def test_metrics_export_index_identity_stages_and_rejections_from_the_start(
    serve: ServeFn, uniserve_data_dir: Path
) -> None:
    settings = Settings(data_dir=uniserve_data_dir, bootstrap=False, index_poll_seconds=0)
    async with serve(settings) as served:
        engine = served.state.engine
        assert engine is not None
        text = (await served.client.get("/metrics")).text
        info = (
            f'uniserve_index_info{{model_version="{engine.model_version}",type="'
            f'{engine.index.index_type}",version="{engine.index_version}"}} 1.0'
        )
        assert info in text
        age = re.search(r"^uniserve_index_age_seconds (\S+)$", text, re.MULTILINE)
        assert age is not None and 0 <= float(age.group(1)) < 24 * 3600
        for stage in ("encode_queue", "search_queue", "encode", "search", "rerank", "cache"):
            assert f'uniserve_stage_duration_seconds_count{{stage="{stage}"}}' in text
        for reason in ("overloaded", "not_ready", "backend_unavailable"):
            assert f'uniserve_rejected_requests_total{{reason="{reason}"}} 0.0' in text
        # a cache lookup is timed as the `cache` stage
        body = {"events": [{"item_id": str(engine.index.item_ids[0])}], "k": 5}
        assert (await served.client.post("/v1/retrieve", json=body)).status_code == 200
        registry = served.state.metrics.registry
        count = registry.get_sample_value(
            "uniserve_stage_duration_seconds_count", {"stage": "cache"}
        )
        assert count is not None and count >= 1
    # shut down: no live index, so no identity or age series
    assert served.state.metrics.registry.get_sample_value("uniserve_index_age_seconds") is None


@pytest.mark.anyio
async def test_503_not_ready_is_counted_as_a_rejection(serve: ServeFn, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "empty", bootstrap=False, index_poll_seconds=0)
    async with serve(settings) as served:
        resp = await served.client.post("/v1/retrieve", json={"user_id": "u", "k": 5})
        assert resp.status_code == 503, resp.text
        registry = served.state.metrics.registry
        value = registry.get_sample_value(
            "uniserve_rejected_requests_total", {"reason": "not_ready"}
        )
        assert value == 1.0
        assert registry.get_sample_value("uniserve_index_age_seconds") is None


# ---------------------------------------------------------------------------- cardinality
@pytest.mark.anyio
async def test_random_user_ids_and_unknown_paths_add_no_series(
    serve: ServeFn, uniserve_data_dir: Path
) -> None:
    """10,000 requests with random user ids (stored events, unknown users, retrieves) and random
    unknown paths leave the set of exported series exactly as it was."""
    settings = Settings(data_dir=uniserve_data_dir, bootstrap=False, index_poll_seconds=0)
    async with serve(settings) as served:
        engine = served.state.engine
        assert engine is not None
        item_ids = [str(i) for i in engine.index.item_ids[:50]]
        client = served.client

        async def one(i: int) -> None:
            user = uuid.uuid4().hex
            kind = i % 4
            if kind == 0:
                resp = await client.get(f"/{uuid.uuid4().hex}/{user}?user_id={user}")
                assert resp.status_code == 404
            elif kind == 1:
                events = [{"item_id": item_ids[i % 50]}, {"item_id": item_ids[(i * 7) % 50]}]
                resp = await client.post("/v1/events", json={"user_id": user, "events": events})
                assert resp.status_code == 200, resp.text
            elif kind == 2:
                resp = await client.post("/v1/users/embed", json={"user_id": user})
                assert resp.status_code == 404, resp.text  # unknown user
            elif i % 100 == 3:  # a few computed retrieves (encoder + search + cache)
                events = [{"item_id": item_ids[i % 50]}]
                body = {"user_id": user, "events": events, "k": 5}
                assert (await client.post("/v1/retrieve", json=body)).status_code == 200
            else:
                resp = await client.post("/v1/retrieve", json={"user_id": user, "k": 5})
                assert resp.status_code == 404, resp.text

        for i in (0, 1, 2, 3, 7):  # each kind once, so its series exist before comparing
            await one(i)
        await client.get("/metrics")
        before = series(served.state.metrics.registry)
        for i in range(10_000):
            await one(i)
        after = series(served.state.metrics.registry)
        text = (await client.get("/metrics")).text
    assert after == before, sorted(after ^ before)[:10]
    assert "/v1/retrieve" in text and 'route="unmatched"' in text
    assert not re.search(r"[0-9a-f]{32}", text), "a random id or path reached a label"


# ---------------------------------------------------------------------------- promtool
@needs_prometheus
def test_promtool_checks_the_deployed_config_and_rules() -> None:
    assert PROMTOOL is not None
    for args in (
        ["check", "config", str(PROMETHEUS_CONFIG)],
        ["check", "rules", str(ALERTS)],
        ["test", "rules", str(ALERT_TESTS)],
        ["check", "rules", str(RULES)],
        ["test", "rules", str(RULES_TEST)],
    ):
        done = subprocess.run(
            [PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=ALERTS.parent
        )
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


# ---------------------------------------------------------------------------- real Prometheus
class Stack:
    """A real `uniserve serve`, a real router in front of it (its one shard) and a real
    Prometheus scraping both every second."""

    def __init__(self, data: Path, work: Path) -> None:
        self.data = data
        self.work = work
        self.port = free_port()
        self.router_port = free_port()
        self.prom_port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}"

    @property
    def prom_url(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"

    def start(self) -> Stack:
        self._start_uniserve(self.port, "uniserve.log")
        # router mode: the same model, the replica above as shard 0 of 1
        self._start_uniserve(self.router_port, "router.log", UNISERVE_SHARD_URLS=self.url)
        self._start_prometheus()
        return self

    def _start_uniserve(self, port: int, log_name: str, **extra_env: str) -> None:
        env: dict[str, str | None] = {
            "UNISERVE_ADMIN_KEY": ADMIN_KEY,
            "UNISERVE_API_KEY": None,
            **extra_env,
        }
        if not extra_env:
            env["UNISERVE_SHARD_URLS"] = None
        log = self.work / log_name
        args = ["--no-bootstrap", "--data-dir", str(self.data), "--port", str(port)]
        proc = start_serve([*args, "--log-level", "warning"], log, env)
        self.procs.append(proc)
        wait_until_ok(f"http://127.0.0.1:{port}/readyz", proc, log, 180)

    def _start_prometheus(self) -> None:
        assert PROMETHEUS is not None
        deployed = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS), str(RULES)],
            "scrape_configs": [
                {
                    "job_name": deployed["scrape_configs"][0]["job_name"],
                    "metrics_path": deployed["scrape_configs"][0]["metrics_path"],
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{self.port}", f"127.0.0.1:{self.router_port}"]}
                    ],
                }
            ],
        }
        path = self.work / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        log = self.work / "prometheus.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={path}",
                    f"--storage.tsdb.path={self.work / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.prom_port}",
                    "--log.level=warn",
                ],
                cwd=self.work,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        wait_until_ok(f"{self.prom_url}/-/ready", proc, log, 60)

    def query(self, expr: str) -> list[dict[str, Any]]:
        resp = httpx.get(f"{self.prom_url}/api/v1/query", params={"query": expr}, timeout=30)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, expr: str, seconds: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)


@pytest.fixture
def stack(uniserve_data_dir: Path, tmp_path: Path) -> Iterator[Stack]:
    data = tmp_path / "data"
    shutil.copytree(uniserve_data_dir, data)
    running = Stack(data, tmp_path)
    try:
        yield running.start()
    finally:
        running.stop()


def drive_traffic(stack: Stack) -> str:
    """Requests of every kind the dashboard shows, then an index reload, and retrieves through
    the router before it (the replica serves an unsharded index: a shard error, 503) and after
    it (the new version says it is shard 0 of 1: ok); returns the new live index version."""
    root = stack.data / "indexes"
    index, manifest = load_current(root)
    ids = [str(i) for i in index.item_ids[:20]]
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        events = [{"item_id": i} for i in ids[:6]]
        assert client.post("/v1/events", json={"user_id": "obs-u1", "events": events}).is_success
        body = {"user_id": "obs-u1", "k": 5}
        for _ in range(3):  # a cache miss, then hits
            served = client.post("/v1/retrieve", json=body)
            assert served.status_code == 200
        # the user's next event: matched against the list served (online quality)
        item = served.json()["items"][0]["item_id"]
        next_event = {"user_id": "obs-u1", "events": [{"item_id": item}]}
        assert client.post("/v1/events", json=next_event).is_success
        rank = {"user_id": "obs-u1", "candidates": ids[:10]}
        assert client.post("/v1/rank", json=rank).status_code == 200
        assert client.post("/v1/users/embed", json={"events": events}).status_code == 200
        items = {"items": [{"item_id": ids[0]}]}
        assert client.post("/v1/items/embed", json=items).status_code == 200
        assert client.post("/v1/retrieve", json={"user_id": "obs-u1", "k": 0}).status_code == 422
        assert client.get("/no/such/path").status_code == 404
        assert client.get("/v1/index").status_code == 200
        upsert = {"items": [{"item_id": "obs-new", "surface": "0"}]}  # the live catalogue
        assert client.post("/admin/items/upsert", json=upsert, headers=admin).status_code == 200
        retire = {"item_ids": [ids[-1]]}
        assert client.post("/admin/items/retire", json=retire, headers=admin).status_code == 200
        missing = {"to": "00000000T000000Z-deadbeef"}
        refused = client.post("/admin/rollback", json=missing, headers=admin)
        assert refused.status_code == 409, refused.text  # counted: reason not_found
        via_router = {"events": events, "k": 5}  # the router has its own (in-process) events
        routed = httpx.post(f"{stack.router_url}/v1/retrieve", json=via_router, timeout=30)
        assert routed.status_code == 503, routed.text  # the only shard is not a shard: error
        shard = ShardSpec(0, 1, "observability").to_json()
        new = republish(root, keep=100, extra={**manifest.extra, "shard": shard})
        reload = client.post("/admin/reload", headers=admin)
        assert reload.status_code == 200 and reload.json()["changed"], reload.text
        for _ in range(3):  # the new version's cache: a miss then hits
            assert client.post("/v1/retrieve", json=body).status_code == 200
        for _ in range(3):
            routed = httpx.post(f"{stack.router_url}/v1/retrieve", json=via_router, timeout=30)
            assert routed.status_code == 200 and not routed.json()["partial"], routed.text
    return new.version


@pytest.mark.slow
@needs_prometheus
def test_every_dashboard_and_alert_expression_returns_data_from_a_real_prometheus(
    stack: Stack, tmp_path: Path
) -> None:
    first = stack.wait_for('count(up{job="uniserve"} == 1) == 2')
    assert first, "Prometheus never scraped both uniserve processes"
    version = drive_traffic(stack)
    # the reload and the last requests are seen by two or more scrapes
    assert stack.wait_for(f'uniserve_index_info{{version="{version}"}}')
    assert stack.wait_for('uniserve_requests_total{route="/v1/retrieve",status="4xx"}')
    time.sleep(3)
    assert stack.wait_for('uniserve_shard_requests_total{outcome="ok"} > 0')
    assert stack.wait_for('uniserve:online_hit_rate_at_10:ratio_rate5m{role="live"} > 0')
    reloads = stack.query(f'uniserve_index_reloads_total{{instance="127.0.0.1:{stack.port}"}}')
    assert reloads and float(reloads[0]["value"][1]) >= 1
    hits = stack.query('sum(uniserve_cache_requests_total{op="retrieve",result="hit"})')
    assert float(hits[0]["value"][1]) >= 2

    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    empty = []
    finite: set[str] = set()  # panels with at least one number (not only NaN: no traffic)
    for title, expr in exprs:
        result = stack.query(grafana_substitute(expr))
        if not result:
            empty.append((title, expr))
        if any(math.isfinite(float(r["value"][1])) for r in result):
            finite.add(title)
    # the traffic above gives real numbers (not only NaN) to every panel it concerns
    assert not {title for title, _ in exprs} - finite, {title for title, _ in exprs} - finite
    board = json.loads(DASHBOARD.read_text())
    for variable in board["templating"]["list"]:
        metric = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
        assert metric is not None, variable["definition"]
        resp = httpx.get(
            f"{stack.prom_url}/api/v1/label/{metric.group(2)}/values",
            params={"match[]": metric.group(1)},
        ).json()
        assert resp["status"] == "success" and resp["data"], variable
    for rule in alert_rules():
        if not stack.query(with_bool(rule["expr"])):
            empty.append((rule["alert"], rule["expr"]))
    for rule in recording_rules():  # the expression and the series Prometheus recorded
        for expr in (rule["expr"], rule["record"]):
            if not any(math.isfinite(float(r["value"][1])) for r in stack.query(expr)):
                empty.append((rule["record"], expr))
    assert not empty, f"expressions without data: {empty}"
    hit_rate = stack.query('uniserve:online_hit_rate_at_10:ratio{role="live"}')
    assert any(float(r["value"][1]) > 0 for r in hit_rate), hit_rate  # the rank-0 event

    # Prometheus itself evaluates the alert rules without errors
    rules = httpx.get(f"{stack.prom_url}/api/v1/rules").json()["data"]["groups"]
    evaluated = {r["name"]: r for group in rules for r in group["rules"]}
    assert set(evaluated) == {rule["alert"] for rule in alert_rules()} | {
        rule["record"] for rule in recording_rules()
    }
    for name, rule in evaluated.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))

    # `uniserve report` renders the same series to a PNG
    out = tmp_path / "report.png"
    from service.cli import main

    code = main(
        [
            "report",
            "--prometheus",
            stack.prom_url,
            "--since",
            "2m",
            "--step",
            "2s",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


# ---------------------------------------------------------------------------- compose
COMPOSE_ENV = {
    "UNISERVE_API_KEY": "compose-test-api-0a8f3c91d2",
    "UNISERVE_ADMIN_KEY": "compose-test-admin-5e7b2d04c6",
    "GRAFANA_ADMIN_PASSWORD": "compose-test-grafana-91c4",
}


def compose(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert DOCKER_COMPOSE is not None
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV}
    return subprocess.run(
        [DOCKER_COMPOSE, "--project-directory", str(REPO), "-f", "docker-compose.yml", *args],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose not installed (.ci/run does)")
def test_docker_compose_file_validates_and_wires_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """`docker-compose config` renders the file (nothing runs containers here): the services,
    the shared volumes, Redis persistence, the provisioned dashboard, and an environment the
    service's own settings accept; without the keys it refuses to render."""
    done = compose(["config"], COMPOSE_ENV)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert {"uniserve", "redis", "prometheus", "grafana", "init", "rebuild"} <= set(services)
    assert services["rebuild"]["profiles"] == ["rebuild"]
    assert "profiles" not in services["uniserve"] and "profiles" not in services["init"]
    uniserve = services["uniserve"]
    assert uniserve["deploy"]["replicas"] == 2
    assert uniserve["depends_on"]["init"]["condition"] == "service_completed_successfully"

    def volume(service: dict[str, Any], target: str) -> str:
        """The source of the mount at `target` (short `src:dst[:mode]` or long syntax)."""
        for mount in service["volumes"]:
            if isinstance(mount, dict):
                if mount["target"] == target:
                    return str(mount["source"])
            elif mount.split(":")[1] == target:
                return str(mount.split(":")[0])
        raise AssertionError(f"nothing mounted at {target}: {service['volumes']}")

    # the servers and the batch rebuild share the model and index volumes
    for target in ("/data/model", "/data/indexes"):
        assert volume(uniserve, target) == volume(services["rebuild"], target)
        assert volume(uniserve, target) == volume(services["init"], target)
        assert volume(uniserve, target) in config["volumes"]  # a named volume
    assert "--appendonly" in services["redis"]["command"]
    assert volume(services["redis"], "/data") in config["volumes"]
    grafana = services["grafana"]
    assert Path(volume(grafana, "/etc/grafana/dashboards")) == DASHBOARD.parent
    assert Path(volume(grafana, "/etc/grafana/provisioning")) == DEPLOY / "grafana/provisioning"
    assert Path(volume(services["prometheus"], "/etc/prometheus")) == PROMETHEUS_CONFIG.parent
    # the replicas' environment passes the service's own checks (keys, ports, Redis URL)
    env = uniserve["environment"]
    assert env["UNISERVE_ADMIN_KEY"] == COMPOSE_ENV["UNISERVE_ADMIN_KEY"]
    for name in list(os.environ):
        if name.startswith("UNISERVE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    settings = Settings()
    assert settings.admin_port == 9000 and settings.redis_url == "redis://redis:6379/0"
    assert not settings.bootstrap
    # the keys come from the environment: without one the file does not render
    without = {k: v for k, v in COMPOSE_ENV.items() if k != "UNISERVE_ADMIN_KEY"}
    missing = compose(["config"], without)
    assert missing.returncode != 0 and "UNISERVE_ADMIN_KEY" in missing.stderr
