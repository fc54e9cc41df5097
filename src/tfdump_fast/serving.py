"""``tfdump_fast.serve``: capture, in a ps or worker process, what clients watch there.

A client's debugged run may watch a node that runs in another process of the
cluster only if that process takes the URL (see :mod:`tfdump_fast.cluster`).
:func:`serve` makes a process do so: it binds the bridge's served capture to
a writer of its own under ``session_root`` and registers the served callback
key, which the clients' probes then report. Clients put the bridge's
``TfdumpIdentity`` debug op on the watches of nodes that run here; each
tensor is filed under an engine run of its own master step (the step id TF
gives every partition of one ``Session.run``), so steps of concurrent
clients never mix. A step's run is ended, with its ``master_step_id`` and
this task in the metadata, once no tensor of that step arrived for
``idle_s``; the client records the same ``master_step_id`` in its run, and
:class:`~tfdump_fast.reader.DumpReader` joins them. See docs/DESIGN.md,
"Distributed capture".

The module is ``serving``, not ``serve``: importing a submodule sets the
package attribute of its name, which would hide the function
``tfdump_fast.serve`` (the hook layer imports this module).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any, Dict, List, Optional

from tfdump_fast import lifecycle
from tfdump_fast.bridge import get_bridge
from tfdump_fast.errors import TfdumpError, TfdumpUsageError
from tfdump_fast.writer import DumpWriter, Run

__all__ = ["ServedCapture", "serve", "serves_into"]

log = logging.getLogger("tfdump_fast")

_lock = threading.Lock()
_active: Optional["ServedCapture"] = None


class ServedCapture:
    """The served capture of this process (one at most). Use :func:`serve`.

    Attributes
    ----------
    writer : DumpWriter
    task : str or None
        ``/job:J/replica:R/task:T`` of this process's server, when known.
    """

    def __init__(self, session_root, task: Optional[str], pool_runs: int, idle_s: float,
                 engine_options: Dict[str, Any]):
        self.task = task
        self.idle_s = float(idle_s)
        self.pool_runs = int(pool_runs)
        self._bridge = get_bridge()
        options = dict(engine_options)
        # Several processes may share one session root (each writer has its
        # own shard names); the pool's runs are always open, so deferring
        # writes to "between runs" would defer them forever.
        options.setdefault("allow_existing", True)
        options.setdefault("defer_during_runs", False)
        self.writer = DumpWriter(session_root, **options)
        self._runs: Dict[int, Run] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.steps_ended = 0
        self._added = 0
        self._warned_no_run = False
        if not self._bridge.served_start(self.writer.engine_api_address()):
            self.writer.close()
            raise TfdumpUsageError("tfdump_fast.serve() was already called in this process")
        self._fill_pool()
        self._thread = threading.Thread(target=self._main, name="tfdump-serve", daemon=True)
        self._thread.start()

    def _begin_meta(self) -> Dict[str, Any]:
        return {"served_task": self.task, "served": True}

    def _fill_pool(self) -> None:
        """Keep ``pool_runs`` open runs free for steps to come."""
        free = self._added - self._bridge.served_stats()["steps_bound"]
        new = [self.writer.begin_run(metadata=self._begin_meta(), capture=False)
               for _ in range(max(0, self.pool_runs - free))]
        with self._lock:
            for run in new:
                self._runs[run.run_id] = run
        self._added += len(new)
        self._bridge.served_add_runs([r.run_id for r in new])

    def _end_steps(self, idle_us: int) -> int:
        taken = self._bridge.served_take_idle(idle_us)
        for step_id, run_id in taken:
            with self._lock:
                run = self._runs.pop(run_id, None)
            if run is None:
                continue
            try:
                self.writer.end_run(run, metadata={"master_step_id": int(step_id),
                                                   "served_task": self.task})
            except TfdumpError as exc:
                log.error("tfdump-fast: serve: could not end the run of master step %d: %s",
                          step_id, exc)
        self.steps_ended += len(taken)
        return len(taken)

    def _main(self) -> None:
        # Wakes often (a few µs of work when nothing happened): steps can
        # come faster than idle_s, and a step that finds the pool empty is
        # not captured.
        interval = min(0.05, self.idle_s / 2)
        while not self._stop.wait(interval):
            try:
                self._end_steps(int(self.idle_s * 1e6))
                stats = self._bridge.served_stats()
                if self._added - stats["steps_bound"] < self.pool_runs // 2 + 1:
                    self._fill_pool()
                if stats["tensors_no_run"] and not self._warned_no_run:
                    self._warned_no_run = True
                    log.warning("tfdump-fast: serve: steps came faster than runs could be opened; "
                                "their tensors on this task were not captured (stats()"
                                "['served_tensors_no_run']); pass a larger pool_runs to serve()")
            except Exception as exc:  # noqa: BLE001 - never take the server down
                log.error("tfdump-fast: serve: %s", exc)

    def stats(self) -> Dict[str, Any]:
        """The writer's counters plus the bridge's served counters."""
        out = dict(self.writer.stats())
        out.update({"served_" + k: v for k, v in self._bridge.served_stats().items()})
        return out

    def flush(self) -> None:
        """End the runs of steps that are over (idle at all) and write everything."""
        self._end_steps(-1)
        self._fill_pool()
        self.writer.flush()

    def close(self) -> None:
        """Stop capturing: end every step's run, drop the unused pool, close the writer."""
        global _active
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=10)
        self._bridge.served_stop()
        try:
            self._end_steps(-1)
            unused = set(self._bridge.served_take_unused())
            with self._lock:
                runs = [self._runs.pop(rid) for rid in list(self._runs) if rid in unused]
            for run in runs:  # never bound to a step: marked, the reader leaves them out
                self.writer.end_run(run, metadata={"served_unused": True})
        finally:
            if lifecycle.owned(self.writer):
                self.writer.close()
            with _lock:
                if _active is self:
                    _active = None


