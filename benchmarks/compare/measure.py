"""What the harness measures with: bytes and files on disk, quantiles, the
resident memory of this process and a sampler of it."""

from __future__ import annotations

import contextlib
import math
import os
import resource
import shutil
import sys
import threading
from typing import Dict, List, Optional, Tuple


def du(path: str) -> Tuple[int, int]:
    """(files, bytes) under path (apparent sizes; 0, 0 if missing)."""
    files = size = 0
    for d, _, names in os.walk(path):
        for n in names:
            try:
                size += os.lstat(os.path.join(d, n)).st_size
                files += 1
            except OSError:
                pass
    return files, size


def clear_dir(path: str) -> None:
    """Deletes what is inside path, keeping path itself (tfdbg keeps its session root)."""
    if not os.path.isdir(path):
        return
    for n in os.listdir(path):
        p = os.path.join(path, n)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(p)


def quantiles(values: List[float]) -> Optional[Dict[str, float]]:
    """median, quartiles (linear interpolation), IQR, min, max, n."""
    v = sorted(x for x in values if x is not None and math.isfinite(x))
    if not v:
        return None

    def q(p):
        k = (len(v) - 1) * p
        lo, hi = math.floor(k), math.ceil(k)
        return v[lo] + (v[hi] - v[lo]) * (k - lo)

    return {"median": q(0.5), "q1": q(0.25), "q3": q(0.75), "iqr": q(0.75) - q(0.25),
            "min": v[0], "max": v[-1], "n": len(v)}


def scaled(stats: Optional[Dict[str, float]], factor: float) -> Optional[Dict[str, float]]:
    if stats is None:
        return None
    return {k: (val * factor if k != "n" else val) for k, val in stats.items()}


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def ru_maxrss_bytes() -> int:
    # Linux reports KiB, macOS bytes.
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024



class RssSampler:
    """Samples this process's RSS every `interval` s, attributing it to the active label."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.active: Optional[str] = None
        self.peaks: Dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-rss-sampler", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def sample(self, label: str) -> None:
        r = rss_bytes()
        if r > self.peaks.get(label, 0):
            self.peaks[label] = r

    def _loop(self):
        while not self._stop.wait(self.interval):
            label = self.active
            if label is not None:
                self.sample(label)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=1)

