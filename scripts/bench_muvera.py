"""`python scripts/bench_muvera.py`: MUVERA recall and latency vs exact Chamfer; see `--help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.bench.muvera import main

if __name__ == "__main__":
    sys.exit(main())
