"""What the benchmark reads of a started service's processes: CPU time over its whole process
tree (a peer's replicas and workers run as descendants), from /proc."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from service.bench.servers import Server

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
