"""The live catalogue benchmark (issue 19): freshness of upserts on the replica that took them
and on a second one, churn under retrieve load, retrieve latency with an empty and a full delta.

    python scripts/bench_catalogue.py --data-dir .uniserve [--redis] [--poll 1] [--json out.json]

See `service/bench/catalogue.py` for the phases.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.bench.catalogue import main

if __name__ == "__main__":
    raise SystemExit(main())
