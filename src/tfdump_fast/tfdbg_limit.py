"""tfdbg's ``TFDBG_DISK_BYTES_LIMIT`` for the hook and the wrapper session.

Package-internal: each :class:`~tfdump_fast.dumper.Dumper` holds one.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Dict, Optional

from tfdump_fast.errors import TfdumpUsageError

__all__ = ["TFDBG_DISK_BYTES_LIMIT_ENV", "TfdbgByteLimit"]

log = logging.getLogger("tfdump_fast")

TFDBG_DISK_BYTES_LIMIT_ENV = "TFDBG_DISK_BYTES_LIMIT"


class TfdbgByteLimit:
    """tfdbg's ``TFDBG_DISK_BYTES_LIMIT``, counted as tfdbg counts it: tensor bytes.

    Package-internal (the hook and the wrapper each hold one). tfdbg's debug
    ops add each dumped tensor's size (``Tensor::TotalBytes()``; 0 for an
    uninitialized tensor) to a counter that the first run of a wrapper or
    hook resets, and refuse a tensor unless ``used + size < limit``; the
    refused tensor fails its run with ``ResourceExhaustedError``. Here a run
    is never failed: a run is debugged unless the bytes the last debugged run
    of the same signature (fetches and feed keys) dumped would not fit, in
    which case it goes to TensorFlow undebugged, and the limit is logged
    once. A run of a new signature is debugged while ``used < limit``, so
    the count can overshoot by that one run. Tensor bytes are the engine's
    accepted bytes of the run (a numeric tensor's elements times item size,
    the encoded size of strings). Independent of ``disk_limit_bytes``, which
    counts compressed bytes on disk; the environment variable is read when
    the hook or wrapper is made; unset or empty means no limit (tfdbg's
    100 GB default is not applied). ``on_reached(limit, used)`` is called
    once, the first time a run is left undebugged (the owner records it in
    the store as a ``tfdbg_byte_limit_reached`` event).
    """

    def __init__(self, owner: str, environ=None,
                 on_reached: Optional[Callable[[int, int], None]] = None):
        raw = (os.environ if environ is None else environ).get(TFDBG_DISK_BYTES_LIMIT_ENV, "")
        self.limit: Optional[int] = None
        if raw.strip():
            if not raw.strip().isdigit():
                raise TfdumpUsageError(
                    f"{owner}: {TFDBG_DISK_BYTES_LIMIT_ENV}={raw!r} is not a byte count; set it to a "
                    "non-negative integer (tensor bytes to dump at most) or unset it")
            self.limit = int(raw.strip())
        self.used = 0
        self.runs_skipped = 0
        self._owner = owner
        self._on_reached = on_reached
        self._last: Dict[Any, int] = {}
        self._lock = threading.Lock()

    def allows(self, signature) -> bool:
        """Whether a run of ``signature`` may be debugged without passing the limit."""
        if self.limit is None:
            return True
        with self._lock:
            estimate = self._last.get(signature)
            if estimate is None:
                ok = self.used < self.limit
            else:
                ok = estimate == 0 or self.used + estimate < self.limit
            first = False
            if not ok:
                self.runs_skipped += 1
                first = self.runs_skipped == 1
                if first:
                    log.warning(
                        "tfdump-fast: %s: %s=%d reached (%d tensor bytes dumped); later runs that "
                        "would pass it are not debugged (tfdbg would fail them with "
                        "ResourceExhaustedError). Raise or unset %s to keep dumping.", self._owner,
                        TFDBG_DISK_BYTES_LIMIT_ENV, self.limit, self.used, TFDBG_DISK_BYTES_LIMIT_ENV)
            used = self.used
        if first and self._on_reached is not None:
            self._on_reached(self.limit, used)  # outside the lock: it writes to the store
        return ok

    def record(self, signature, run) -> None:
        """Count the tensor bytes of a debugged run that has ended."""
        if self.limit is None:
            return
        nbytes = int(run.counters.get("bytes", 0)) if run is not None else 0
        with self._lock:
            self.used += nbytes
            self._last[signature] = nbytes
