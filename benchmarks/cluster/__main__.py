"""``python -m benchmarks.cluster``: see the package docstring and ``--help``."""

import sys

from benchmarks.cluster.harness import main

sys.exit(main())
