"""What the served blend costs a retrieve's search stage, in process (models/blend.py).

    python scripts/bench_blend.py --model runs/toys --data amazon-toys [--index-type HNSW32]

See `service/bench/blend.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.bench.blend import main

if __name__ == "__main__":
    raise SystemExit(main())
