"""`python scripts/train.py` == `uniserve train`; see `uniserve train --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
