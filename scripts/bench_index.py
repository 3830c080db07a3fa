"""`python scripts/bench_index.py`: recall@10 vs queries/s of FAISS index types; see `--help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.bench.ann import main

if __name__ == "__main__":
    sys.exit(main())
