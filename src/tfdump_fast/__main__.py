"""``python -m tfdump_fast``: the ``tfdump-fast`` command line."""

import sys

from tfdump_fast.cli import main

if __name__ == "__main__":
    sys.exit(main())
