"""`python scripts/replay.py` == `uniserve bench replay`; see `uniserve bench replay --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "replay", *sys.argv[1:]]))
