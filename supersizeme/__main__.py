"""``python -m supersizeme``: the batch command line (see supersizeme/cli.py)."""

import sys

from supersizeme.cli import main

sys.exit(main())
