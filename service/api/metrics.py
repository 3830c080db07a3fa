"""Prometheus metrics, in a registry owned by each app (so tests can build many apps).

Labels never carry user or item ids or raw paths: requests are labelled by route template
("/v1/retrieve", or "unmatched" for unknown paths) and status class ("2xx"...); every other
label comes from a closed set (stages, cache ops and results, rejection and reload-failure
reasons), and the series of those sets are created at 0 when the app is built, so dashboards
and alerts have data before the first event. The live index's identity and age are read from
the app at scrape time (`track_index`). `deploy/grafana/dashboards/uniserve.json` and
`deploy/prometheus/alerts.yml` query these names; tests/api/test_observability.py evaluates every one
of their expressions against a real Prometheus scraping a real server.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from index.manifest import RejectReason
from service.api.online_metrics import OnlineMetrics
from service.api.workers import WorkerMetrics
from service.core.batcher import BatchStats

UNMATCHED_ROUTE = "unmatched"

# Stages of `uniserve_stage_duration_seconds`: a request's wait for its batch (encode_queue,
# search_queue), one batched call (encode, search), the exact MaxSim re-rank of multi-vector
# retrieval (rerank), one cache lookup (cache) and a retrieve's whole computation (total).
STAGES = ("encode_queue", "search_queue", "encode", "search", "rerank", "cache", "total")
BATCH_STAGES = ("encode", "search")
CACHE_OPS = ("user_vector", "retrieve", "rank")
CACHE_RESULTS = ("hit", "miss", "error")
# Requests refused for capacity or availability, by error type: 429 overloaded, 503 not_ready
# (no model/index loaded) and backend_unavailable (a store the request needs is down).
REJECT_REASONS = ("overloaded", "not_ready", "backend_unavailable")
# Outcomes of a router's call to one shard (`service.core.fanout.ShardFanout`).
SHARD_OUTCOMES = ("ok", "timeout", "error")

# Request latency buckets in seconds: sub-millisecond cache hits up to multi-second overloads.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Pipeline stage buckets in seconds: 0.1 ms to 2.5 s, dense in the milliseconds.
STAGE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
# Batch size buckets: powers of two up to the largest allowed batch.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# Redis call latency buckets: sub-millisecond round trips up to the 1 s timeout ceiling.
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


@dataclass(frozen=True)
class IndexSnapshot:
    """What the metrics say about the live index: its identity and creation time."""

    version: str
    model_version: str
    index_type: str
    created: float  # unix seconds


class _IndexCollector(Collector):
    """`uniserve_index_info` and `uniserve_index_age_seconds`, computed at each scrape from the
    live index (absent while none is loaded, so a swapped-out version leaves no stale series)."""

    def __init__(self) -> None:
        self.live: Callable[[], IndexSnapshot | None] = lambda: None

    def describe(self) -> list[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        return self._families(self.live())

    @staticmethod
    def _families(live: IndexSnapshot | None) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "uniserve_index_info",
            "The live index version (value 1), with the model version it serves and its type.",
            labels=["version", "model_version", "type"],
        )
        age = GaugeMetricFamily(
            "uniserve_index_age_seconds",
            "Seconds since the live index version was created (its manifest's created_at).",
        )
        if live is not None:
            info.add_metric([live.version, live.model_version, live.index_type], 1)
            age.add_metric([], max(0.0, time.time() - live.created))
        yield info
        yield age


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.workers: WorkerMetrics | None = None  # set when this app is one of several workers
        self.requests = Counter(
            "uniserve_requests_total",
            "HTTP requests by route template and status class.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "uniserve_request_duration_seconds",
            "HTTP request latency by route template, from request start to response end.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cache = Counter(
            "uniserve_cache_requests_total",
            "Cache lookups by cached operation and result (hit, miss, error).",
            ["op", "result"],
            registry=self.registry,
        )
        self.index_items = Gauge(
            "uniserve_index_items",
            "Items in the live index (0 while not ready).",
            registry=self.registry,
        )
        self.inflight = Gauge(
            "uniserve_engine_inflight",
            "Model/index calls admitted and not yet finished (queued or running).",
            registry=self.registry,
        )
        self.admission_limit = Gauge(
            "uniserve_admission_limit",
            "Compute requests allowed in progress at once; beyond it 429 from the headers alone "
            "(UNISERVE_ADMISSION=adaptive: sized from the measured completion rate and latency; "
            "fixed: UNISERVE_MAX_PENDING_REQUESTS).",
            registry=self.registry,
        )
        self.admission_pending = Gauge(
            "uniserve_admission_pending",
            "Compute requests in progress (received, not yet answered), against "
            "uniserve_admission_limit.",
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "uniserve_event_loop_lag_seconds",
            "How late a tick of the event loop ran (every 2 ms): what a request, 429s included, "
            "waits before its first line runs. While shedding load the adaptive limit keeps the "
            "share of ticks later than UNISERVE_ADMISSION_LAG_MS under 2%.",
            buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.index_reloads = Counter(
            "uniserve_index_reloads_total",
            "Index versions swapped in after startup (reload, watcher or rollback).",
            registry=self.registry,
        )
        self.index_reload_failures = Counter(
            "uniserve_index_reload_failures_total",
            "Index versions refused by a reload, by reason; the old version kept serving.",
            ["reason"],
            registry=self.registry,
        )
        for reason in RejectReason:  # every reason exported from the start, at 0
            self.index_reload_failures.labels(reason.value)
        self.index_created = Gauge(
            "uniserve_index_created_timestamp_seconds",
            "Creation time of the live index version (age = now - this); 0 while not ready.",
            registry=self.registry,
        )
        self.redis_calls = Counter(
            "uniserve_redis_calls_total",
            "Redis calls by operation and result: ok, timeout, connection, corrupt, error, or "
            "skipped without a call (breaker_open, budget_spent).",
            ["op", "result"],
            registry=self.registry,
        )
        self.redis_latency = Histogram(
            "uniserve_redis_duration_seconds",
            "Latency of Redis calls that were made, by operation (failed ones included).",
            ["op"],
            buckets=REDIS_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "uniserve_batch_size",
            "Requests per batched call, by stage (encode: user-encoder forward pass, search: "
            "FAISS search).",
            ["stage"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "uniserve_queue_depth",
            "Requests waiting for a batch, by stage (encode, search).",
            ["stage"],
            registry=self.registry,
        )
        self.stage_latency = Histogram(
            "uniserve_stage_duration_seconds",
            "Seconds spent per stage: encode_queue / search_queue (a request's wait for its "
            "batch), encode / search (one batched call), total (a retrieve's computation, "
            "cache included).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.batch_failures = Counter(
            "uniserve_batch_failures_total",
            "Batched calls that raised (each fails only its own requests), by stage.",
            ["stage"],
            registry=self.registry,
        )
        for stage in BATCH_STAGES:
            self.batch_failures.labels(stage)
        self.redis_breaker = Gauge(
            "uniserve_redis_breaker_state",
            "Redis circuit breaker: 0 closed (or no Redis configured), 1 half-open (next call "
            "probes), 2 open.",
            registry=self.registry,
        )
        self.rejected = Counter(
            "uniserve_rejected_requests_total",
            "Requests refused with 429 (overloaded) or 503 (not_ready, backend_unavailable), by "
            "error type.",
            ["reason"],
            registry=self.registry,
        )
        self.shard_requests = Counter(
            "uniserve_shard_requests_total",
            "Router mode: shard searches by shard (its position in UNISERVE_SHARD_URLS) and "
            "outcome (ok; timeout or error: left out of the answer, flagged partial).",
            ["shard", "outcome"],
            registry=self.registry,
        )
        self.shard_latency = Histogram(
            "uniserve_shard_duration_seconds",
            "Router mode: seconds from sending a shard search to its answer (or failure), by "
            "shard.",
            ["shard"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._index = _IndexCollector()
        self.registry.register(self._index)
        self.online = OnlineMetrics(self.registry)  # online quality, shadow, promotion
        self.catalogue = CatalogueMetrics(self.registry)
        # every closed-set series exported from the start, at 0
        for stage in STAGES:
            self.stage_latency.labels(stage)
        for stage in BATCH_STAGES:
            self.batch_size.labels(stage)
        for op in CACHE_OPS:
            for result in CACHE_RESULTS:
                self.cache.labels(op, result)
        for rejected in REJECT_REASONS:
            self.rejected.labels(rejected)

    def exposition(self) -> bytes:
        """The text `/metrics` answers: this registry, or every worker's when there are several."""
        if self.workers is not None:
            return self.workers.exposition()
        return generate_latest(self.registry)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, status_class(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.labels(stats.name).observe(stats.size)
        self.stage_latency.labels(stats.name).observe(stats.run_seconds)
        queue = self.stage_latency.labels(f"{stats.name}_queue")
        for wait in stats.queue_waits:
            queue.observe(wait)
        if stats.failed:
            self.batch_failures.labels(stats.name).inc()

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_latency.labels(stage).observe(seconds)

    def observe_cache(self, op: str, result: str) -> None:
        self.cache.labels(op, result).inc()

    def observe_rejection(self, status: int, error_type: str | None) -> None:
        """Count a 429 / 503 by its error type (one of REJECT_REASONS; a 429 or 503 the
        framework raised without one counts as overloaded / not_ready)."""
        if status not in (429, 503):
            return
        if error_type not in REJECT_REASONS:
            error_type = "overloaded" if status == 429 else "not_ready"
        self.rejected.labels(error_type).inc()

    def track_shards(self, count: int) -> None:
        """Export every shard's series at 0 (router mode, `count` shards)."""
        for shard in range(count):
            self.shard_latency.labels(str(shard))
            for outcome in SHARD_OUTCOMES:
                self.shard_requests.labels(str(shard), outcome)

    def observe_shard(self, shard: int, outcome: str, seconds: float) -> None:
        self.shard_requests.labels(str(shard), outcome).inc()
        self.shard_latency.labels(str(shard)).observe(seconds)

    def track_index(self, live: Callable[[], IndexSnapshot | None]) -> None:
        """Read the live index's identity and age from `live()` at every scrape."""
        self._index.live = live

    def observe_redis(self, op: str, result: str, seconds: float | None) -> None:
        self.redis_calls.labels(op, result).inc()
        if seconds is not None:
            self.redis_latency.labels(op).observe(seconds)


# Seconds from a catalogue change being written to the change log to its being applied on a
# replica: milliseconds on the replica that took the call, about a poll interval on the others.
CATALOGUE_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class CatalogueMetrics:
    """The live catalogue (`service.core.catalogue`): the delta's size against its limit, the
    upserts and retirements this replica took, and how far behind the change log it applies."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.delta_items = Gauge(
            "uniserve_catalogue_delta_items",
            "Distinct items changed (upserted or retired) since the live index version was "
            "built: the live delta, bounded by uniserve_catalogue_delta_limit.",
            registry=registry,
        )
        self.delta_limit = Gauge(
            "uniserve_catalogue_delta_limit",
            "UNISERVE_DELTA_MAX_ITEMS: beyond it upserts and retirements get 409 delta_full.",
            registry=registry,
        )
        self.upserts = Counter(
            "uniserve_catalogue_upserts_total",
            "Items upserted through POST /admin/items/upsert on this replica.",
            registry=registry,
        )
        self.retirements = Counter(
            "uniserve_catalogue_retirements_total",
            "Items retired through POST /admin/items/retire on this replica.",
            registry=registry,
        )
        self.applied_seq = Gauge(
            "uniserve_catalogue_applied_seq",
            "Sequence number of the last change-log record this replica applied (0: none).",
            registry=registry,
        )
        self.lag = Histogram(
            "uniserve_catalogue_lag_seconds",
            "Seconds from a change being written to the change log to its being applied on "
            "this replica (the replica that took the call, and every other one).",
            buckets=CATALOGUE_LAG_BUCKETS,
            registry=registry,
        )

    def observe_call(self, op: str, items: int) -> None:
        (self.upserts if op == "upsert" else self.retirements).inc(items)

    def observe_applied(self, seq: int, written: Sequence[float]) -> None:
        """Changes up to `seq` applied, written at the epoch seconds `written`."""
        now = time.time()
        self.applied_seq.set(seq)
        for ts in written:
            self.lag.observe(max(0.0, now - ts))
