"""The timing children: every configuration of a workload in one process,
taking turns in round-robin blocks (tf.compat.v1 configurations on the graph,
tfdbg v2 and its baseline on the tf.function twin)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import traceback
from typing import Any, Dict, List

from benchmarks.compare.children import write_result
from benchmarks.compare.config import CONFIGS, MiB, TFDBG_CONFIGS, quota, sustained_plan
from benchmarks.compare.env import ensure_tfdump_importable, log, short_error
from benchmarks.compare.measure import RssSampler, du, quantiles, scaled
from benchmarks.compare.runners import FnUnit, Runner, TfdumpRunner, make_runner, tfdump_availability
from benchmarks.compare.schedule import add_ratios, interleave, summarize


def child_v1(spec: Dict[str, Any], result_path: str) -> None:
    """The tf.compat.v1 configurations of some workloads, interleaved, per model and regime."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ensure_tfdump_importable()
    from benchmarks import workloads as W

    W.graph_mode_setup()
    configs = [c for c in spec["configs"] if CONFIGS[c].group == "v1"]
    need_ours = any(CONFIGS[c].ours for c in configs)
    avail = tfdump_availability() if need_ours else {}
    result: Dict[str, Any] = {"models": {}, "availability": avail}

    for model in spec["models"]:
        mres: Dict[str, Any] = {"regimes": {}}
        result["models"][model] = mres
        try:
            wl = W.build_graph(model, spec["scale"], spec["seed"])
            mres["workload"] = wl.info()
        except Exception as exc:  # noqa: BLE001
            mres["error"] = short_error(exc)
            mres["traceback"] = traceback.format_exc()
            write_result(result, result_path)
            continue
        for regime in spec["regimes"]:
            log(f"[v1] {model} {regime}")
            try:
                mres["regimes"][regime] = _run_v1_regime(spec, wl, configs, avail, regime)
            except Exception as exc:  # noqa: BLE001
                mres["regimes"][regime] = {"error": short_error(exc), "traceback": traceback.format_exc()}
            write_result(result, result_path)
    write_result(result, result_path)


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

    warm = _warm_up(spec, runners, on_error)
    plan = _v1_plan(spec, regime, runners, warm)
    quotas, blocks = plan["quotas"], plan["blocks"]
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


def _warm_up(spec, runners: List[Runner], on_error) -> Dict[str, Any]:
    """Untimed warm-up steps; a runner that fails is dropped from `runners`.

    The first steps of a configuration build its executors (tfdbg rebuilds
    them every step: its URLs change with the run dir).
    """
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
    return warm


def _v1_plan(spec, regime, runners: List[Runner], warm: Dict[str, Any]) -> Dict[str, Any]:
    """Steps and block sizes of every runner in `regime`, sized from the warm-up."""
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
    if regime == "sustained":
        steps, block = sustained_plan(spec, ours_est or tfdbg_est)
        tfdbg_steps, tfdbg_block = sustained_plan(spec, tfdbg_est or ours_est)
    else:
        steps, block = spec["steps"], spec["burst_block"]
        tfdbg_steps, tfdbg_block = steps, block
    plan.update({"block": block, "steps": steps, "tfdbg_block": tfdbg_block, "tfdbg_steps": tfdbg_steps})
    plan["quotas"] = {u.config.name: quota(u.config.name, spec, regime,
                                           tfdbg_steps if u.config.name in TFDBG_CONFIGS else steps)
                      for u in runners}
    plan["blocks"] = {u.config.name: tfdbg_block if u.config.name in TFDBG_CONFIGS else block for u in runners}
    return plan


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



def child_v2(spec: Dict[str, Any], result_path: str) -> None:
    """tfdbg v2 and its undebugged baseline on the tf.function twins, per model and regime."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks import workloads as W

    result: Dict[str, Any] = {"models": {}}
    for model in spec["models"]:
        mres: Dict[str, Any] = {"regimes": {}}
        result["models"][model] = mres
        try:
            fw = W.build_function(model, spec["scale"], spec["seed"])
            mres["workload"] = fw.info()
            plain = FnUnit("tf2-none", fw.make_step())
            for _ in range(spec["warmup"]):
                plain.step()
            # Baseline before dumping is enabled, to show what the enabled
            # callback costs the undebugged function (eager op callbacks).
            pre = [plain.step() for _ in range(max(3, spec["warmup"]))]
            mres["tf2_none_before_enable_ms"] = scaled(quantiles(pre), 1e3)
        except Exception as exc:  # noqa: BLE001
            mres["error"] = short_error(exc)
            mres["traceback"] = traceback.format_exc()
            write_result(result, result_path)
            continue
        for regime in spec["regimes"]:
            log(f"[v2] {model} {regime}")
            mres["regimes"][regime] = _run_v2_regime(spec, model, fw, plain, regime)
            write_result(result, result_path)
    write_result(result, result_path)


def _run_v2_regime(spec, model, fw, plain: FnUnit, regime) -> Dict[str, Any]:
    import tensorflow as tf

    sustained = regime == "sustained"
    figs: Dict[str, Any] = {}
    root = os.path.join(spec["workdir"], f"tfdbg2-{model}-{regime}")
    shutil.rmtree(root, ignore_errors=True)
    units = [plain]
    enabled = False
    try:
        if "tfdbg2" in spec["configs"]:
            try:
                writer = tf.debugging.experimental.enable_dump_debug_info(
                    root, tensor_debug_mode="FULL_TENSOR", circular_buffer_size=-1)
                enabled = True
                # Traced after enabling, so it is instrumented.
                dbg = FnUnit("tfdbg2", fw.make_step(), writer, root)
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
            steps, block = sustained_plan(spec, raw_est)
        else:
            steps, block = spec["steps"], spec["burst_block"]
        quotas = {u.config.name: quota(u.config.name, spec, regime, steps) for u in units}

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
                    u.flush()
                    figs[u.config.name]["files_in_dump"], figs[u.config.name]["bytes_in_dump"] = du(u.root)
                if sampler is not None and u.config.name in sampler.peaks:
                    figs[u.config.name]["rss_peak_mb_inproc"] = sampler.peaks[u.config.name] / MiB
        add_ratios(figs)
        return {"configs": figs, "plan": {
            "raw_bytes_per_step_estimate": raw_est, "steps": steps, "block": block, "quotas": quotas}}
    except Exception as exc:  # noqa: BLE001
        return {"error": short_error(exc), "traceback": traceback.format_exc(), "configs": figs}
    finally:
        if enabled:
            with contextlib.suppress(Exception):
                tf.debugging.experimental.disable_dump_debug_info()
        shutil.rmtree(root, ignore_errors=True)
