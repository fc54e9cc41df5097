"""End-to-end comparison of tfdump-fast against no hook and tfdbg v1/v2.

    python -m benchmarks.compare [--quick] [--out DIR] [--regime burst|sustained|both]
                                 [--models mlp rnn ...] [--configs none tfdump ...]

Writes to ``--out`` (default ``bench-out/``):

* ``results.json``: every figure (per-step times, per-block figures, bytes,
  files, memory, writer stats, reader timings, machine, dd bandwidth,
  errors), for the lead to paste from or re-plot;
* ``results.md``: the tables for BENCHMARKS.md;
* ``step_time_ratio.png``: step-time ratio per configuration and model;
* ``logs/``: stdout/stderr of every child process.

How it measures (the why is in BENCHMARKS.md, "Method"):

* Each workload runs in a child process (a crash of one configuration, even a
  segfault in native code, costs only that child's figures). Inside it every
  tf.compat.v1 configuration has its own MonitoredSession on the one graph,
  and the configurations take turns in round-robin blocks of steps, with the
  starting configuration rotated each round, so drift (thermal, other load,
  page-cache state) is spread over all of them.
* ``burst`` regime: a block of a few steps fits in the writer queue and the
  page cache; the figure is the per-step latency. After each block the
  harness waits (untimed) for tfdump-fast's writer to drain, so its
  background compression does not steal the CPU of the next configuration;
  the drain time is reported separately.
* ``sustained`` regime: every configuration runs enough steps to write
  ``--sustained-gib`` of raw tensor bytes; each block ends with the writer
  flushed and ``os.sync()``, *timed*, so the figure is the throughput with
  the data on disk (the effective step time of the block).
* tfdbg v2 instruments tf.function code only and is enabled process-wide, so
  it runs in its own child on the tf.function twin of each workload,
  interleaved with its own undebugged tf.function baseline.
* Peak memory: a separate child per (workload, configuration) in full runs
  (``--memory isolated``), or a sampler thread in the timing child
  (``--memory inproc``, quick mode).

A configuration that cannot run is recorded as ``skipped`` (with the reason)
or ``error`` (with the traceback) in the JSON and the tables; the comparison
goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGIMES = ("burst", "sustained")
MiB = 1 << 20
GiB = 1 << 30


# ============================================================================
# Configurations


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    label: str
    group: str          # "v1" (graph + MonitoredSession) or "v2" (tf.function)
    baseline: str       # the configuration its ratio is taken against
    ours: bool          # needs tfdump-fast
    writes: bool        # writes dumps (sustained sizing, sync at block end)
    description: str


CONFIGS: Dict[str, Config] = {c.name: c for c in [
    Config("none", "no hook", "v1", "none", False, False,
           "MonitoredSession without hooks: the baseline of every v1 ratio"),
    Config("floor", "capture floor", "v1", "none", True, False,
           "tfdump-fast hook with DumpWriter(sink='null'): TF's debug ops, the memcbk bridge "
           "and the engine's accept path run, every record is discarded"),
    Config("tfdump", "tfdump-fast", "v1", "none", True, True,
           "tfdump_fast.DumpingDebugHook with default options (zstd level 1, shuffle, 2 workers)"),
    Config("tfdump-raw", "tfdump-fast raw", "v1", "none", True, True,
           "tfdump_fast.DumpingDebugHook(codec='raw'): no compression"),
    Config("tfdump-summary", "tfdump-fast summary", "v1", "none", True, True,
           "tfdump_fast.DumpingDebugHook watching DebugNumericSummary only (stats, not tensors)"),
    Config("tfdump-unsampled", "tfdump-fast, unsampled steps", "v1", "none", True, False,
           "tfdump_fast.DumpingDebugHook(sample=...) dumping every third step: the timed steps are "
           "unsampled ones, each after a dumped step (untimed, flushed) and a first unsampled step "
           "(untimed, reported apart) (burst only)"),
    Config("tfdbg", "tfdbg", "v1", "none", False, True,
           "tensorflow.python.debug DumpingDebugHook (file:// dumps, one file per tensor)"),
    Config("tfdbg-summary", "tfdbg summary", "v1", "none", False, True,
           "tfdbg DumpingDebugHook watching DebugNumericSummary only"),
    Config("tf2-none", "tf.function (no debug)", "v2", "tf2-none", False, False,
           "the tf.function twin of the workload, no debugging: the baseline of tfdbg v2"),
    Config("tfdbg2", "tfdbg v2", "v2", "tf2-none", False, True,
           "tf.debugging.experimental.enable_dump_debug_info(FULL_TENSOR, circular_buffer_size=-1) "
           "on the tf.function twin"),
]}
DEFAULT_CONFIGS = tuple(CONFIGS)
TFDBG_CONFIGS = ("tfdbg", "tfdbg-summary", "tfdbg2")

# The reference tfdbg dump of one rnn step the workload is meant to reproduce.
RNN_REFERENCE = {"files": 17276, "bytes": 1.34e9}

# Targets of the project, reported against (never asserted).
TARGETS = {
    "rnn_vs_floor": 1.3,
    "mlp_burst_vs_floor": 1.15,
    "sustained_vs_floor": 1.6,
    "unsampled_vs_none": 1.03,  # "indistinguishable from no hook": within 3%
    "reader_speedup_low": 20.0,
    "reader_speedup_high": 25.0,
}


# ============================================================================
# Small helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


def short_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()[:2000]


def ensure_tfdump_importable() -> None:
    """Lets an uninstalled checkout run (src/ layout): falls back to REPO/src."""
    try:
        import tfdump_fast as probe
        del probe
    except ImportError:
        src = os.path.join(REPO, "src")
        if os.path.isdir(os.path.join(src, "tfdump_fast")) and src not in sys.path:
            sys.path.insert(0, src)


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # tfdbg v1 stops dumping after a process-wide 100 GB by default; sustained
    # runs may get near it, and a silent stop would flatter tfdbg.
    env.setdefault("TFDBG_DISK_BYTES_LIMIT", str(1 << 50))
    paths = [REPO]
    if os.path.isdir(os.path.join(REPO, "src", "tfdump_fast")):
        paths.append(os.path.join(REPO, "src"))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


# ============================================================================
# Machine description and disk bandwidth


def _run_text(cmd: List[str], timeout: float = 30) -> Optional[str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return (p.stdout or p.stderr).strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(workdir: str) -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "hostname": platform.node(), "platform": platform.platform(), "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
    }
    lscpu = _run_text(["lscpu"])
    info["lscpu"] = lscpu
    if lscpu:
        for line in lscpu.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Hypervisor vendor", "L2 cache",
                             "L3 cache"):
                info[k.strip()] = v.strip()
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(("MemTotal", "MemAvailable")):
                    k, v = line.split(":")
                    info[k] = v.strip()
    except OSError:
        pass
    for k in ("dirty_ratio", "dirty_background_ratio", "dirty_bytes", "dirty_background_bytes"):
        with contextlib.suppress(OSError):
            with open(f"/proc/sys/vm/{k}") as f:
                info[f"vm.{k}"] = f.read().strip()
    info["df"] = _run_text(["df", "-h", workdir])
    info["mount"] = _run_text(["findmnt", "-n", "-T", workdir]) or None
    info["lsblk"] = _run_text(["lsblk", "-d", "-o", "NAME,SIZE,ROTA,MODEL"])
    # Distribution metadata, so the parent never imports TensorFlow itself.
    from importlib import metadata
    vers = {}
    for dists in (("numpy",), ("zstandard",), ("tensorflow", "tensorflow-cpu", "tf-nightly"),
                  ("tfdump-fast",), ("matplotlib",), ("psutil",)):
        for d in dists:
            try:
                vers[dists[0]] = metadata.version(d)
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            vers[dists[0]] = "not installed"
    if vers["tfdump-fast"] == "not installed":
        ensure_tfdump_importable()
        with contextlib.suppress(Exception):
            import tfdump_fast
            vers["tfdump-fast"] = f"{tfdump_fast.__version__} (source tree {os.path.dirname(tfdump_fast.__file__)})"
    info["versions"] = vers
    info["git_commit"] = _run_text(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    info["git_dirty"] = bool(_run_text(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"]))
    return info


def measure_dd(workdir: str, mib: int) -> Dict[str, Any]:
    """Sequential write bandwidth of the dump disk, as dd sees it.

    Two ways: O_DIRECT (the device, no page cache) and buffered writes ended by
    fdatasync (the path a buffered writer such as ours or tfdbg's takes). The
    disk-bound limit uses the fdatasync figure; both are reported.
    """
    out: Dict[str, Any] = {"mib": mib}
    target = os.path.join(workdir, "dd.tmp")
    bs = 4  # MiB
    count = max(1, mib // bs)
    for name, flag in (("direct", "oflag=direct"), ("fdatasync", "conv=fdatasync")):
        try:
            t0 = time.perf_counter()
            p = subprocess.run(["dd", "if=/dev/zero", f"of={target}", f"bs={bs}M", f"count={count}", flag],
                               capture_output=True, text=True, timeout=600)
            wall = time.perf_counter() - t0
            m = re.search(r"(\d+) bytes.*copied, ([\d.]+) s", p.stderr)
            if p.returncode != 0 or not m:
                out[name] = {"error": (p.stderr or "").strip()[-500:]}
            else:
                nbytes, secs = int(m.group(1)), float(m.group(2))
                out[name] = {"bytes": nbytes, "seconds": secs, "bytes_per_s": nbytes / secs, "wall_s": wall,
                             "dd_line": p.stderr.strip().splitlines()[-1]}
        except (OSError, subprocess.SubprocessError) as exc:
            out[name] = {"error": short_error(exc)}
        finally:
            with contextlib.suppress(OSError):
                os.unlink(target)
    fd = out.get("fdatasync", {}).get("bytes_per_s")
    di = out.get("direct", {}).get("bytes_per_s")
    out["limit_bytes_per_s"] = fd or di
    out["limit_source"] = "fdatasync" if fd else ("direct" if di else None)
    return out


# ============================================================================
# tfdump-fast access (kept in one place: the hook is the only API we rely on)


def tfdump_availability(need_floor: bool = True) -> Dict[str, Optional[str]]:
    """Reasons our configurations cannot run, or None when they can.

    Returns {"hook": reason|None, "floor": reason|None}.
    """
    ensure_tfdump_importable()
    out: Dict[str, Optional[str]] = {"hook": None, "floor": None}
    try:
        import tfdump_fast
        hook_cls = tfdump_fast.DumpingDebugHook
        del hook_cls
    except Exception as exc:  # noqa: BLE001
        out["hook"] = ("not available yet: tfdump_fast.DumpingDebugHook cannot be imported "
                       f"({short_error(exc)})")
    if out["hook"] is None:
        try:
            from tfdump_fast.bridge import get_bridge
            get_bridge()
        except Exception as exc:  # noqa: BLE001
            out["hook"] = f"the TF bridge is not available: {short_error(exc)}"
    if out["hook"] is not None:
        out["floor"] = out["hook"]
    elif need_floor:
        try:
            import inspect

            from tfdump_fast.writer import DumpWriter
            if "sink" not in inspect.signature(DumpWriter.__init__).parameters:
                out["floor"] = "not available yet: DumpWriter has no sink='null' option"
        except Exception as exc:  # noqa: BLE001
            out["floor"] = f"not available: {short_error(exc)}"
    return out


def _hook_writer(hook) -> Any:
    for attr in ("writer", "_writer"):
        w = getattr(hook, attr, None)
        if w is not None and not callable(w):
            return w
        if callable(w):
            with contextlib.suppress(Exception):
                return w()
    return None


def hook_flush(hook) -> None:
    if hasattr(hook, "flush"):
        hook.flush()
        return
    w = _hook_writer(hook)
    if w is not None:
        w.flush()


def hook_stats(hook) -> Optional[Dict[str, Any]]:
    try:
        if hasattr(hook, "stats"):
            s = hook.stats()
        else:
            w = _hook_writer(hook)
            s = w.stats() if w is not None else None
        return json.loads(json.dumps(s, default=str)) if s is not None else None
    except Exception as exc:  # noqa: BLE001 - stats are figures, not a reason to fail
        return {"error": short_error(exc)}


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
            if self.wl.graph.finalized:
                self.wl.graph._unsafe_unfinalize()  # pylint: disable=protected-access
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
        hook_flush(self.hook)
        flush_s = time.perf_counter() - t0
        if sustained and self.config.writes:
            os.sync()
            return time.perf_counter() - t0, 0.0, self._measure()
        return 0.0, flush_s, self._measure()

    def stats(self):
        return hook_stats(self.hook)

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
        hook_flush(self.hook)
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
    if name == "floor":
        if avail.get("floor"):
            return None, avail["floor"]
        return TfdumpRunner(cfg, wl, root, dict(engine_options, sink="null"), summary=False), None
    if avail.get("hook"):
        return None, avail["hook"]
    opts = dict(engine_options)
    if name == "tfdump-unsampled":
        return TfdumpUnsampledRunner(cfg, wl, root, opts), None
    if name == "tfdump-raw":
        opts["codec"] = "raw"
    return TfdumpRunner(cfg, wl, root, opts, summary=name == "tfdump-summary"), None


# ============================================================================
# The interleaved scheduler (shared by the v1 and v2 children)


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


def participates(round_index: int, rounds: int, blocks: int) -> bool:
    """Spreads `blocks` participations evenly over `rounds` rounds."""
    if blocks >= rounds:
        return True
    return (round_index * blocks) // rounds != ((round_index + 1) * blocks) // rounds


def interleave(units: List[Any], quotas: Dict[str, int], block: Union[int, Dict[str, int]], sustained: bool,
               on_error: Callable[[Any, BaseException], None], sampler: Optional[RssSampler] = None,
               name_of: Callable[[Any], str] = lambda u: u.config.name) -> Dict[str, Dict[str, Any]]:
    """Runs `quotas[name]` measured steps of every unit in round-robin blocks.

    Each unit has step(), after_step(sustained), end_block(sustained). Returns
    per-unit raw figures: step times, per-block effective step times,
    bytes/files written, drain times.
    """
    rec = {name_of(u): {"step_s": [], "block_eff_s": [], "drain_s": [], "bytes": 0, "files": 0,
                        "steps": 0, "blocks": 0} for u in units}
    alive = list(units)
    blocks = block if isinstance(block, dict) else {name_of(u): block for u in units}
    nblocks = {name_of(u): max(1, math.ceil(quotas[name_of(u)] / blocks[name_of(u)])) for u in units}
    rounds = max(nblocks.values()) if nblocks else 0
    for r in range(rounds):
        k = r % max(1, len(alive))
        order = alive[k:] + alive[:k]  # rotate the starting configuration
        for u in order:
            name = name_of(u)
            if u not in alive or not participates(r, rounds, nblocks[name]):
                continue
            n = min(blocks[name], quotas[name] - rec[name]["steps"])
            if n <= 0:
                continue
            try:
                if sampler is not None:
                    sampler.active = name
                timed = 0.0
                times = []
                for _ in range(n):
                    dt = u.step()
                    times.append(dt)
                    extra, written = u.after_step(sustained)
                    timed += extra
                    rec[name]["bytes"] += written.get("bytes", 0)
                    rec[name]["files"] += written.get("files", 0)
                extra, drain, written = u.end_block(sustained)
                timed += extra
                rec[name]["bytes"] += written.get("bytes", 0)
                rec[name]["files"] += written.get("files", 0)
                rec[name]["step_s"].extend(times)
                rec[name]["block_eff_s"].append((sum(times) + timed) / n)
                rec[name]["drain_s"].append(drain)
                rec[name]["steps"] += n
                rec[name]["blocks"] += 1
                if sampler is not None:  # steps shorter than the sampling interval
                    sampler.sample(name)
            except Exception as exc:  # noqa: BLE001 - record, drop the unit, go on
                alive.remove(u)
                on_error(u, exc)
            finally:
                if sampler is not None:
                    sampler.active = None
    return rec


def summarize(raw: Dict[str, Any], sustained: bool) -> Dict[str, Any]:
    steps = raw["steps"]
    out = {
        "status": "ok",
        "steps": steps,
        "blocks": raw["blocks"],
        "step_ms": scaled(quantiles(raw["step_s"]), 1e3),
        "effective_step_ms": scaled(quantiles(raw["block_eff_s"]), 1e3),
        "bytes_total": raw["bytes"],
        "files_total": raw["files"],
        "bytes_per_step": raw["bytes"] / steps if steps else None,
        "files_per_step": raw["files"] / steps if steps else None,
    }
    drains = [d for d in raw["drain_s"] if d]
    if drains:
        out["drain_ms"] = scaled(quantiles(drains), 1e3)
    # The headline time: latency in burst, throughput incl. sync in sustained.
    out["time_ms"] = (out["effective_step_ms"] if sustained else out["step_ms"])
    return out


def add_ratios(figs: Dict[str, Dict[str, Any]]) -> None:
    for name, f in figs.items():
        base = figs.get(CONFIGS[name].baseline) if name in CONFIGS else None
        if f.get("status") != "ok" or not base or base.get("status") != "ok":
            continue
        if f.get("time_ms") and base.get("time_ms") and base["time_ms"]["median"] > 0:
            f["ratio"] = f["time_ms"]["median"] / base["time_ms"]["median"]
            f["ratio_q1"] = f["time_ms"]["q1"] / base["time_ms"]["median"]
            f["ratio_q3"] = f["time_ms"]["q3"] / base["time_ms"]["median"]


# ============================================================================
# Child: the tf.compat.v1 configurations of some workloads


def _quota(name: str, spec: Dict[str, Any], regime: str, sustained_steps: int) -> int:
    if regime == "burst":
        q = spec["steps"]
        if name in TFDBG_CONFIGS:
            q = min(q, spec["tfdbg_max_steps"])
        return max(1, q)
    return max(1, sustained_steps)


def _sustained_plan(spec, raw_bytes_per_step: Optional[float]) -> Tuple[int, int]:
    """(steps per configuration, steps per block) for the sustained regime."""
    if not raw_bytes_per_step:
        raw_bytes_per_step = 64 * MiB
    steps = math.ceil(spec["sustained_bytes"] / raw_bytes_per_step)
    steps = max(spec["sustained_min_steps"], min(spec["sustained_max_steps"], steps))
    block = max(1, min(steps, math.ceil(spec["sustained_block_bytes"] / raw_bytes_per_step)))
    return steps, block


def child_v1(spec: Dict[str, Any], result_path: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ensure_tfdump_importable()
    from benchmarks import workloads as W

    W.graph_mode_setup()
    configs = [c for c in spec["configs"] if CONFIGS[c].group == "v1"]
    need_ours = any(CONFIGS[c].ours for c in configs)
    avail = tfdump_availability() if need_ours else {}
    result: Dict[str, Any] = {"models": {}, "availability": avail}

    def save():
        with open(result_path + ".tmp", "w") as f:
            json.dump(result, f, indent=1, default=str)
        os.replace(result_path + ".tmp", result_path)

    for model in spec["models"]:
        mres: Dict[str, Any] = {"regimes": {}}
        result["models"][model] = mres
        try:
            wl = W.build_graph(model, spec["scale"], spec["seed"])
            mres["workload"] = wl.info()
        except Exception as exc:  # noqa: BLE001
            mres["error"] = short_error(exc)
            mres["traceback"] = traceback.format_exc()
            save()
            continue
        for regime in spec["regimes"]:
            log(f"[v1] {model} {regime}")
            try:
                mres["regimes"][regime] = _run_v1_regime(spec, wl, configs, avail, regime)
            except Exception as exc:  # noqa: BLE001
                mres["regimes"][regime] = {"error": short_error(exc), "traceback": traceback.format_exc()}
            save()
    save()


def _run_v1_regime(spec, wl, configs, avail, regime) -> Dict[str, Any]:
    sustained = regime == "sustained"
    figs: Dict[str, Dict[str, Any]] = {}
    runners: List[Runner] = []
    base_root = os.path.join(spec["workdir"], f"{wl.name}-{regime}")
    shutil.rmtree(base_root, ignore_errors=True)
    os.makedirs(base_root)
    engine_options = dict(spec.get("engine_options") or {})
    for name in configs:
        if sustained and name == "tfdump-unsampled":
            figs[name] = {"status": "skipped", "reason": "burst only: the latency of unsampled steps"}
            continue
        runner, skip = make_runner(name, wl, os.path.join(base_root, name), avail, engine_options)
        if skip:
            figs[name] = {"status": "skipped", "reason": skip}
            continue
        try:
            runner.open()
            runners.append(runner)
        except Exception as exc:  # noqa: BLE001
            figs[name] = {"status": "error", "error": short_error(exc), "traceback": traceback.format_exc()}

    def on_error(u, exc):
        figs[u.config.name] = {"status": "error", "error": short_error(exc), "traceback": traceback.format_exc()}
        with contextlib.suppress(Exception):
            u.close()

    # Warm-up: the first steps of a configuration build its executors
    # (tfdbg rebuilds them every step: its URLs change with the run dir).
    warm: Dict[str, Any] = {}
    for u in list(runners):
        try:
            per_step = []
            for _ in range(spec["warmup"]):
                u.step()
                per_step.append(u.after_step(False)[1])
            _, _, written = u.end_block(False)
            warm[u.config.name] = {"per_step": per_step, "block": written}
        except Exception as exc:  # noqa: BLE001
            runners.remove(u)
            on_error(u, exc)
    # Raw tensor bytes of one step, to size the sustained regime: for tfdbg's
    # configurations what tfdbg writes for a step (one uncompressed file per
    # tensor); for the others what our engine accepted per step. They differ
    # on rnn: tfdbg's 1.34 GB are mostly the same list elements written again
    # in every TensorList state, and sizing our runs by them would mean five
    # one-step blocks -- a step plus a full drain, not a sustained regime.
    tfdbg_est = ours_est = None
    if warm.get("tfdbg", {}).get("per_step"):
        tfdbg_est = warm["tfdbg"]["per_step"][-1].get("bytes")
    if spec["warmup"]:
        for u in runners:
            if u.config.name == "tfdump":
                s = u.stats() or {}
                if s.get("bytes_accepted"):
                    ours_est = s["bytes_accepted"] / spec["warmup"]
    plan = {"raw_bytes_per_step_estimate": ours_est or tfdbg_est,
            "tfdbg_raw_bytes_per_step_estimate": tfdbg_est}
    if sustained:
        steps, block = _sustained_plan(spec, ours_est or tfdbg_est)
        tfdbg_steps, tfdbg_block = _sustained_plan(spec, tfdbg_est or ours_est)
    else:
        steps, block = spec["steps"], spec["burst_block"]
        tfdbg_steps, tfdbg_block = steps, block
    plan.update({"block": block, "steps": steps, "tfdbg_block": tfdbg_block, "tfdbg_steps": tfdbg_steps})
    quotas = {u.config.name: _quota(u.config.name, spec, regime,
                                    tfdbg_steps if u.config.name in TFDBG_CONFIGS else steps) for u in runners}
    blocks = {u.config.name: tfdbg_block if u.config.name in TFDBG_CONFIGS else block for u in runners}
    plan["quotas"] = quotas
    plan["blocks"] = blocks
    sampler = RssSampler().start() if spec["memory"] == "inproc" else None
    t0 = time.perf_counter()
    raw = interleave(runners, quotas, blocks, sustained, on_error, sampler)
    wall = time.perf_counter() - t0
    if sampler is not None:
        sampler.stop()
    for u in runners:
        name = u.config.name
        if name in figs:  # failed during the run
            continue
        f = summarize(raw[name], sustained)
        if sampler is not None and name in sampler.peaks:
            f["rss_peak_mb_inproc"] = sampler.peaks[name] / MiB
        if isinstance(u, TfdumpRunner):
            f["writer_stats"] = u.stats()
        figs[name] = f
    for u in runners:
        try:
            u.close()
            if isinstance(u, TfdumpRunner) and u.config.name in figs:
                figs[u.config.name]["writer_stats_final"] = u.final_stats
                figs[u.config.name].update(u.extra)
                _ours_extras(figs[u.config.name])
        except Exception as exc:  # noqa: BLE001
            if u.config.name in figs:
                figs[u.config.name]["close_error"] = short_error(exc)
    shutil.rmtree(base_root, ignore_errors=True)
    add_ratios(figs)
    return {"configs": figs, "plan": plan, "order": [u.config.name for u in runners], "wall_s": wall,
            "warmup_written": warm}


def _ours_extras(f: Dict[str, Any]) -> None:
    """Pulls the figures the tables show out of the writer stats."""
    s = f.get("writer_stats_final") or f.get("writer_stats") or {}
    if not isinstance(s, dict):
        return
    f["queue_high_water"] = s.get("queue_high_water")
    f["tensors_dropped"] = s.get("tensors_dropped")
    f["frames_by_codec"] = s.get("frames_by_codec")
    f["codec_state"] = s.get("codec_state")
    if s.get("tensors_accepted") is not None and f.get("steps"):
        f["tensors_per_step"] = s["tensors_accepted"] / max(1, f["steps"])


# ============================================================================
# Child: tfdbg v2 on the tf.function twins


class _FnUnit:
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

    def _flush(self):
        if self.writer is not None:
            self.writer.FlushNonExecutionFiles()
            self.writer.FlushExecutionFiles()

    def mark(self):
        self._flush()
        if self.root:
            self._last = du(self.root)

    def end_block(self, sustained):
        t0 = time.perf_counter()
        self._flush()
        if sustained and self.config.writes:
            os.sync()
        timed = time.perf_counter() - t0 if sustained else 0.0
        written = {}
        if self.root:
            files, size = du(self.root)
            written = {"bytes": size - self._last[1], "files": files - self._last[0]}
            self._last = (files, size)
        return timed, 0.0, written


def child_v2(spec: Dict[str, Any], result_path: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from benchmarks import workloads as W

    result: Dict[str, Any] = {"models": {}}

    def save():
        with open(result_path + ".tmp", "w") as f:
            json.dump(result, f, indent=1, default=str)
        os.replace(result_path + ".tmp", result_path)

    want_dbg = "tfdbg2" in spec["configs"]
    for model in spec["models"]:
        mres: Dict[str, Any] = {"regimes": {}}
        result["models"][model] = mres
        try:
            fw = W.build_function(model, spec["scale"], spec["seed"])
            mres["workload"] = fw.info()
            plain = _FnUnit("tf2-none", fw.make_step())
            for _ in range(spec["warmup"]):
                plain.step()
            # Baseline before dumping is enabled, to show what the enabled
            # callback costs the undebugged function (eager op callbacks).
            pre = [plain.step() for _ in range(max(3, spec["warmup"]))]
            mres["tf2_none_before_enable_ms"] = scaled(quantiles(pre), 1e3)
        except Exception as exc:  # noqa: BLE001
            mres["error"] = short_error(exc)
            mres["traceback"] = traceback.format_exc()
            save()
            continue
        for regime in spec["regimes"]:
            log(f"[v2] {model} {regime}")
            sustained = regime == "sustained"
            figs: Dict[str, Any] = {}
            root = os.path.join(spec["workdir"], f"tfdbg2-{model}-{regime}")
            shutil.rmtree(root, ignore_errors=True)
            units = [plain]
            enabled = False
            try:
                if want_dbg:
                    try:
                        writer = tf.debugging.experimental.enable_dump_debug_info(
                            root, tensor_debug_mode="FULL_TENSOR", circular_buffer_size=-1)
                        enabled = True
                        # Traced after enabling, so it is instrumented.
                        dbg = _FnUnit("tfdbg2", fw.make_step(), writer, root)
                        for _ in range(spec["warmup"]):
                            dbg.step()
                        dbg.mark()
                        units.append(dbg)
                    except Exception as exc:  # noqa: BLE001
                        figs["tfdbg2"] = {"status": "error", "error": short_error(exc),
                                          "traceback": traceback.format_exc()}
                raw_est = None
                if len(units) > 1:
                    t = units[1]
                    t.step()
                    _, _, w = t.end_block(False)
                    raw_est = w.get("bytes")
                if sustained:
                    steps, block = _sustained_plan(spec, raw_est)
                else:
                    steps, block = spec["steps"], spec["burst_block"]
                quotas = {u.config.name: _quota(u.config.name, spec, regime, steps) for u in units}

                def on_error(u, exc):
                    figs[u.config.name] = {"status": "error", "error": short_error(exc),
                                           "traceback": traceback.format_exc()}

                sampler = RssSampler().start() if spec["memory"] == "inproc" else None
                raw = interleave(units, quotas, block, sustained, on_error, sampler)
                if sampler is not None:
                    sampler.stop()
                for u in units:
                    if u.config.name not in figs:
                        figs[u.config.name] = summarize(raw[u.config.name], sustained)
                        if u.root:
                            u._flush()
                            figs[u.config.name]["files_in_dump"], figs[u.config.name]["bytes_in_dump"] = \
                                du(u.root)
                        if sampler is not None and u.config.name in sampler.peaks:
                            figs[u.config.name]["rss_peak_mb_inproc"] = sampler.peaks[u.config.name] / MiB
                add_ratios(figs)
                mres["regimes"][regime] = {"configs": figs, "plan": {
                    "raw_bytes_per_step_estimate": raw_est, "steps": steps, "block": block, "quotas": quotas}}
            except Exception as exc:  # noqa: BLE001
                mres["regimes"][regime] = {"error": short_error(exc), "traceback": traceback.format_exc(),
                                           "configs": figs}
            finally:
                if enabled:
                    with contextlib.suppress(Exception):
                        tf.debugging.experimental.disable_dump_debug_info()
                shutil.rmtree(root, ignore_errors=True)
            save()
    save()


# ============================================================================
# Child: peak memory of one configuration alone


def child_mem(spec: Dict[str, Any], result_path: str) -> None:
    """Peak RSS of one configuration alone: warm-up + `memory_steps` steps, drained after each."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    model, name = spec["models"][0], spec["configs"][0]
    cfg = CONFIGS[name]
    out: Dict[str, Any] = {"model": model, "config": name, "method": "isolated"}
    root = os.path.join(spec["workdir"], f"mem-{model}-{name}")
    shutil.rmtree(root, ignore_errors=True)
    try:
        ensure_tfdump_importable()
        from benchmarks import workloads as W
        sampler = RssSampler(0.01).start()
        sampler.active = "all"
        unit, skip, disable = None, None, None
        if cfg.group == "v1":
            W.graph_mode_setup()
            wl = W.build_graph(model, spec["scale"], spec["seed"])
            avail = tfdump_availability() if cfg.ours else {}
            unit, skip = make_runner(name, wl, root, avail, dict(spec.get("engine_options") or {}))
            out["rss_before_mb"] = rss_bytes() / MiB
            if unit is not None:
                unit.open()
        else:
            import tensorflow as tf
            fw = W.build_function(model, spec["scale"], spec["seed"])
            out["rss_before_mb"] = rss_bytes() / MiB
            writer = None
            if name == "tfdbg2":
                writer = tf.debugging.experimental.enable_dump_debug_info(
                    root, tensor_debug_mode="FULL_TENSOR", circular_buffer_size=-1)
                disable = tf.debugging.experimental.disable_dump_debug_info
            unit = _FnUnit(name, fw.make_step(), writer, root if writer else None)
        if skip:
            out.update(status="skipped", reason=skip)
        else:
            steps = spec["memory_steps"]
            if name in TFDBG_CONFIGS:
                steps = min(steps, spec["tfdbg_max_steps"])
            for _ in range(spec["warmup"] + steps):
                unit.step()
                unit.after_step(False)
                unit.end_block(False)  # burst regime: drained after every step
            if isinstance(unit, Runner):
                unit.close()
            if disable is not None:
                disable()
            sampler.stop()
            out.update(status="ok", steps=steps, rss_peak_mb=sampler.peaks.get("all", 0) / MiB,
                       ru_maxrss_mb=ru_maxrss_bytes() / MiB)
    except Exception as exc:  # noqa: BLE001
        out.update(status="error", error=short_error(exc), traceback=traceback.format_exc())
    shutil.rmtree(root, ignore_errors=True)
    with open(result_path, "w") as f:
        json.dump(out, f, indent=1, default=str)


# ============================================================================
# Child: reader figures on the rnn dump


def _timed(fn, repeats: int) -> Tuple[Optional[Dict[str, float]], Any]:
    times, value = [], None
    for _ in range(max(1, repeats)):
        value = None  # free the previous result before the next repeat
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return scaled(quantiles(times), 1e3), value


def _reader_ops(open_fn, list_fn, find_fn, load_fn, repeats: int) -> Dict[str, Any]:
    """Times open / list / find / load-all, each from a fresh open.

    Every operation starts from a new reader object so that neither side
    profits from state a previous operation left (tfdbg's DebugDumpDir lists
    everything when opened; our reader caches decompressed blocks). The page
    cache is warm for both after the first repeat.
    """
    out: Dict[str, Any] = {}
    out["open_ms"], _ = _timed(open_fn, repeats)
    out["list_ms"], items = _timed(lambda: list_fn(open_fn()), repeats)
    out["tensors"] = len(items)
    del items
    out["find_ms"], found = _timed(lambda: find_fn(open_fn()), repeats)
    out["find_matches"] = len(found)
    del found
    out["load_all_ms"], values = _timed(lambda: load_fn(open_fn()), repeats)
    out["loaded"] = len(values)
    del values
    return out


def child_reader(spec: Dict[str, Any], result_path: str) -> None:
    """open / list / find(has_inf_or_nan) / load-all: DumpReader vs DebugDumpDir.

    Both read one training step of the reader workload (rnn by default): ours
    from our own dump, tfdbg from tfdbg's own dump of the same step of the
    same graph; then our dump is converted to the tfdbg layout (throughput)
    and DebugDumpDir opens the result.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ensure_tfdump_importable()
    from benchmarks import workloads as W
    import tensorflow as tf
    from tensorflow.python import debug as tf_debug

    W.graph_mode_setup()
    model = spec["reader_model"]
    reps = spec["reader_repeats"]
    out: Dict[str, Any] = {"model": model, "repeats": reps,
                           "method": "each operation from a fresh open; warm page cache after repeat 1"}

    def save():
        with open(result_path, "w") as f:
            json.dump(out, f, indent=1, default=str)

    base = os.path.join(spec["workdir"], f"reader-{model}")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    try:
        wl = W.build_graph(model, spec["scale"], spec["seed"])
        out["workload"] = wl.info()
    except Exception as exc:  # noqa: BLE001
        out["error"] = short_error(exc)
        save()
        return

    def one_step(hooks):
        with wl.graph.as_default():
            if wl.graph.finalized:
                wl.graph._unsafe_unfinalize()  # pylint: disable=protected-access
            with tf.compat.v1.train.MonitoredSession(hooks=hooks) as sess:
                sess.run(wl.train_op)

    tfdbg_root = os.path.join(base, "tfdbg")
    tfdbg = out["tfdbg"] = {}
    try:
        one_step([tf_debug.DumpingDebugHook(tfdbg_root)])
        run_dir = os.path.join(tfdbg_root, sorted(os.listdir(tfdbg_root))[0])
        tfdbg["files"], tfdbg["bytes"] = du(run_dir)
        tfdbg.update(_reader_ops(
            lambda: tf_debug.DebugDumpDir(run_dir),
            lambda dd: list(dd.dumped_tensor_data),
            lambda dd: dd.find(tf_debug.has_inf_or_nan),
            lambda dd: [d.get_tensor() for d in dd.dumped_tensor_data],
            reps))
        tfdbg["status"] = "ok"
    except Exception as exc:  # noqa: BLE001
        tfdbg.update(status="error", error=short_error(exc), traceback=traceback.format_exc())
    save()

    avail = tfdump_availability(need_floor=False)
    ours = out["tfdump"] = {}
    conv = out["convert"] = {}
    ours_root = os.path.join(base, "tfdump")
    if avail["hook"]:
        ours.update(status="skipped", reason=avail["hook"])
        conv.update(status="skipped", reason=avail["hook"])
        save()
        shutil.rmtree(base, ignore_errors=True)
        return
    try:
        import tfdump_fast
        from tfdump_fast.reader import has_inf_or_nan
        one_step([tfdump_fast.DumpingDebugHook(ours_root, log_usage=False)])
        ours["files"], ours["bytes"] = du(ours_root)
        ours.update(_reader_ops(
            lambda: tfdump_fast.DumpReader(ours_root),
            lambda r: list(r.runs[-1].records),
            lambda r: r.runs[-1].find(has_inf_or_nan),
            lambda r: r.runs[-1].values(),
            reps))
        ours["status"] = "ok"
    except Exception as exc:  # noqa: BLE001
        ours.update(status="error", error=short_error(exc), traceback=traceback.format_exc())
    save()

    if ours.get("status") != "ok":
        conv.update(status="skipped", reason="no tfdump-fast dump to convert")
    else:
        try:
            import tfdump_fast
            dest = os.path.join(base, "converted")
            t0 = time.perf_counter()
            run_dirs = tfdump_fast.convert(ours_root, dest)
            secs = time.perf_counter() - t0
            files, size = du(dest)
            conv.update(status="ok", seconds=secs, files=files, bytes=size,
                        bytes_per_s=size / secs if secs else None, files_per_s=files / secs if secs else None)
            target = list(run_dirs)[-1]
            conv["debugdumpdir_open_ms"], dd = _timed(lambda: tf_debug.DebugDumpDir(target), 1)
            conv["debugdumpdir_tensors"] = dd.size
        except Exception as exc:  # noqa: BLE001
            conv.update(status="error", error=short_error(exc), traceback=traceback.format_exc())
    save()
    shutil.rmtree(base, ignore_errors=True)


# ============================================================================
# Parent: orchestration


def run_child(kind: str, spec: Dict[str, Any], out_dir: str, tag: str, timeout: float) -> Dict[str, Any]:
    """Runs one child; returns {"rc", "wall_s", "result" (or None), "log", "error"}."""
    os.makedirs(os.path.join(out_dir, "logs"), exist_ok=True)
    spec_path = os.path.join(out_dir, "logs", f"{tag}.spec.json")
    result_path = os.path.join(out_dir, "logs", f"{tag}.result.json")
    log_path = os.path.join(out_dir, "logs", f"{tag}.log")
    with contextlib.suppress(OSError):
        os.unlink(result_path)
    with open(spec_path, "w") as f:
        json.dump(spec, f, indent=1)
    cmd = [sys.executable, "-m", "benchmarks.compare", "--_child", kind, "--_spec", spec_path,
           "--_result", result_path]
    t0 = time.perf_counter()
    error = None
    with open(log_path, "w") as logf:
        try:
            p = subprocess.run(cmd, cwd=REPO, env=child_env(), stdout=logf, stderr=subprocess.STDOUT,
                               timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = None
            error = f"child timed out after {timeout:.0f} s"
    wall = time.perf_counter() - t0
    result = None
    if os.path.exists(result_path):
        with contextlib.suppress(ValueError, OSError):
            with open(result_path) as f:
                result = json.load(f)
    if rc not in (0, None) and error is None:
        error = f"child exited with status {rc}"
    if error:
        try:
            with open(log_path) as f:
                tail = f.read()[-3000:]
        except OSError:
            tail = ""
        error = f"{error}; log {os.path.relpath(log_path, out_dir)}; tail:\n{tail}"
    return {"rc": rc, "wall_s": wall, "result": result, "log": os.path.relpath(log_path, out_dir), "error": error}


def base_spec(args) -> Dict[str, Any]:
    return {
        "scale": args.scale, "seed": args.seed, "steps": args.steps, "warmup": args.warmup,
        "burst_block": args.burst_block, "tfdbg_max_steps": args.tfdbg_max_steps,
        "sustained_bytes": int(args.sustained_gib * GiB), "sustained_min_steps": args.sustained_min_steps,
        "sustained_max_steps": args.sustained_max_steps,
        "sustained_block_bytes": int(args.sustained_block_mib * MiB),
        "memory": args.memory, "memory_steps": args.memory_steps, "workdir": args.workdir,
        "engine_options": {}, "reader_model": args.reader_model, "reader_repeats": args.reader_repeats,
    }


def _merge_timing(results: Dict[str, Any], child: Dict[str, Any], models: List[str], configs: List[str],
                  regimes: List[str], group: str) -> None:
    res = child["result"] or {}
    for model in models:
        mres = (res.get("models") or {}).get(model)
        for regime in regimes:
            slot = results["regimes"].setdefault(regime, {}).setdefault(model, {})
            if mres and mres.get("workload"):
                results["workloads"].setdefault(model, {})[group] = mres["workload"]
            rres = (mres or {}).get("regimes", {}).get(regime) if mres else None
            for name in configs:
                if rres and name in (rres.get("configs") or {}):
                    slot[name] = rres["configs"][name]
                else:
                    why = ((rres or {}).get("error") or (mres or {}).get("error") or child["error"]
                           or "no result (the child stopped before this configuration)")
                    slot[name] = {"status": "error", "error": why}
            if rres:
                results["plans"].setdefault(regime, {}).setdefault(model, {})[group] = {
                    k: rres.get(k) for k in ("plan", "order", "wall_s", "warmup_written") if k in rres}
            if mres and "tf2_none_before_enable_ms" in mres:
                results["workloads"].setdefault(model, {})["tf2_none_before_enable_ms"] = \
                    mres["tf2_none_before_enable_ms"]


def orchestrate(args) -> Dict[str, Any]:
    started = time.time()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.workdir, exist_ok=True)
    results: Dict[str, Any] = {
        "meta": {
            "command": "python -m benchmarks.compare " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "quick": args.quick, "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        },
        "configs": {n: dataclasses.asdict(CONFIGS[n]) for n in args.configs},
        "workloads": {}, "regimes": {}, "plans": {}, "memory": {}, "reader": None, "children": [],
        "errors": [],
    }
    log(f"tfdump-fast benchmark: models={args.models} configs={args.configs} regimes={args.regimes} "
        f"scale={args.scale} out={args.out}")
    results["machine"] = machine_info(args.workdir)
    log("measuring sequential write bandwidth with dd ...")
    results["dd"] = measure_dd(args.workdir, args.dd_mib)
    spec0 = base_spec(args)
    v1_configs = [c for c in args.configs if CONFIGS[c].group == "v1"]
    v2_configs = [c for c in args.configs if CONFIGS[c].group == "v2"]
    v2_models = [m for m in args.models if m != "rnn-cfv1"]

    def groups(models):
        # Full runs isolate each workload in its own child; quick runs group
        # them to pay for one TensorFlow import instead of four.
        return [models] if args.quick else [[m] for m in models]

    for kind, configs, models in (("v1", v1_configs, args.models), ("v2", v2_configs, v2_models)):
        if not configs:
            continue
        for group in groups(models):
            tag = f"{kind}-{'-'.join(group)}"
            log(f"[{time.time() - started:6.0f}s] child {tag} ...")
            spec = dict(spec0, models=group, configs=configs, regimes=args.regimes)
            child = run_child(kind, spec, args.out, tag, args.child_timeout)
            results["children"].append({"tag": tag, "rc": child["rc"], "wall_s": child["wall_s"],
                                        "log": child["log"], "error": child["error"]})
            if child["error"]:
                results["errors"].append(f"{tag}: {child['error']}")
                log(f"  child {tag} failed: {child['error'][:300]}")
            _merge_timing(results, child, group, configs, args.regimes, kind)
            if child["result"] and child["result"].get("availability"):
                results["availability"] = child["result"]["availability"]

    if args.memory == "isolated":
        for model in args.models:
            for name in args.configs:
                if CONFIGS[name].group == "v2" and model == "rnn-cfv1":
                    continue
                tag = f"mem-{model}-{name}"
                log(f"[{time.time() - started:6.0f}s] child {tag} ...")
                spec = dict(spec0, models=[model], configs=[name], regimes=["burst"])
                child = run_child("mem", spec, args.out, tag, args.child_timeout)
                r = child["result"] or {"status": "error", "error": child["error"] or "no result"}
                if child["error"] and r.get("status") == "ok":
                    r["warning"] = child["error"]
                results["memory"].setdefault(model, {})[name] = r
    elif args.memory == "inproc":
        for regime in ("burst",):
            for model, figs in results["regimes"].get(regime, {}).items():
                for name, f in figs.items():
                    if f.get("rss_peak_mb_inproc") is not None:
                        results["memory"].setdefault(model, {})[name] = {
                            "status": "ok", "rss_peak_mb": f["rss_peak_mb_inproc"], "method": "inproc"}

    if args.reader:
        log(f"[{time.time() - started:6.0f}s] child reader ...")
        spec = dict(spec0, models=[args.reader_model], configs=[], regimes=[])
        child = run_child("reader", spec, args.out, "reader", args.child_timeout)
        results["reader"] = child["result"] or {"error": child["error"] or "no result"}
        if child["error"]:
            results["reader"]["child_error"] = child["error"]
            results["errors"].append(f"reader: {child['error']}")
        results["children"].append({"tag": "reader", "rc": child["rc"], "wall_s": child["wall_s"],
                                    "log": child["log"], "error": child["error"]})

    derive(results, args)
    results["meta"]["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    results["meta"]["wall_s"] = time.time() - started
    if args.workdir_is_default:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return results


# ============================================================================
# Derived figures: disk-bound limits, target checks


def derive(results: Dict[str, Any], args) -> None:
    bw = (results.get("dd") or {}).get("limit_bytes_per_s")
    checks: List[Dict[str, Any]] = []

    def ok(f):
        return bool(f) and f.get("status") == "ok" and f.get("time_ms")

    for regime, models in results["regimes"].items():
        for model, figs in models.items():
            floor = figs.get("floor")
            none = figs.get("none")
            ref = floor if ok(floor) else (none if ok(none) else None)
            ref_name = "floor" if ok(floor) else "none"
            for name, f in figs.items():
                if not ok(f) or not CONFIGS.get(name) or CONFIGS[name].group != "v1" or ref is None:
                    continue
                f["ratio_vs_floor"] = f["time_ms"]["median"] / ref["time_ms"]["median"]
                f["ratio_vs_floor_ref"] = ref_name
                if regime == "sustained" and bw and f.get("bytes_per_step") is not None:
                    limit_ms = ref["time_ms"]["median"] + f["bytes_per_step"] / bw * 1e3
                    f["disk_bound_limit_ms"] = limit_ms
                    f["disk_bound_limit_ratio_vs_floor"] = limit_ms / ref["time_ms"]["median"]
            unsampled = figs.get("tfdump-unsampled")
            if ok(unsampled) and unsampled.get("ratio") is not None:
                checks.append({"target": f"{model} {regime}: unsampled steps within "
                               f"{TARGETS['unsampled_vs_none']}x of no hook", "value": unsampled["ratio"],
                               "limit": TARGETS["unsampled_vs_none"],
                               "met": unsampled["ratio"] <= TARGETS["unsampled_vs_none"]})
            ours = figs.get("tfdump")
            if not ok(ours):
                continue
            rv = ours.get("ratio_vs_floor")
            if model == "rnn":
                checks.append({"target": f"rnn {regime}: tfdump-fast within {TARGETS['rnn_vs_floor']}x "
                               f"of the {ours.get('ratio_vs_floor_ref')}", "value": rv,
                               "limit": TARGETS["rnn_vs_floor"],
                               "met": rv is not None and rv <= TARGETS["rnn_vs_floor"]})
            if model == "mlp" and regime == "burst":
                checks.append({"target": f"mlp burst: tfdump-fast within {TARGETS['mlp_burst_vs_floor']}x "
                               f"of the {ours.get('ratio_vs_floor_ref')}", "value": rv,
                               "limit": TARGETS["mlp_burst_vs_floor"],
                               "met": rv is not None and rv <= TARGETS["mlp_burst_vs_floor"]})
            if regime == "sustained":
                lim = max(TARGETS["sustained_vs_floor"], ours.get("disk_bound_limit_ratio_vs_floor") or 0)
                checks.append({"target": f"{model} sustained: tfdump-fast at most max(1.6x, disk-bound "
                               f"limit) of the {ours.get('ratio_vs_floor_ref')}", "value": rv, "limit": lim,
                               "met": rv is not None and rv <= lim})
            v2 = figs.get("tfdbg2")
            if ok(v2) and ours.get("ratio") and v2.get("ratio"):
                checks.append({"target": f"{model} {regime}: tfdump-fast ratio below tfdbg v2's",
                               "value": ours["ratio"], "limit": v2["ratio"], "met": ours["ratio"] < v2["ratio"]})
    # The rnn workload is meant to reproduce the reference tfdbg dump of one
    # step (17,276 files, 1.34 GB); record how close this run's graph is.
    rnn_tfdbg = ((results["regimes"].get("burst") or results["regimes"].get("sustained") or {})
                 .get("rnn", {}).get("tfdbg") or {})
    if rnn_tfdbg.get("status") == "ok" and args.scale == "full":
        files, nbytes = rnn_tfdbg.get("files_per_step"), rnn_tfdbg.get("bytes_per_step")
        results["rnn_reference_check"] = {
            "reference_files": RNN_REFERENCE["files"], "reference_bytes": RNN_REFERENCE["bytes"],
            "files_per_step": files, "bytes_per_step": nbytes,
            "files_deviation": files / RNN_REFERENCE["files"] - 1 if files else None,
            "bytes_deviation": nbytes / RNN_REFERENCE["bytes"] - 1 if nbytes else None,
        }
    rd = results.get("reader") or {}
    ours, theirs = rd.get("tfdump") or {}, rd.get("tfdbg") or {}
    speed = {}
    for op in ("open", "list", "find", "load_all"):
        a, b = (ours.get(f"{op}_ms") or {}), (theirs.get(f"{op}_ms") or {})
        if a.get("median") and b.get("median"):
            speed[op] = b["median"] / a["median"]
    if speed:
        rd["speedup"] = speed
        for op in ("find", "load_all"):
            if op in speed:
                checks.append({"target": f"reader {op}: {TARGETS['reader_speedup_low']:.0f}-"
                               f"{TARGETS['reader_speedup_high']:.0f}x faster than DebugDumpDir",
                               "value": speed[op], "limit": TARGETS["reader_speedup_low"],
                               "met": speed[op] >= TARGETS["reader_speedup_low"]})
    results["targets"] = checks


# ============================================================================
# Output: markdown, PNG


def _fmt_ms(x: Optional[float]) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _fmt_bytes(x: Optional[float]) -> str:
    if x is None:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.0f} B"


def _peak_mb(r: Optional[Dict[str, Any]]) -> Optional[float]:
    if not r or r.get("status") != "ok":
        return None
    return r.get("ru_maxrss_mb") or r.get("rss_peak_mb")


def _drain(f: Dict[str, Any]) -> str:
    d = (f.get("drain_ms") or {}).get("median")
    return f"{_fmt_ms(d)} ms" if d is not None else "-"


def _cell_time(f: Optional[Dict[str, Any]]) -> str:
    if not f:
        return "-"
    st = f.get("status")
    if st == "skipped":
        return "skipped¹"
    if st != "ok":
        return "error²"
    t = f.get("time_ms") or {}
    ratio = f.get("ratio")
    r = f"**{ratio:.2f}x** " if ratio is not None else ""
    return f"{r}{_fmt_ms(t.get('median'))} ms (IQR {_fmt_ms(t.get('iqr'))})"


def _models_in(results) -> List[str]:
    seen: List[str] = []
    for models in results["regimes"].values():
        for m in models:
            if m not in seen:
                seen.append(m)
    return seen


def render_markdown(results: Dict[str, Any]) -> str:
    md: List[str] = []
    meta = results["meta"]
    models = _models_in(results)
    configs = list(results["configs"])
    md.append("# tfdump-fast benchmark results\n")
    md.append(f"Run {meta['started']} → {meta.get('finished', '?')} ({meta.get('wall_s', 0):.0f} s), "
              f"`{meta['command']}`\n")
    if meta["quick"]:
        md.append("> **Quick mode**: tiny workloads and a few steps; a smoke test of the harness. "
                  "These numbers mean nothing.\n")
    m = results.get("machine") or {}
    md.append("## Machine\n")
    md.append(f"- CPU: {m.get('Model name', '?')}, {m.get('CPU(s)', m.get('cpu_count'))} CPUs"
              f"{', hypervisor ' + m['Hypervisor vendor'] if m.get('Hypervisor vendor') else ''}")
    md.append(f"- Memory: {m.get('MemTotal', '?')} (available at start {m.get('MemAvailable', '?')}); "
              f"vm.dirty_ratio {m.get('vm.dirty_ratio', '?')}, "
              f"vm.dirty_background_ratio {m.get('vm.dirty_background_ratio', '?')}")
    md.append(f"- Dump disk: `{(m.get('mount') or '?').strip()}`")
    md.append(f"- Software: Python {m.get('python')}, " + ", ".join(
        f"{k} {v}" for k, v in (m.get("versions") or {}).items()) + f"; git {m.get('git_commit')}"
              f"{' (dirty)' if m.get('git_dirty') else ''}")
    dd = results.get("dd") or {}
    parts = []
    for k in ("direct", "fdatasync"):
        d = dd.get(k) or {}
        parts.append(f"{k}: {d['bytes_per_s'] / 1e6:.0f} MB/s" if d.get("bytes_per_s") else
                     f"{k}: {d.get('error', 'n/a')}")
    md.append(f"- Sequential write (dd, {dd.get('mib')} MiB, bs=4M): " + "; ".join(parts) +
              f". The disk-bound limit uses {dd.get('limit_source')}.\n")

    md.append("## Workloads\n")
    md.append("| model | description | tfdbg files/step | tfdbg bytes/step | baseline step (v1 / tf.function) |")
    md.append("|---|---|---:|---:|---:|")
    burst = results["regimes"].get("burst") or results["regimes"].get("sustained") or {}
    for model in models:
        w = results["workloads"].get(model, {})
        desc = (w.get("v1") or w.get("v2") or {}).get("description", "")
        figs = burst.get(model, {})
        tb = figs.get("tfdbg") or {}
        base = (figs.get("none") or {}).get("step_ms") or {}
        b2 = (figs.get("tf2-none") or {}).get("step_ms") or {}
        md.append(f"| {model} | {desc} | {_fmt_ms(tb.get('files_per_step'))} | "
                  f"{_fmt_bytes(tb.get('bytes_per_step'))} | {_fmt_ms(base.get('median'))} ms / "
                  f"{_fmt_ms(b2.get('median'))} ms |")
    md.append("")
    chk = results.get("rnn_reference_check")
    if chk:
        md.append(f"rnn against the reference tfdbg dump of one step ({chk['reference_files']} files, "
                  f"{_fmt_bytes(chk['reference_bytes'])}): {chk['files_per_step']:.0f} files "
                  f"({chk['files_deviation']:+.1%}), {_fmt_bytes(chk['bytes_per_step'])} "
                  f"({chk['bytes_deviation']:+.1%}).\n")

    for regime, rmodels in results["regimes"].items():
        md.append(f"## {regime.capitalize()} regime\n")
        if regime == "burst":
            md.append("Median step time per configuration (IQR), and its ratio to the baseline of the same "
                      "run (v1 configurations: no hook; tfdbg v2: the undebugged tf.function). Our writer "
                      "drains between blocks, untimed.\n")
        else:
            md.append("Effective step time (IQR across blocks): each block's steps plus the writer flush "
                      "and `os.sync()` that put its data on disk, divided by its steps; ratio to the "
                      "baseline of the same run.\n")
        md.append("| configuration | " + " | ".join(models) + " |")
        md.append("|---|" + "---:|" * len(models))
        for name in configs:
            md.append(f"| {results['configs'][name]['label']} | " + " | ".join(
                _cell_time(rmodels.get(model, {}).get(name)) for model in models) + " |")
        md.append("")
        md.append("Bytes and files on disk per step:\n")
        md.append("| configuration | " + " | ".join(models) + " |")
        md.append("|---|" + "---:|" * len(models))
        for name in configs:
            if not CONFIGS[name].writes:
                continue
            cells = []
            for model in models:
                f = rmodels.get(model, {}).get(name) or {}
                if f.get("status") != "ok":
                    cells.append("-")
                    continue
                if f.get("files_in_dump") is not None:  # a few append-only files for the whole run
                    cells.append(f"{_fmt_bytes(f.get('bytes_per_step'))}/step, {f['files_in_dump']} files in all")
                else:
                    cells.append(f"{_fmt_bytes(f.get('bytes_per_step'))}/step, "
                                 f"{f.get('files_per_step') or 0:.0f} files/step")
            md.append(f"| {results['configs'][name]['label']} | " + " | ".join(cells) + " |")
        md.append("")
        ours_rows = [n for n in configs if CONFIGS[n].ours]
        if ours_rows:
            md.append("tfdump-fast internals (vs floor = ratio to the capture floor, or to no hook where the "
                      "floor is missing; queue high-water; drops; frames per codec; drain after a block):\n")
            md.append("| configuration | model | vs floor | disk-bound limit | queue high-water | drops | "
                      "codec frames | drain (median) |")
            md.append("|---|---|---:|---:|---:|---:|---|---:|")
            for name in ours_rows:
                for model in models:
                    f = rmodels.get(model, {}).get(name) or {}
                    if f.get("status") != "ok":
                        continue
                    lim = f.get("disk_bound_limit_ratio_vs_floor")
                    md.append(
                        f"| {results['configs'][name]['label']} | {model} | "
                        f"{(f.get('ratio_vs_floor') or 0):.2f}x ({f.get('ratio_vs_floor_ref', '-')}) | "
                        f"{f'{lim:.2f}x' if lim else '-'} | {_fmt_bytes(f.get('queue_high_water'))} | "
                        f"{f.get('tensors_dropped', '-')} | {f.get('frames_by_codec') or '-'} | "
                        f"{_drain(f)} |")
            md.append("")

    if results.get("memory"):
        md.append("## Peak resident memory\n")
        method = "one child process per configuration (`ru_maxrss`)" if results["meta"]["args"].get(
            "memory") == "isolated" else "sampled inside the shared timing process (indicative only)"
        md.append(f"Peak RSS in MB, {method}; in brackets the difference to the baseline (no hook, or the "
                  "undebugged tf.function for tfdbg v2).\n")
        md.append("| configuration | " + " | ".join(models) + " |")
        md.append("|---|" + "---:|" * len(models))
        for name in configs:
            cells = []
            for model in models:
                r = results["memory"].get(model, {}).get(name)
                if not r:
                    cells.append("-")
                elif r.get("status") != "ok":
                    cells.append(r.get("status", "error"))
                else:
                    v = _peak_mb(r)
                    base = _peak_mb(results["memory"].get(model, {}).get(CONFIGS[name].baseline))
                    delta = f" ({v - base:+.0f})" if v and base and name != CONFIGS[name].baseline else ""
                    cells.append(f"{v:.0f}{delta}" if v else "-")
            md.append(f"| {results['configs'][name]['label']} | " + " | ".join(cells) + " |")
        md.append("")

    rd = results.get("reader")
    if rd:
        md.append(f"## Reader ({rd.get('model', '?')} dump, one step)\n")
        ours, theirs = rd.get("tfdump") or {}, rd.get("tfdbg") or {}
        md.append(f"tfdbg dump: {theirs.get('files', '-')} files, {_fmt_bytes(theirs.get('bytes'))}; "
                  f"tfdump-fast dump: {ours.get('files', '-')} files, {_fmt_bytes(ours.get('bytes'))}. "
                  f"Median of {rd.get('repeats')} repeats, warm page cache.\n")
        md.append("| operation | DebugDumpDir (ms) | DumpReader (ms) | speed-up |")
        md.append("|---|---:|---:|---:|")
        sp = rd.get("speedup") or {}
        for op in ("open", "list", "find", "load_all"):
            a = (theirs.get(f"{op}_ms") or {}).get("median")
            b = (ours.get(f"{op}_ms") or {}).get("median")
            md.append(f"| {op.replace('_', '-')} | {_fmt_ms(a)} | {_fmt_ms(b)} | "
                      f"{f'{sp[op]:.1f}x' if op in sp else '-'} |")
        if ours.get("status") in ("skipped", "error"):
            md.append(f"\ntfdump-fast reader: {ours.get('status')}: {ours.get('reason') or ours.get('error')}")
        if theirs.get("error"):
            md.append(f"\nDebugDumpDir: error: {theirs['error']}")
        conv = rd.get("convert") or {}
        if conv.get("status") == "ok":
            md.append(f"\nConvert to tfdbg layout: {conv['seconds']:.2f} s, {conv['files']} files, "
                      f"{_fmt_bytes(conv['bytes'])} ({_fmt_bytes(conv.get('bytes_per_s'))}/s, "
                      f"{conv.get('files_per_s') or 0:.0f} files/s); DebugDumpDir reads "
                      f"{conv.get('debugdumpdir_tensors')} tensors from it.")
        elif conv:
            md.append(f"\nConvert: {conv.get('status')}: {conv.get('reason') or conv.get('error')}")
        md.append("")

    if results.get("targets"):
        md.append("## Targets (reported, not asserted)\n")
        md.append("| target | measured | limit | met |")
        md.append("|---|---:|---:|:---:|")
        for c in results["targets"]:
            v = c.get("value")
            md.append(f"| {c['target']} | {f'{v:.2f}' if v is not None else '-'} | {c['limit']:.2f} | "
                      f"{'yes' if c['met'] else 'no'} |")
        md.append("")

    notes = []
    for regime, rmodels in results["regimes"].items():
        for model, figs in rmodels.items():
            for name, f in figs.items():
                if f.get("status") == "skipped":
                    notes.append(f"¹ {regime}/{model}/{name}: skipped: {f.get('reason')}")
                elif f.get("status") != "ok":
                    notes.append(f"² {regime}/{model}/{name}: error: {(f.get('error') or '')[:400]}")
    if notes:
        md.append("## Skipped and failed configurations\n")
        # The same reason repeats for every model; show each once.
        seen = set()
        for n in notes:
            key = n.split(": ", 1)[1] if ": " in n else n
            if key in seen:
                continue
            seen.add(key)
            md.append(f"- {n}")
        md.append("")
    md.append("## Reproduce\n")
    md.append(f"```\n{meta['command']}\n```\n")
    return "\n".join(md)


def render_plot(results: Dict[str, Any], path: str) -> Optional[str]:
    """Grouped bars of the step-time ratio, one panel per regime. Returns an error or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # noqa: BLE001
        return f"matplotlib unavailable: {short_error(exc)}"
    regimes = [r for r in REGIMES if r in results["regimes"]]
    models = _models_in(results)
    configs = [c for c in results["configs"] if c not in ("none", "tf2-none")]
    if not regimes or not models or not configs:
        return "nothing to plot"
    fig, axes = plt.subplots(1, len(regimes), figsize=(6.5 * len(regimes), 4.8), squeeze=False)
    width = 0.8 / len(configs)
    cmap = plt.get_cmap("tab10")
    for ax, regime in zip(axes[0], regimes):
        for ci, name in enumerate(configs):
            xs, ys, lo, hi = [], [], [], []
            for mi, model in enumerate(models):
                f = results["regimes"][regime].get(model, {}).get(name) or {}
                if f.get("ratio") is None:
                    continue
                xs.append(mi - 0.4 + width * (ci + 0.5))
                ys.append(f["ratio"])
                lo.append(max(0.0, f["ratio"] - f.get("ratio_q1", f["ratio"])))
                hi.append(max(0.0, f.get("ratio_q3", f["ratio"]) - f["ratio"]))
            if xs:
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=CONFIGS[name].label, color=cmap(ci % 10))
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models)
        ax.set_ylabel("step time / baseline (log)")
        ax.set_title(f"{regime}" + (" (quick mode: meaningless)" if results["meta"]["quick"] else ""))
        ax.grid(axis="y", which="both", alpha=0.3)
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_outputs(results: Dict[str, Any], out: str) -> Dict[str, str]:
    paths = {"json": os.path.join(out, "results.json"), "markdown": os.path.join(out, "results.md"),
             "png": os.path.join(out, "step_time_ratio.png")}
    err = render_plot(results, paths["png"])
    if err:
        results["errors"].append(f"plot: {err}")
        results["meta"]["plot_error"] = err
    with open(paths["markdown"], "w") as f:
        f.write(render_markdown(results))
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1, default=str)
    return paths


