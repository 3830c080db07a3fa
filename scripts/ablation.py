"""The default model's ablation: `uniserve bench ablation` (see `service/bench/ablation.py`).

python scripts/ablation.py --out OUT [--datasets toys,sports] [--only ROWS] [--seeds 0,1]
    [--base default|table] [--resume] [--table]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.bench.ablation import main

if __name__ == "__main__":
    raise SystemExit(main())
