"""Metrics of a service run as several worker processes (`UNISERVE_WORKERS` > 1).

Each worker has its own app, registry and counters, and the kernel hands each connection to any
one of them, so a scrape of `/metrics` reaches one worker. `WorkerMetrics` makes that one answer
for all: every worker writes its registry's exposition, each series labelled
`worker="<index>"`, to a file in the supervisor's run directory every `PUBLISH_SECONDS`
(`publish_forever`), and the worker that is scraped answers with its own series, fresh, merged
with the other workers' latest files (`exposition`). Series keep one label more than with one
worker: sum them in PromQL (`sum without (worker) (...)`; rates and histogram quantiles over
`sum by (le)` already add the workers up). Another worker's series are at most
`PUBLISH_SECONDS` old; a file older than `STALE_SECONDS` (a worker that died and was not yet
replaced) is left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

log = logging.getLogger(__name__)

PUBLISH_SECONDS = 1.0
STALE_SECONDS = 30.0


@dataclass(frozen=True)
class Worker:
    """This process's place among the supervisor's workers."""

    index: int
    count: int
    run_dir: Path  # the supervisor's: each worker's metrics file lives here

    @property
    def label(self) -> str:
        return str(self.index)

    def metrics_file(self, index: int | None = None) -> Path:
        return self.run_dir / f"metrics-{self.index if index is None else index}.prom"


def labelled(families: Iterable[Metric], worker: str) -> Iterator[Metric]:
    """`families` with `worker` added to the labels of every sample."""
    for family in families:
        out = Metric(family.name, family.documentation, family.type, family.unit)
        out.samples = [
            Sample(s.name, {**s.labels, "worker": worker}, s.value, s.timestamp, s.exemplar)
            for s in family.samples
        ]
        yield out


def merged(groups: Iterable[Iterable[Metric]]) -> list[Metric]:
    """One family per name, with the samples of every group's family of that name."""
    out: dict[str, Metric] = {}
    for families in groups:
        for family in families:
            if family.name not in out:
                out[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            out[family.name].samples.extend(family.samples)
    return list(out.values())


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _exposition(families: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry)


class WorkerMetrics:
    def __init__(self, worker: Worker, registry: CollectorRegistry) -> None:
        self.worker = worker
        self.registry = registry

    def own(self) -> list[Metric]:
        """This worker's series now, labelled with its index."""
        return list(labelled(self.registry.collect(), self.worker.label))

    def publish(self) -> None:
        """Write this worker's series to its file (atomically: a reader never sees half)."""
        path = self.worker.metrics_file()
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(_exposition(self.own()))
        tmp.replace(path)

    def others(self) -> Iterator[list[Metric]]:
        """The other workers' latest published series (fresh files only)."""
        now = time.time()
        for index in range(self.worker.count):
            if index == self.worker.index:
                continue
            path = self.worker.metrics_file(index)
            try:
                if now - path.stat().st_mtime > STALE_SECONDS:
                    continue
                text = path.read_text()
            except OSError:
                continue  # not published yet, or being replaced by a restarted worker
            try:
                yield list(text_string_to_metric_families(text))
            except ValueError:
                log.warning("worker %d's metrics file %s does not parse; left out", index, path)

    def exposition(self) -> bytes:
        """Every worker's series: this one's now, the others' as last published."""
        return _exposition(merged([self.own(), *self.others()]))

    async def publish_forever(self, interval: float = PUBLISH_SECONDS) -> None:
        while True:
            try:
                self.publish()
            except OSError as exc:
                log.warning("cannot publish worker metrics to %s: %s", self.worker.run_dir, exc)
            await asyncio.sleep(interval)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.worker.metrics_file().unlink()