# ============================================================================
# Command line


QUICK = dict(scale="tiny", steps=3, warmup=1, burst_block=1, tfdbg_max_steps=2, sustained_gib=4 / 1024,
             sustained_min_steps=2, sustained_max_steps=6, sustained_block_mib=2, dd_mib=32, memory="inproc",
             memory_steps=2, reader_repeats=1, child_timeout=300)
FULL = dict(scale="full", steps=30, warmup=2, burst_block=2, tfdbg_max_steps=10, sustained_gib=4.0,
            sustained_min_steps=5, sustained_max_steps=400, sustained_block_mib=512, dd_mib=2048,
            memory="isolated", memory_steps=5, reader_repeats=3, child_timeout=3600)


def parse_args(argv=None):
    from benchmarks.workloads import ALL_MODELS, DEFAULT_MODELS

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description="Compare tfdump-fast with no hook, the capture floor, and tfdbg v1/v2 on four "
                    "TensorFlow workloads; write results.json, results.md and step_time_ratio.png.",
        epilog="Configurations: " + "; ".join(f"{c.name}: {c.description}" for c in CONFIGS.values())
               + ". Defaults in brackets are for a full run; --quick changes them (see BENCHMARKS.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke test of the harness: tiny workloads, a few steps, < 2 minutes; numbers "
                        "are meaningless")
    p.add_argument("--out", default=os.path.join(REPO, "bench-out"),
                   help="output directory [bench-out/]")
    p.add_argument("--workdir", default=None,
                   help="where dumps are written during the run (on the disk under test) [OUT/work]; "
                        "emptied afterwards")
    p.add_argument("--regime", choices=("burst", "sustained", "both"), default="both",
                   help="burst: per-step latency, writer drained between blocks; sustained: several GB "
                        "written, flush+sync timed [both]")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(ALL_MODELS),
                   metavar="MODEL", help=f"workloads, from {', '.join(ALL_MODELS)} [{' '.join(DEFAULT_MODELS)}]")
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), choices=list(CONFIGS),
                   metavar="CONFIG", help=f"configurations, from {', '.join(CONFIGS)}; the baselines "
                   "(none, tf2-none) are added when needed [all]")
    g = p.add_argument_group("sizes (defaults: full run / --quick)")
    g.add_argument("--scale", choices=("full", "tiny"), help="workload dimensions [full / tiny]")
    g.add_argument("--steps", type=int, help="measured burst steps per configuration [30 / 3]")
    g.add_argument("--warmup", type=int, help="untimed warm-up steps per configuration [2 / 1]")
    g.add_argument("--burst-block", type=int, help="steps per round-robin block in burst [2 / 1]")
    g.add_argument("--tfdbg-max-steps", type=int,
                   help="cap on burst steps of tfdbg configurations (one tfdbg rnn step is 1.3 GB in "
                        "17k files) [10 / 2]")
    g.add_argument("--sustained-gib", type=float,
                   help="raw tensor GiB each configuration processes in sustained (steps = this / raw "
                        "bytes per step) [4 / 0.004]")
    g.add_argument("--sustained-min-steps", type=int, help="[5 / 2]")
    g.add_argument("--sustained-max-steps", type=int, help="[400 / 6]")
    g.add_argument("--sustained-block-mib", type=float,
                   help="raw MiB per sustained block, flushed and synced at its end [512 / 2]")
    g.add_argument("--dd-mib", type=int, help="MiB dd writes to measure the disk [2048 / 32]")
    g.add_argument("--memory", choices=("isolated", "inproc", "off"),
                   help="peak RSS: one child per configuration, a sampler in the timing child, or "
                        "none [isolated / inproc]")
    g.add_argument("--memory-steps", type=int, help="steps of each memory child [5 / 2]")
    g.add_argument("--reader-repeats", type=int, help="repeats of each reader operation [3 / 1]")
    g.add_argument("--child-timeout", type=float, help="seconds before a child is killed [3600 / 300]")
    p.add_argument("--no-reader", dest="reader", action="store_false", help="skip the reader figures")
    p.add_argument("--reader-model", default="rnn", choices=list(ALL_MODELS),
                   help="workload whose one-step dump the reader figures use [rnn]")
    p.add_argument("--seed", type=int, default=0, help="seed of data and initial weights [0]")
    # Internal: how the parent starts its children.
    p.add_argument("--_child", choices=("v1", "v2", "mem", "reader"), help=argparse.SUPPRESS)
    p.add_argument("--_spec", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        return args
    defaults = QUICK if args.quick else FULL
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    args.regimes = list(REGIMES) if args.regime == "both" else [args.regime]
    args.out = os.path.abspath(args.out)
    args.workdir_is_default = args.workdir is None
    args.workdir = os.path.abspath(args.workdir or os.path.join(args.out, "work"))
    configs = list(dict.fromkeys(args.configs))
    if any(CONFIGS[c].group == "v1" for c in configs) and "none" not in configs:
        configs.insert(0, "none")
    if any(CONFIGS[c].group == "v2" and c != "tf2-none" for c in configs) and "tf2-none" not in configs:
        configs.insert(configs.index("tfdbg2"), "tf2-none")
    args.configs = [c for c in CONFIGS if c in configs]  # canonical order
    if args.steps < 1 or args.warmup < 0 or args.burst_block < 1:
        p.error("--steps and --burst-block must be >= 1, --warmup >= 0")
    return args


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    if args._child:
        with open(args._spec) as f:
            spec = json.load(f)
        {"v1": child_v1, "v2": child_v2, "mem": child_mem, "reader": child_reader}[args._child](
            spec, args._result)
        return 0
    results = orchestrate(args)
    paths = write_outputs(results, args.out)
    log(f"done in {results['meta']['wall_s']:.0f} s: " + ", ".join(f"{k} {v}" for k, v in paths.items()))
    bad = [c for c in results["children"] if c["error"]]
    if bad:
        log(f"{len(bad)} child process(es) reported errors; see results.json 'errors' and {args.out}/logs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
