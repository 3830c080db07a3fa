"""`uniserve report`: the key series of a running deployment, from Prometheus, as one PNG.

For a look without Grafana: request latency percentiles (p50 / p95 / p99 over the /v1 routes),
throughput by route with 4xx / 5xx / rejected requests, the cache hit ratio, the p95 of each
pipeline stage, and online quality (online HR@10 per served version, live and shadow, and the
matched events behind it), over the last `since` seconds. The series are fetched with Prometheus'
`/api/v1/query_range` (the same metric names the dashboard uses, `deploy/grafana/dashboards`)
and drawn with matplotlib, an optional dependency (`pip install 'uniserve[report]'`). Tested by
`test_every_dashboard_and_alert_expression_returns_data_from_a_real_prometheus`, which renders a
report from the Prometheus it started.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """ "90s", "15m", "2h" -> seconds; ValueError quoting the text otherwise."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 15m, 2h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    times: list[datetime]
    values: list[float]


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str  # label name whose value names each series, or a fixed text


def _queries(selector: str, window: str) -> dict[str, list[Query]]:
    """The report's panels: title -> queries (PromQL over uniserve's metric names)."""
    sel = f"{{{selector}}}" if selector else ""
    v1 = f'{{{selector + "," if selector else ""}route=~"/v1/.*"}}'

    def quantile(q: float) -> str:
        return (
            f"histogram_quantile({q}, sum by (le) "
            f"(rate(uniserve_request_duration_seconds_bucket{v1}[{window}])))"
        )

    def status(cls: str) -> str:
        inner = f'{selector + "," if selector else ""}status="{cls}"'
        return f"sum(rate(uniserve_requests_total{{{inner}}}[{window}]))"

    return {
        "Latency of /v1 requests (ms)": [
            Query(quantile(0.5), "p50"),
            Query(quantile(0.95), "p95"),
            Query(quantile(0.99), "p99"),
        ],
        "Throughput (requests/s)": [
            Query(f"sum by (route) (rate(uniserve_requests_total{v1}[{window}]))", "route"),
            Query(status("4xx"), "4xx (all routes)"),
            Query(status("5xx"), "5xx (all routes)"),
            Query(
                f"sum(rate(uniserve_rejected_requests_total{sel}[{window}]))", "429/503 rejected"
            ),
        ],
        "Cache hit ratio": [
            Query(
                f"sum(rate(uniserve_cache_requests_total{{{selector + ',' if selector else ''}"
                f'result="hit"}}[{window}])) / sum(rate(uniserve_cache_requests_total{sel}'
                f"[{window}]))",
                "hits / lookups",
            )
        ],
        "Pipeline stage p95 (ms)": [
            Query(
                f"histogram_quantile(0.95, sum by (stage, le) "
                f"(rate(uniserve_stage_duration_seconds_bucket{sel}[{window}])))",
                "stage",
            )
        ],
        "Online HR@10 by version (ratio)": [
            Query(
                version_label(
                    f"sum by (role, index_version) (rate(uniserve_online_hits_total"
                    f'{{{selector + "," if selector else ""}k="10"}}[{window}])) / '
                    f"sum by (role, index_version) (rate(uniserve_online_events_total{sel}"
                    f"[{window}]))"
                ),
                "version",
            )
        ],
        "Matched events by version (events/s)": [
            Query(
                version_label(
                    f"sum by (role, index_version) "
                    f"(rate(uniserve_online_events_total{sel}[{window}]))"
                ),
                "version",
            )
        ],
    }


def version_label(expr: str) -> str:
    """`expr` with a `version` label "<role> <index version>" to name its series by."""
    return f'label_join({expr}, "version", " ", "role", "index_version")'


def fetch(prometheus: str, expr: str, start: float, end: float, step: float) -> list[Series]:
    """A range query's series; RuntimeError naming the query when Prometheus refuses it."""
    resp = httpx.get(
        f"{prometheus.rstrip('/')}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": step},
        timeout=30,
    )
    body: dict[str, Any] = resp.json() if resp.content else {}
    if resp.status_code != 200 or body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body.get('error', resp.text[:200])}")
    out = []
    for item in body["data"]["result"]:
        points = [(float(t), float(v)) for t, v in item["values"]]
        out.append(
            Series(
                labels=item["metric"],
                times=[datetime.fromtimestamp(t, UTC) for t, _ in points],
                values=[v for _, v in points],
            )
        )
    return out


def reload_times(found: list[Series]) -> list[datetime]:
    """When the index reload counter went up (a swap), from its range query."""
    out = []
    for s in found:
        for before, after, at in zip(s.values, s.values[1:], s.times[1:], strict=False):
            if after > before:
                out.append(at)
    return out


def _plot(ax: Axes, title: str, queries: list[Query], results: list[list[Series]]) -> None:
    scale = 1000.0 if "(ms)" in title else 1.0
    drawn = 0
    for query, found in zip(queries, results, strict=True):
        for s in found:
            values = [v * scale if math.isfinite(v) else math.nan for v in s.values]
            if all(math.isnan(v) for v in values):
                continue  # no traffic of this kind in the range
            label = s.labels.get(query.legend, query.legend)
            ax.plot(s.times, values, label=label, linewidth=1.4)  # type: ignore[arg-type]
            drawn += 1
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    if "ratio" in title:
        ax.set_ylim(0, 1.02)
    else:
        ax.set_ylim(bottom=0)
    if drawn:
        ax.legend(fontsize=8, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no data in range", ha="center", va="center", transform=ax.transAxes)


def render(
    prometheus: str,
    out: Path,
    *,
    since: float = 900.0,
    step: float | None = None,
    window: str = "1m",
    selector: str = "",
    title: str | None = None,
) -> Path:
    """Fetch the report's series for the last `since` seconds and write them to `out` (PNG).

    `step`: seconds between points (default: `since` / 240); `window`: the rate() window;
    `selector`: extra label matchers applied to every series, e.g. `instance="host:9000"`.
    """
    try:
        import matplotlib.dates as mdates
        from matplotlib.figure import Figure
    except ImportError as exc:  # an optional extra: say how to get it
        raise RuntimeError(
            "uniserve report draws with matplotlib, which is not installed: "
            "pip install 'uniserve[report]' (or matplotlib)"
        ) from exc
    parse_duration(window)  # a bad window fails here, not as a Prometheus error
    end = time.time()
    start = end - since
    step = step or max(1.0, since / 240)
    panels = _queries(selector, window)
    results = {
        name: [fetch(prometheus, q.expr, start, end, step) for q in queries]
        for name, queries in panels.items()
    }
    sel = f"{{{selector}}}" if selector else ""
    reloads = reload_times(
        fetch(prometheus, f"sum(uniserve_index_reloads_total{sel})", start, end, step)
    )
    fig = Figure(figsize=(13, 12.5), dpi=110, layout="constrained")
    axes = fig.subplots(3, 2, sharex=True)
    for ax, (name, queries) in zip(axes.flat, panels.items(), strict=True):
        for i, at in enumerate(reloads):
            label = "index reload" if i == 0 else None
            ax.axvline(at, color="grey", linestyle="--", linewidth=1, label=label)  # type: ignore[arg-type]
        _plot(ax, name, queries, results[name])
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    for ax in axes[-1]:
        ax.set_xlabel("time (UTC)")
    stamp = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%d %H:%M UTC")
    fig.suptitle(
        title or f"uniserve: last {since / 60:g} min to {stamp} ({prometheus}, rate [{window}])",
        fontsize=12,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
