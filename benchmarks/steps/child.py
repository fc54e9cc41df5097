"""One workload, every configuration, every regime, quiet then loaded.

Run by :mod:`benchmarks.steps.cli` as ``python -m benchmarks.steps.child
SPEC.json RESULT.json`` (a crash costs one workload's figures). The spec says
the workload, scale, configurations, regimes (steps per measurement),
repetitions and loads; the result holds every measurement.

Every configuration has its own ``MonitoredSession`` on the one graph, built
and warmed up (executor built, first-run costs paid) before anything is
timed. The hook configurations get a fresh ``DumpingDebugHook`` for every
measurement, through :func:`make_swappable_hook`, a SessionRunHook that forwards
``before_run``/``after_run`` to the current hook: the session and its cached
executors stay, the writer is new. A measurement times N steps back to back
and then the hook's ``end()`` (which flushes and closes the writer), all in
one window; per-step = window / N.

A new ``DumpingDebugHook`` publishes TF's graphs and core metadata to a
``ram://`` directory of its own, so its watches carry a URL that the session
has not seen, and TensorFlow builds a new executor on the hook's first run
(what a user pays once per hook). Each measurement therefore runs one step
untimed first (every configuration does, the same way), flushes the hook,
and then opens the timed window; the first step's time is kept apart.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

from benchmarks.compare.env import ensure_tfdump_importable, log, short_error
from benchmarks.compare.measure import du
from benchmarks.steps import cpu
from benchmarks.steps.load import BackgroundLoad

#: Every configuration, in the order of the tables.
CONFIGS = ("none", "floor", "tfdump", "tfdump-nodurability", "tfdump-summary", "tfdump-health", "flight",
           "flight-noscan", "flight-trigger", "tfdbg", "tfdbg-summary")
DEFAULT_CONFIGS = ("none", "floor", "tfdump", "tfdump-nodurability")
#: The flight recorder's ring (keep_last) in the flight configurations, and
#: how often flight-trigger fires (hook.persist(): the same release path as
#: an inf/nan, which the workloads do not produce).
FLIGHT_KEEP_LAST = 4
FLIGHT_TRIGGER_EVERY = 10
HOOK_OPTIONS = {"tfdump": {}, "tfdump-nodurability": {"durability_s": None}, "tfdump-summary": {},
                "tfdump-health": {},
                "flight": {"keep_last": FLIGHT_KEEP_LAST}, "flight-trigger": {"keep_last": FLIGHT_KEEP_LAST},
                # without the inf/nan check: what the check itself costs
                "flight-noscan": {"keep_last": FLIGHT_KEEP_LAST, "persist_on": ("error",)}}
#: Configurations whose watches ask for summaries (every tensor, as the floor's).
SUMMARY_DEBUG_OPS = {"tfdump-summary": ["DebugNumericSummary"], "tfdump-health": ["FULL_HEALTH"],
                     "tfdbg-summary": ["DebugNumericSummary"]}
WRITER_THREAD_PREFIXES = ("tfdump-",)
WARMUP_STEPS = 2


def make_swappable_hook():
    """A SessionRunHook that forwards a session's runs to its current inner hook.

    ``swap(hook)`` replaces the inner hook (per measurement). Records the
    ``DebugOptions`` the inner hook asks for on the first run after each swap
    (to compare its watches with the floor's, and the URLs it used).
    TensorFlow is imported here, not at module level: the parent process
    imports this module for its constants and never loads TensorFlow.
    To the inner hook this wrapper is another hook whose fetches it cannot
    predict, so the hook configurations measure what a ``MonitoredSession``
    with, e.g., a ``LoggingTensorHook`` gets: the executor named after each
    run, a new executor's graphs taken from TensorFlow's publishing.
    """
    import tensorflow as tf

    class SwappableHook(tf.compat.v1.train.SessionRunHook):
        def __init__(self):
            self.inner = None
            self.first_options = None

        def swap(self, inner) -> None:
            self.inner = inner
            self.first_options = None
            if inner is not None:
                inner.begin()

        def before_run(self, run_context):
            if self.inner is None:
                return None
            args = self.inner.before_run(run_context)
            if self.first_options is None and args is not None and args.options is not None:
                self.first_options = args.options.debug_options
            return args

        def after_run(self, run_context, run_values):
            if self.inner is not None:
                self.inner.after_run(run_context, run_values)

    return SwappableHook()


class Unit:
    """One configuration's session and how a measurement opens and ends it."""

    def __init__(self, name: str, wl, workdir: str):
        import tensorflow as tf

        from benchmarks.steps.floor import floor_calls, make_floor_hook
        from benchmarks.workloads import unfinalize

        self.name = name
        self.is_tfdbg = name.startswith("tfdbg")
        self.wl = wl
        self.workdir = workdir
        self.swap = None
        self.floor_hook = None
        self.inner = None
        self.urls: set = set()
        self._tfdbg_hooks: List[Any] = []
        hooks = []
        if name == "floor":
            self.floor_hook = make_floor_hook(wl.graph)
            self._floor_calls = floor_calls
            hooks = [self.floor_hook]
        elif name != "none":
            self.swap = make_swappable_hook()
            hooks = [self.swap]
        with wl.graph.as_default():
            unfinalize(wl.graph)
            self.session = tf.compat.v1.train.MonitoredSession(hooks=hooks)
        self.count = 0
        self.steps_since_trigger = 0   # flight-trigger: steps of this measurement since its last persist()

    def _watch_fn(self):
        ops = SUMMARY_DEBUG_OPS.get(self.name)
        if ops is None:
            return None
        from tensorflow.python import debug as tf_debug

        if self.is_tfdbg:
            # TF's kernel fails the step on resource / variant tensors: the
            # dtype allowlist a tfdbg user needs (it still fails on a variant
            # Enter of a tf1 while loop).
            from benchmarks.compare.runners import summary_watch_fn

            return summary_watch_fn(tf_debug)
        return lambda fetches, feeds: tf_debug.WatchOptions(debug_ops=list(ops))

    def _new_inner(self, root: str):
        if self.is_tfdbg:
            from tensorflow.python import debug as tf_debug

            hook = tf_debug.DumpingDebugHook(root, watch_fn=self._watch_fn())
            # tfdbg's hook wraps the session in a debug wrapper session whose
            # __del__ closes the wrapped session: old hooks must outlive it.
            self._tfdbg_hooks.append(hook)
            return hook
        import tfdump_fast

        return tfdump_fast.DumpingDebugHook(root, log_usage=False, watch_fn=self._watch_fn(),
                                            **HOOK_OPTIONS[self.name])

    def open(self) -> Optional[str]:
        """Starts a measurement: a fresh hook on a fresh directory (untimed)."""
        if self.swap is None:
            return None
        self.count += 1
        root = os.path.join(self.workdir, f"{self.name}-{self.count}")
        self.inner = self._new_inner(root)
        self.swap.swap(self.inner)
        self.steps_since_trigger = 0
        return root

    def run_step(self) -> None:
        self.session.run(self.wl.train_op)
        if self.name == "flight-trigger" and self.inner is not None:
            self.steps_since_trigger += 1
            if self.steps_since_trigger >= FLIGHT_TRIGGER_EVERY:
                self.steps_since_trigger = 0
                self.inner.persist("benchmark")

    def flush(self) -> None:
        if self.inner is not None and not self.is_tfdbg:
            self.inner.flush()

    def finish(self) -> None:
        """Inside the timed window: what ends the measurement's writing."""
        if self.inner is not None and not self.is_tfdbg:
            self.inner.end(None)  # what MonitoredSession calls: ends runs, flushes, closes the writer

    def stats(self) -> Optional[Dict[str, Any]]:
        if self.inner is None or self.is_tfdbg:
            return None
        return json.loads(json.dumps(self.inner.stats(), default=str))

    def close_measurement(self, root: Optional[str]) -> Dict[str, Any]:
        """After the window (untimed): bytes written, stats, the directory removed."""
        out: Dict[str, Any] = {}
        if self.swap is not None:
            if self.swap.first_options is not None:
                self.urls.update(u for w in self.swap.first_options.debug_tensor_watch_opts for u in w.debug_urls)
            out["stats"] = self.stats()
            self.swap.swap(None)
            self.inner = None
        if root is not None:
            out["files"], out["bytes"] = du(root)
            shutil.rmtree(root, ignore_errors=True)
        return out

    def close(self) -> None:
        with self.wl.graph.as_default():
            self.session.close()


def _watch_check(units: Dict[str, Unit]) -> Dict[str, Any]:
    """The floor watches what the hook watches: same (node, slot, debug ops) set."""
    from tfdump_fast.published import PUBLISH_NODE

    from benchmarks.steps.floor import watch_keys

    out: Dict[str, Any] = {}
    floor = units.get("floor")
    floor_keys = watch_keys(floor.floor_hook.run_options.debug_options) if floor else None
    if floor_keys is not None:
        out["floor_watches"] = len(floor_keys)
    for name in ("tfdump", "tfdump-nodurability"):
        u = units.get(name)
        if u is None or floor_keys is None:
            continue
        u.open()
        u.run_step()
        opts = u.swap.first_options
        keys = watch_keys(opts, skip_nodes={PUBLISH_NODE}) if opts is not None else frozenset()
        u.finish()
        u.close_measurement(None)
        out[f"{name}_watches"] = len(keys)
        if keys != floor_keys:
            raise AssertionError(
                f"{name} watches differ from the floor's: {len(keys - floor_keys)} only in the hook, "
                f"{len(floor_keys - keys)} only in the floor (e.g. {sorted(keys ^ floor_keys)[:3]})")
    out["equal"] = True
    return out


def measure(unit: Unit, n: int) -> Dict[str, Any]:
    root = unit.open()
    # One untimed step first: a new hook has a new publish URL (see the
    # module docstring), so TensorFlow builds a new executor on its first
    # run; that is a once-per-hook cost, reported apart as first_step_ms.
    # The hook is flushed after it, so the window starts with an empty queue.
    ts = time.perf_counter()
    unit.run_step()
    first_ms = (time.perf_counter() - ts) * 1e3
    unit.flush()
    floor0 = unit._floor_calls() if unit.floor_hook is not None else None
    named = cpu.thread_ids(WRITER_THREAD_PREFIXES)
    times: List[float] = []
    c0 = cpu.snapshot()
    t0 = time.perf_counter()
    for _ in range(n):
        ts = time.perf_counter()
        unit.run_step()
        times.append(time.perf_counter() - ts)
    steps_s = time.perf_counter() - t0
    ring = _ring_memory(unit)  # before end(): closing lets the ring go
    unit.finish()
    total_s = time.perf_counter() - t0
    c1 = cpu.snapshot()
    rec: Dict[str, Any] = {"n": n, "total_s": total_s, "steps_s": steps_s, "finish_s": total_s - steps_s,
                           "per_step_ms": total_s / n * 1e3, "step_ms": [t * 1e3 for t in times],
                           "cpu_s": cpu.split(c0, c1, named), "writer_threads": len(named),
                           "first_step_ms": first_ms}
    if floor0 is not None:
        rec["floor_tensors"] = unit._floor_calls() - floor0
    if ring is not None:
        rec["ring"] = ring
    rec.update(unit.close_measurement(root))
    return rec


def _ring_memory(unit: Unit) -> Optional[Dict[str, int]]:
    """The flight recorder's held bytes and the process's RSS at the end of the steps."""
    if unit.inner is None or not unit.name.startswith("flight"):
        return None
    s = unit.inner.stats()
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {"held_bytes": int(s["held_bytes"]), "held_runs": int(s["held_runs"]), "rss_bytes": rss,
            "tensors_written": int(s["tensors_written"]), "tensors_accepted": int(s["tensors_accepted"])}


def run(spec: Dict[str, Any]) -> Dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ensure_tfdump_importable()
    from benchmarks.steps.models import build
    from benchmarks.workloads import graph_mode_setup

    graph_mode_setup()
    t_build = time.perf_counter()
    wl = build(spec["workload"], spec["scale"])
    result: Dict[str, Any] = {"workload": spec["workload"], "info": wl.info(),
                              "build_s": time.perf_counter() - t_build, "loads": {}}
    workdir = tempfile.mkdtemp(prefix="steps-", dir=spec.get("workdir"))
    units: Dict[str, Unit] = {}
    try:
        for name in spec["configs"]:
            units[name] = Unit(name, wl, workdir)
        # Warm-up (untimed): executors built, allocator and caches primed.
        # A configuration whose step fails (tfdbg's DebugNumericSummary on a
        # variant or loop tensor) is reported and left out, not the workload.
        for name, u in list(units.items()):
            try:
                root = u.open()
                for _ in range(WARMUP_STEPS):
                    u.run_step()
                u.finish()
                u.close_measurement(root)
            except Exception as exc:  # noqa: BLE001 - reported as this configuration's error
                result.setdefault("config_errors", {})[name] = short_error(exc)
                log(f"  [{spec['workload']}] {name} left out: {short_error(exc)}")
                units.pop(name).close()
        result["watch_check"] = _watch_check(units)
        regimes: Dict[str, int] = spec["regimes"]
        names = [c for c in spec["configs"] if c in units]
        total_steps = len(spec["loads"]) * spec["reps"] * len(names) * sum(regimes.values())
        done = 0
        t_start = time.perf_counter()
        for load in spec["loads"]:
            bg = BackgroundLoad(spec.get("busy")) if load == "loaded" else None
            recs: Dict[str, Dict[str, List]] = {r: {c: [] for c in names} for r in regimes}
            budget = (spec.get("budget_s") or {}).get(load)
            t_load, last_rep_s, reps_done, truncated = time.perf_counter(), 0.0, 0, False
            busy_pids: List[int] = []
            try:
                if bg is not None:
                    bg.start()
                    busy_pids = bg.pids()
                for rep in range(spec["reps"]):
                    # Keeps a full run within its time: a repetition that
                    # would end past this load's share is not started (the
                    # first one always runs).
                    spent = time.perf_counter() - t_load
                    if rep and budget is not None and spent + last_rep_s > budget:
                        truncated = True
                        log(f"  [{spec['workload']} {load}] {rep} of {spec['reps']} repetitions: the next would "
                            f"pass this load's time share ({budget:.0f} s)")
                        break
                    t_rep = time.perf_counter()
                    order = names[rep % len(names):] + names[:rep % len(names)]
                    for regime, n in regimes.items():
                        for name in order:
                            rec = measure(units[name], n)
                            rec["rep"] = rep
                            recs[regime][name].append(rec)
                            done += n
                            el = time.perf_counter() - t_start
                            log(f"  [{spec['workload']} {load}] rep {rep + 1}/{spec['reps']} {regime:5s} "
                                f"{name:20s} {rec['per_step_ms']:8.1f} ms/step  "
                                f"(child ETA {el / done * (total_steps - done):4.0f} s)")
                    last_rep_s = time.perf_counter() - t_rep
                    reps_done += 1
            finally:
                if bg is not None:
                    bg.stop()
            result["loads"][load] = {"busy_processes": len(busy_pids), "busy_pids": busy_pids, "regimes": recs,
                                     "reps_done": reps_done,
                                     "truncated_by_budget": truncated,
                                     "seconds": time.perf_counter() - t_load}
        result["urls"] = {k: sorted(u.urls) for k, u in units.items() if u.urls}
    finally:
        for u in units.values():
            try:
                u.close()
            except Exception as exc:  # noqa: BLE001 - closing must not hide the figures
                log(f"closing {u.name}: {short_error(exc)}")
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        spec = json.load(f)
    try:
        result = run(spec)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as this workload's error
        import traceback

        result = {"workload": spec.get("workload"), "error": short_error(exc), "traceback": traceback.format_exc()}
    with open(argv[1], "w") as f:
        json.dump(result, f)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
