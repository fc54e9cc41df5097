"""The memory child: peak resident memory of one configuration alone."""

from __future__ import annotations

import os
import shutil
import traceback
from typing import Any, Dict

from benchmarks.compare.children import write_result
from benchmarks.compare.config import CONFIGS, MiB, TFDBG_CONFIGS
from benchmarks.compare.env import ensure_tfdump_importable, short_error
from benchmarks.compare.measure import RssSampler, rss_bytes, ru_maxrss_bytes
from benchmarks.compare.runners import FnUnit, Runner, make_runner, tfdump_availability


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
            unit = FnUnit(name, fw.make_step(), writer, root if writer else None)
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
    write_result(out, result_path)
