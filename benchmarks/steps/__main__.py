"""``python -m benchmarks.steps``: see the package docstring and ``--help``."""

import sys

from benchmarks.steps.cli import main

sys.exit(main())
