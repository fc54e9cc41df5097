"""``python -m benchmarks.compare``: see the package docstring."""

import sys

from benchmarks.compare.cli import main

sys.exit(main())
