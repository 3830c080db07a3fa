"""`python -m service.cli ...` is `uniserve ...`."""

import sys

from service.cli.main import main

sys.exit(main())