def serves_into(session_root) -> bool:
    """Whether this process's :func:`serve` writes into ``session_root``.

    Package-internal: a hook or wrapper of the same process given the same
    root adds its shards beside the served ones without ``allow_existing``
    (each writer has its own shard names; the reader merges them).
    """
    with _lock:
        active = _active
    if active is None or active.writer.closed:
        return False
    try:
        return os.path.samefile(active.writer.session_root, os.fspath(session_root))
    except OSError:
        return False


def _task_of_server(server) -> Optional[str]:
    if server is None:
        return None
    sd = server.server_def
    return f"/job:{sd.job_name}/replica:0/task:{sd.task_index}"


def serve(session_root, *, server=None, pool_runs: int = 64, idle_s: float = 0.5,
          **engine_options) -> ServedCapture:
    """Capture, in this process, the tensors that clients' debugged runs watch here.

    Call it once in a process that hosts a ``tf.distribute.Server`` (a ps or
    a worker), before ``server.join()`` or before training. Clients' hooks
    and wrappers probe every task on their first debugged run; they watch
    nodes of a task only if its process called :func:`serve` (or is the
    client's own), so calling it later only means earlier runs did not watch
    this task.

    Parameters
    ----------
    session_root : str or os.PathLike
        Where this process's writer puts its shards: the clients' session
        root on a shared file system, or a local directory to be gathered
        later (README, "Distributed"). An existing directory is fine.
    server : tf.distribute.Server, optional
        This process's server; its job and task are recorded in every run.
    pool_runs : int, default 64
        Engine runs kept open for master steps to come, refilled when half
        are taken (a step that finds none free is not captured; counted in
        ``stats()`` and logged once).
    idle_s : float, default 0.5
        A step's run is ended once no tensor of that step arrived for this
        long. A step with a longer pause on this task gets a second run with
        the same ``master_step_id`` (the reader joins both).
    **engine_options
        Passed to :class:`~tfdump_fast.writer.DumpWriter`.

    Returns
    -------
    ServedCapture
        Call :meth:`ServedCapture.close` to stop (also done at exit).
    """
    global _active
    if not isinstance(pool_runs, int) or isinstance(pool_runs, bool) or pool_runs < 1:
        raise TfdumpUsageError(f"serve(pool_runs={pool_runs!r}): a positive int")
    if not isinstance(idle_s, (int, float)) or isinstance(idle_s, bool) or not 0 < idle_s < 3600:
        raise TfdumpUsageError(f"serve(idle_s={idle_s!r}): seconds, > 0")
    with _lock:
        if _active is not None:
            raise TfdumpUsageError("tfdump_fast.serve() was already called in this process; "
                                   "close() the first one to serve again")
        _active = ServedCapture(session_root, _task_of_server(server), pool_runs, idle_s,
                                engine_options)
        atexit.register(_active.close)
        return _active
