"""One configuration each: how it is set up, how a step is run and timed, and
what it writes. The v1 runners share one graph, each with its own
MonitoredSession; FnUnit runs a tf.function twin (tfdbg v2 and its baseline).

Every unit has ``step()``, ``after_step(sustained)`` and
``end_block(sustained)``, the interface of :func:`schedule.interleave`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from benchmarks.compare.config import CONFIGS, Config
from benchmarks.compare.env import ensure_tfdump_importable, short_error
from benchmarks.compare.measure import clear_dir, du, quantiles
from benchmarks.workloads import unfinalize


def tfdump_availability() -> Dict[str, Optional[str]]:
    """Reasons our configurations cannot run, or None when they can.

    Returns {"hook": reason|None, "floor": reason|None}; the floor is the hook
    with ``sink="null"``, so it has the hook's reason.
    """
    ensure_tfdump_importable()
    reason = None
    try:
        import tfdump_fast
        hook_cls = tfdump_fast.DumpingDebugHook
        del hook_cls
    except Exception as exc:  # noqa: BLE001
        reason = f"tfdump_fast.DumpingDebugHook cannot be imported ({short_error(exc)})"
    if reason is None:
        try:
            from tfdump_fast.bridge import get_bridge
            get_bridge()
        except Exception as exc:  # noqa: BLE001
            reason = f"the TF bridge is not available: {short_error(exc)}"
    return {"hook": reason, "floor": reason}


SUMMARY_DTYPES = r"^(u?int(8|16|32|64)|float(16|32|64)|bfloat16|half|double|bool)$"


def summary_watch_fn(tf_debug_module):
    """watch_fn for the stats-only configurations (same for tfdbg and us).

    DebugNumericSummary has kernels for numeric and bool tensors only. The
    tolerate flag does not cover every case (in the lowered while loop of
    ``rnn`` the executor still fails on a variant ``Enter``), so the watch is
    restricted to those dtypes, which is what a tfdbg user has to do too.
    """
    def watch_fn(fetches, feeds):
        del fetches, feeds
        return tf_debug_module.WatchOptions(debug_ops=["DebugNumericSummary"],
                                            tensor_dtype_regex_allowlist=SUMMARY_DTYPES,
                                            tolerate_debug_op_creation_failures=True)
    return watch_fn


# ============================================================================
# v1 runners (one MonitoredSession per configuration, all on one graph)


class Runner:
    """One configuration's session. step() runs one training step and returns its time."""

    def __init__(self, config: Config, workload, root: str):
        self.config = config
        self.wl = workload
        self.root = root
        self.session = None
        self.hook = None
        self.extra: Dict[str, Any] = {}

    def make_hooks(self) -> list:
        return []

    def open(self) -> None:
        import tensorflow as tf

        hooks = self.make_hooks()
        with self.wl.graph.as_default():
            # MonitoredSession finalizes the graph; the next configuration's
            # session (and a hook's begin()) may need to add ops to it.
            unfinalize(self.wl.graph)
            self.session = tf.compat.v1.train.MonitoredSession(hooks=hooks)

    def step(self) -> float:
        t0 = time.perf_counter()
        self.session.run(self.wl.train_op)
        return time.perf_counter() - t0

    def after_step(self, sustained: bool) -> Tuple[float, Dict[str, int]]:
        """Per-step housekeeping: (timed seconds, {"bytes", "files"} written by the step)."""
        return 0.0, {}

    def end_block(self, sustained: bool) -> Tuple[float, float, Dict[str, int]]:
        """(timed seconds, untimed drain seconds, {"bytes", "files"} written since last call)."""
        # Only configurations that write pay for a sync: a sync with nothing
        # of ours dirty would only measure other processes' writeback.
        if sustained and self.config.writes:
            t0 = time.perf_counter()
            os.sync()
            return time.perf_counter() - t0, 0.0, {}
        return 0.0, 0.0, {}

    def stats(self) -> Optional[Dict[str, Any]]:
        return None

    def close(self) -> None:
        if self.session is not None:
            with self.wl.graph.as_default():
                self.session.close()
            self.session = None


class NoHookRunner(Runner):
    pass


class TfdumpRunner(Runner):
    def __init__(self, config, workload, root, engine_options: Dict[str, Any], summary: bool):
        super().__init__(config, workload, root)
        self.engine_options = engine_options
        self.summary = summary
        self._last_bytes = 0
        self._last_files = 0
        self.final_stats = None

    def make_hooks(self):
        import tfdump_fast
        from tensorflow.python import debug as tf_debug

        watch_fn = summary_watch_fn(tf_debug) if self.summary else None
        self.hook = tfdump_fast.DumpingDebugHook(self.root, watch_fn=watch_fn, log_usage=False,
                                                 **self.engine_options)
        return [self.hook]

    def _measure(self) -> Dict[str, int]:
        files, size = du(self.root)
        out = {"bytes": size - self._last_bytes, "files": files - self._last_files}
        self._last_bytes, self._last_files = size, files
        return out

    def end_block(self, sustained):
        t0 = time.perf_counter()
        self.hook.flush()
        flush_s = time.perf_counter() - t0
        if sustained and self.config.writes:
            os.sync()
            return time.perf_counter() - t0, 0.0, self._measure()
        return 0.0, flush_s, self._measure()

    def stats(self) -> Optional[Dict[str, Any]]:
        # A JSON-safe copy: the figures are stored as they were at this call.
        try:
            return json.loads(json.dumps(self.hook.stats(), default=str))
        except Exception as exc:  # noqa: BLE001 - stats are figures, not a reason to fail
            return {"error": short_error(exc)}

    def close(self):
        self.final_stats = self.stats()
        super().close()
        self.extra["files_in_dump"], self.extra["bytes_in_dump"] = du(self.root)


