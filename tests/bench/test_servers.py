"""What the benchmark reads of a started service: CPU time over its whole process tree (a peer's
replicas and workers run as descendants), from /proc; samples of its Prometheus exposition."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service.bench.servers import Server, metric_samples

# a parent that starts a child; the child burns `BURN_S` of CPU, says so in a file, then both
# sleep until killed
TREE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import sys, time
while time.process_time() < {burn}:
    pass
open(sys.argv[1], "w").write("done")
time.sleep(60)
''', sys.argv[1]])
time.sleep(60)
"""
BURN_S = 0.5


def test_cpu_seconds_counts_the_descendants_of_the_service(tmp_path: Path) -> None:
    flag = tmp_path / "burnt"
    proc = subprocess.Popen([sys.executable, "-c", TREE.format(burn=BURN_S), str(flag)])
    try:
        srv = Server("tree", port=0, pid=proc.pid)
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert time.monotonic() < deadline, "the child never finished burning"
            time.sleep(0.05)
        used = srv.cpu_seconds()
        assert used >= BURN_S - 0.02  # the child's burn, counted through the parent
        assert used < BURN_S + 5.0  # two interpreters starting, not a runaway count
    finally:
        subprocess.run(["pkill", "-P", str(proc.pid)], check=False)
        proc.kill()
        proc.wait()
    assert Server("gone", port=0, pid=proc.pid).cpu_seconds() == 0.0  # reaped: nothing to read


def test_metric_samples_reads_a_real_exposition_by_exact_name() -> None:
    registry = CollectorRegistry()
    Gauge("uniserve_catalogue_delta_items", "items", registry=registry).set(40)
    Gauge("uniserve_catalogue_delta_items_max", "a longer name", registry=registry).set(7)
    shadow = Counter("uniserve_shadow_requests", "by outcome", ["outcome"], registry=registry)
    shadow.labels("compared").inc(3)
    shadow.labels("dropped").inc(1)
    Histogram("uniserve_latency_seconds", "h", buckets=(0.1,), registry=registry).observe(0.05)
    text = generate_latest(registry).decode()

    assert metric_samples(text, "uniserve_catalogue_delta_items") == [({}, 40.0)]
    assert metric_samples(text, "uniserve_shadow_requests_total") == [
        ({"outcome": "compared"}, 3.0),
        ({"outcome": "dropped"}, 1.0),
    ]  # in the order the labels were first used
    assert metric_samples(text, "uniserve_latency_seconds_bucket") == [
        ({"le": "0.1"}, 1.0),
        ({"le": "+Inf"}, 1.0),
    ]
    assert metric_samples(text, "uniserve_missing") == []
