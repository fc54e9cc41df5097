"""The loaded-machine regime's background load: one CPU-bound process per core.

Each process spins in pure Python (no I/O, no memory traffic to speak of),
so the load is the same from run to run: it takes CPU time, nothing else.
The processes die with the harness: they are killed in ``stop()`` (called
from a ``finally`` and at interpreter exit), they ask the kernel to kill them
when their parent dies (``PR_SET_PDEATHSIG``), and they end themselves after
``limit_s`` in any case (``signal.alarm``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import List, Optional

_SPIN = """
import ctypes, signal
try:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the harness
except Exception:
    pass
signal.alarm({limit})
while True:
    pass
"""


class BackgroundLoad:
    """``n`` CPU-bound processes (default: ``os.cpu_count()``), as a context manager."""

    def __init__(self, n: Optional[int] = None, limit_s: int = 3600):
        self.n = n if n is not None else (os.cpu_count() or 1)
        self.limit_s = limit_s
        self.procs: List[subprocess.Popen] = []

    def start(self) -> "BackgroundLoad":
        atexit.register(self.stop)
        for _ in range(self.n):
            self.procs.append(subprocess.Popen([sys.executable, "-c", _SPIN.format(limit=int(self.limit_s))],
                                               stdin=subprocess.DEVNULL))
        time.sleep(0.5)  # let them take the cores before anything is timed
        return self

    def pids(self) -> List[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        procs, self.procs = self.procs, []
        for p in procs:
            with contextlib.suppress(OSError):
                p.send_signal(signal.SIGKILL)
        for p in procs:
            with contextlib.suppress(Exception):
                p.wait(timeout=10)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def __enter__(self) -> "BackgroundLoad":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