class TfdumpUnsampledRunner(TfdumpRunner):
    """Times unsampled steps of a sampling hook, with a dumped step every third step.

    Each timed step follows: a sampled step (dumped, then flushed: untimed)
    and one unsampled step (untimed, but its time is kept as
    ``first_unsampled_after_dump_ms``). That first step switches TF back from
    the debug executor to the plain one (a rebuild of either would show
    there), and it also pays the aftermath of the dump in TF's allocator and
    caches, which a step of a session without any hook pays just as much
    after a dumped step in the same process (measured 4.4 vs 4.5 ms on rnn).
    The timed step is then what an unsampled step costs in steady state: the
    hook's sampling decision and nothing else.
    """

    def __init__(self, config, workload, root, engine_options):
        super().__init__(config, workload, root, engine_options, summary=False)
        self._dump_next = True
        self.first_after_dump: List[float] = []

    def make_hooks(self):
        import tfdump_fast

        self.hook = tfdump_fast.DumpingDebugHook(self.root, log_usage=False, sample=lambda step: self._dump_next,
                                                 **self.engine_options)
        return [self.hook]

    def step(self) -> float:
        self._dump_next = True
        self.session.run(self.wl.train_op)
        self.hook.flush()
        self._dump_next = False
        self.first_after_dump.append(super().step())
        return super().step()

    def close(self):
        super().close()
        q = quantiles([t * 1e3 for t in self.first_after_dump])
        if q:
            self.extra["first_unsampled_after_dump_ms"] = q


class TfdbgRunner(Runner):
    def __init__(self, config, workload, root, summary: bool):
        super().__init__(config, workload, root)
        self.summary = summary

    def make_hooks(self):
        from tensorflow.python import debug as tf_debug

        watch_fn = summary_watch_fn(tf_debug) if self.summary else None
        self.hook = tf_debug.DumpingDebugHook(self.root, watch_fn=watch_fn)
        return [self.hook]

    def _collect(self) -> Dict[str, int]:
        files, size = du(self.root)
        clear_dir(self.root)
        return {"bytes": size, "files": files}

    def after_step(self, sustained):
        # tfdbg writes (and closes) every file inside Session.run. In burst its
        # run directory is counted and deleted after every step, untimed (one
        # rnn step is 1.3 GB in 17k files).
        if sustained:
            return 0.0, {}
        return 0.0, self._collect()

    def end_block(self, sustained):
        # Sustained: the block's data must reach the disk, as ours must, so
        # the sync is timed; deleting before the sync would drop dirty pages
        # that were never written. Counting and deleting is untimed.
        if not sustained:
            return 0.0, 0.0, {}
        t0 = time.perf_counter()
        os.sync()
        timed = time.perf_counter() - t0
        return timed, 0.0, self._collect()


def make_runner(name: str, wl, root: str, avail: Dict[str, Optional[str]], engine_options: Dict[str, Any]):
    """(runner, None) or (None, skip reason)."""
    cfg = CONFIGS[name]
    if name == "none":
        return NoHookRunner(cfg, wl, root), None
    if name in ("tfdbg", "tfdbg-summary"):
        return TfdbgRunner(cfg, wl, root, summary=name == "tfdbg-summary"), None
    if avail.get("hook"):
        return None, avail["hook"]
    opts = dict(engine_options)
    if name == "floor":
        return TfdumpRunner(cfg, wl, root, dict(opts, sink="null"), summary=False), None
    if name == "tfdump-unsampled":
        return TfdumpUnsampledRunner(cfg, wl, root, opts), None
    if name == "tfdump-raw":
        opts["codec"] = "raw"
    return TfdumpRunner(cfg, wl, root, opts, summary=name == "tfdump-summary"), None


# ============================================================================
# A tf.function twin (tfdbg v2 and its undebugged baseline)


class FnUnit:
    """A tf.function step; `writer` is tfdbg v2's debug events writer when it dumps to `root`."""

    def __init__(self, name: str, fn, writer=None, root: Optional[str] = None):
        self.config = CONFIGS[name]
        self.fn = fn
        self.writer = writer
        self.root = root
        self._last = (0, 0)

    def step(self) -> float:
        t0 = time.perf_counter()
        self.fn().numpy()  # the scalar loss: forces completion, same for both
        return time.perf_counter() - t0

    def after_step(self, sustained):
        return 0.0, {}

    def flush(self):
        if self.writer is not None:
            self.writer.FlushNonExecutionFiles()
            self.writer.FlushExecutionFiles()

    def mark(self):
        self.flush()
        if self.root:
            self._last = du(self.root)

    def end_block(self, sustained):
        t0 = time.perf_counter()
        self.flush()
        if sustained and self.config.writes:
            os.sync()
        timed = time.perf_counter() - t0 if sustained else 0.0
        written = {}
        if self.root:
            files, size = du(self.root)
            written = {"bytes": size - self._last[1], "files": files - self._last[0]}
            self._last = (files, size)
        return timed, 0.0, written
