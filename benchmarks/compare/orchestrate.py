"""The parent: runs the children in turn (timing, memory, reader) and merges
their figures into one results dict."""

from __future__ import annotations

import dataclasses
import datetime
import os
import shlex
import shutil
import sys
import time
from typing import Any, Dict, List

from benchmarks.compare.children import run_child
from benchmarks.compare.config import CONFIGS, base_spec
from benchmarks.compare.derive import derive
from benchmarks.compare.env import log
from benchmarks.compare.machine import machine_info, measure_dd


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
    """Runs the whole comparison `args` asks for; returns the results dict (results.json)."""
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
    _run_timing(results, args, spec0, started)
    if args.memory == "isolated":
        _run_memory(results, args, spec0, started)
    elif args.memory == "inproc":
        _collect_inproc_memory(results)
    if args.reader:
        _run_reader(results, args, spec0, started)
    derive(results, args)
    results["meta"]["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    results["meta"]["wall_s"] = time.time() - started
    if args.workdir_is_default:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return results


def _child_record(tag: str, child: Dict[str, Any]) -> Dict[str, Any]:
    return {"tag": tag, "rc": child["rc"], "wall_s": child["wall_s"], "log": child["log"], "error": child["error"]}


def _run_timing(results: Dict[str, Any], args, spec0: Dict[str, Any], started: float) -> None:
    """The timing children: v1 configurations on every model, tfdbg v2 on the tf.function twins."""
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
            results["children"].append(_child_record(tag, child))
            if child["error"]:
                results["errors"].append(f"{tag}: {child['error']}")
                log(f"  child {tag} failed: {child['error'][:300]}")
            _merge_timing(results, child, group, configs, args.regimes, kind)
            if child["result"] and child["result"].get("availability"):
                results["availability"] = child["result"]["availability"]


def _run_memory(results: Dict[str, Any], args, spec0: Dict[str, Any], started: float) -> None:
    """One memory child per (model, configuration)."""
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


def _collect_inproc_memory(results: Dict[str, Any]) -> None:
    """The RSS peaks the timing children sampled in burst."""
    for model, figs in results["regimes"].get("burst", {}).items():
        for name, f in figs.items():
            if f.get("rss_peak_mb_inproc") is not None:
                results["memory"].setdefault(model, {})[name] = {
                    "status": "ok", "rss_peak_mb": f["rss_peak_mb_inproc"], "method": "inproc"}


def _run_reader(results: Dict[str, Any], args, spec0: Dict[str, Any], started: float) -> None:
    log(f"[{time.time() - started:6.0f}s] child reader ...")
    spec = dict(spec0, models=[args.reader_model], configs=[], regimes=[])
    child = run_child("reader", spec, args.out, "reader", args.child_timeout)
    results["reader"] = child["result"] or {"error": child["error"] or "no result"}
    if child["error"]:
        results["reader"]["child_error"] = child["error"]
        results["errors"].append(f"reader: {child['error']}")
    results["children"].append(_child_record("reader", child))
