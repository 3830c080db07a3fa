"""Prometheus metrics, in a registry owned by each app (so tests can build many apps).

Labels never carry user or item ids or raw paths: requests are labelled by route template
("/v1/retrieve", or "unmatched" for unknown paths) and status class ("2xx"...).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from index.manifest import RejectReason
from service.batcher import BatchStats

UNMATCHED_ROUTE = "unmatched"

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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
        for stage in ("encode", "search"):
            self.batch_failures.labels(stage)
        self.redis_breaker = Gauge(
            "uniserve_redis_breaker_state",
            "Redis circuit breaker: 0 closed, 1 half-open (next call probes), 2 open.",
            registry=self.registry,
        )

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

    def observe_redis(self, op: str, result: str, seconds: float | None) -> None:
        self.redis_calls.labels(op, result).inc()
        if seconds is not None:
            self.redis_latency.labels(op).observe(seconds)
