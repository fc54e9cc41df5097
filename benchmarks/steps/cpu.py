"""CPU seconds per thread of this process, from ``/proc/self/task/<tid>/stat``.

:func:`snapshot` reads utime+stime of every live thread and of the whole
process (``/proc/self/stat``, which keeps the time of threads that have
exited). :func:`split` attributes a window's CPU time to the Python main
thread, to named threads (our writer threads, identified by their Python
thread names through ``threading.enumerate()`` -> ``native_id``) and to the
rest (TensorFlow's threads).
"""

from __future__ import annotations

import os
import threading
from typing import Dict, Iterable, List

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_cpu(path: str) -> float:
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICK


def snapshot() -> Dict:
    threads: Dict[int, float] = {}
    for name in os.listdir("/proc/self/task"):
        try:
            threads[int(name)] = _stat_cpu(f"/proc/self/task/{name}/stat")
        except (OSError, ValueError, IndexError):
            pass  # the thread exited meanwhile
    return {"process": _stat_cpu("/proc/self/stat"), "threads": threads}


def thread_ids(prefixes: Iterable[str]) -> List[int]:
    """native ids of the live Python threads whose name starts with one of ``prefixes``."""
    prefixes = tuple(prefixes)
    return [t.native_id for t in threading.enumerate() if t.name.startswith(prefixes) and t.native_id]


def split(before: Dict, after: Dict, named: Iterable[int]) -> Dict[str, float]:
    """CPU seconds in the window between two snapshots.

    ``main``: the main thread; ``tf``: every other thread alive at both ends
    that is not in ``named``; ``named``: the process total minus those two,
    so it includes named threads that exited inside the window (a writer's
    threads end at ``close()``) -- and any other thread that exited, which in
    this harness are ours.
    """
    named = set(named)
    main = threading.main_thread().native_id
    b, a = before["threads"], after["threads"]
    main_s = a.get(main, 0.0) - b.get(main, 0.0)
    tf_s = sum(a[t] - b[t] for t in a if t in b and t != main and t not in named)
    total = after["process"] - before["process"]
    return {"total": total, "main": main_s, "tf": tf_s, "named": max(0.0, total - main_s - tf_s)}
