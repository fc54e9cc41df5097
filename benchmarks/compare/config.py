"""The configurations compared, the project's targets, the run sizes, and the
spec a child process runs."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

REGIMES = ("burst", "sustained")
MiB = 1 << 20
GiB = 1 << 30


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

# Run sizes: the defaults of the size options, for --quick and for a full run.
QUICK = dict(scale="tiny", steps=3, warmup=1, burst_block=1, tfdbg_max_steps=2, sustained_gib=4 / 1024,
             sustained_min_steps=2, sustained_max_steps=6, sustained_block_mib=2, dd_mib=32, memory="inproc",
             memory_steps=2, reader_repeats=1, child_timeout=300)
FULL = dict(scale="full", steps=30, warmup=2, burst_block=2, tfdbg_max_steps=10, sustained_gib=4.0,
            sustained_min_steps=5, sustained_max_steps=400, sustained_block_mib=512, dd_mib=2048,
            memory="isolated", memory_steps=5, reader_repeats=3, child_timeout=3600)


def base_spec(args) -> Dict[str, Any]:
    """The spec every child gets (the parent adds models, configs and regimes)."""
    return {
        "scale": args.scale, "seed": args.seed, "steps": args.steps, "warmup": args.warmup,
        "burst_block": args.burst_block, "tfdbg_max_steps": args.tfdbg_max_steps,
        "sustained_bytes": int(args.sustained_gib * GiB), "sustained_min_steps": args.sustained_min_steps,
        "sustained_max_steps": args.sustained_max_steps,
        "sustained_block_bytes": int(args.sustained_block_mib * MiB),
        "memory": args.memory, "memory_steps": args.memory_steps, "workdir": args.workdir,
        "engine_options": {}, "reader_model": args.reader_model, "reader_repeats": args.reader_repeats,
    }


def quota(name: str, spec: Dict[str, Any], regime: str, sustained_steps: int) -> int:
    """Measured steps of configuration `name` in `regime`."""
    if regime == "burst":
        q = spec["steps"]
        if name in TFDBG_CONFIGS:
            q = min(q, spec["tfdbg_max_steps"])
        return max(1, q)
    return max(1, sustained_steps)


def sustained_plan(spec: Dict[str, Any], raw_bytes_per_step: Optional[float]) -> Tuple[int, int]:
    """(steps per configuration, steps per block) for the sustained regime."""
    if not raw_bytes_per_step:
        raw_bytes_per_step = 64 * MiB
    steps = math.ceil(spec["sustained_bytes"] / raw_bytes_per_step)
    steps = max(spec["sustained_min_steps"], min(spec["sustained_max_steps"], steps))
    block = max(1, min(steps, math.ceil(spec["sustained_block_bytes"] / raw_bytes_per_step)))
    return steps, block
