"""``python -m supersizeme``: the batch command line (see supersizeme/service/cli.py)."""

import sys

from supersizeme.service.cli import main

sys.exit(main())
