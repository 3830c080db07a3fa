"""Prometheus metrics, in a registry owned by each app (so tests can build many apps).

Labels never carry user or item ids or raw paths: requests are labelled by route template
("/v1/retrieve", or "unmatched" for unknown paths) and status class ("2xx"...).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

UNMATCHED_ROUTE = "unmatched"

# Request latency buckets in seconds: sub-millisecond cache hits up to multi-second overloads.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, status_class(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_cache(self, op: str, result: str) -> None:
        self.cache.labels(op, result).inc()
