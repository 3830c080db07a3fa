"""`python scripts/bench_service.py` == `uniserve bench service`; see its `--help`.

Throughput at a p99 bound: uniserve vs the in-process limit and a naive service (what it
measures: service/bench/service.py). Example: python scripts/bench_service.py --quick
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "service", *sys.argv[1:]]))
