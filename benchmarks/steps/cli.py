"""``python -m benchmarks.steps``: the options, the run, the output files."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

from benchmarks.compare.env import REPO, child_env, log
from benchmarks.compare.machine import machine_info, measure_dd
from benchmarks.steps import report
from benchmarks.steps.child import CONFIGS, DEFAULT_CONFIGS
from benchmarks.steps.models import WORKLOADS
from benchmarks.steps.summary import summarize

#: Steps per measurement of each regime and repetitions, per workload, sized
#: so that a full default run (both loads) stays under 20 minutes on a
#: 2-core machine. Real models take 0.1-1 s a step and write 100+ MB a step
#: under the hook, so they run the short regime only, with fewer steps.
PLAN: Dict[str, Dict[str, Any]] = {
    "rnn": {"regimes": {"short": 30, "long": 200}, "reps": 3},
    "mlp": {"regimes": {"short": 20, "long": 50}, "reps": 3},
    "lstm": {"regimes": {"short": 20, "long": 60}, "reps": 3},
    "mobilenetv2": {"regimes": {"short": 8}, "reps": 3},
    "resnet50": {"regimes": {"short": 4}, "reps": 3},
}
QUICK_PLAN = {"rnn": {"regimes": {"short": 3, "long": 8}, "reps": 1}}
#: A rough mean ms/step over the configurations of each workload on the
#: reference machine (2 cores, shared), for the ETA and the time shares.
ETA_MS = {"rnn": 35, "mlp": 180, "lstm": 150, "mobilenetv2": 600, "resnet50": 1800}
#: Seconds a child needs besides its measurements (TF import, graph, sessions, warm-up).
CHILD_OVERHEAD_S = {"rnn": 30, "mlp": 30, "lstm": 30, "mobilenetv2": 60, "resnet50": 90}
#: Weight of a workload's time share beyond its cost: rnn is the headline
#: (issue #15's tightest target), so it gets room for more repetitions.
PRIORITY = {"rnn": 2.0}
#: The loaded regime's share of a workload's time (its steps are slower).
LOADED_SHARE = 0.6
LOADS = ("quiet", "loaded")
CHILD_TIMEOUT_S = 1800

DESCRIPTION = """\
Per-step cost of tfdump-fast's DumpingDebugHook against a floor that shares no
code with it, steps back to back, on a quiet and on a loaded machine.

Configurations (--configs):
  none                 no debugging at all
  floor                TensorFlow's own watches (debug_utils.watch_graph: the
                       hook's node set and debug op, checked equal) to a no-op
                       memcbk:// callback in a few lines of C++
                       (benchmarks/floor/noop_callback.cc, compiled once with
                       g++ against TF and cached in ~/.cache/tfdump_fast_bench)
  tfdump               DumpingDebugHook, default options
  tfdump-nodurability  DumpingDebugHook(durability_s=None): the cost of the
                       durability promise is the difference to tfdump
  tfdump-summary       DumpingDebugHook, debug_ops=["DebugNumericSummary"]: summaries
                       computed off the step by the bridge (not run by default)
  tfdump-health        DumpingDebugHook, debug_ops=["FULL_HEALTH"] (not run by default)
  flight               DumpingDebugHook(keep_last=4): the flight recorder, no
                       trigger (nothing but run metadata is written)
  flight-noscan        the same with persist_on=("error",): no inf/nan check
                       (the check's own cost is the difference to flight)
  flight-trigger       the same as flight, with hook.persist() every 10 steps (writes the
                       last 4 runs each time; the release path of an inf/nan)
  tfdbg                tf_debug.DumpingDebugHook (slow; not run by default)
  tfdbg-summary        tf_debug.DumpingDebugHook, debug_ops=["DebugNumericSummary"] on
                       numeric and bool dtypes only (its kernels' dtypes), tolerating
                       creation failures: TF's kernel inside the step (left out
                       where it still fails the step)

Regimes (steps per measurement per workload: see PLAN in benchmarks/steps/cli.py):
  short      N=30 steps back to back with a fresh hook (new writer), plus the
             hook's end() (flush + close), all timed; per-step = total / N
  long       the same with N=200
  sustained  the median step time of the second half of each long
             measurement (steady state, writer never flushed in it)
Each measurement first runs one untimed step (a new hook makes TensorFlow
build a new executor) and flushes it. Configurations alternate within each
repetition (the order rotated per repetition); medians over repetitions;
ratios are to the floor measured in the same child under the same load.

Loads (--loads):
  quiet      nothing started by the harness (other processes may run: the
             machine is described in the output)
  loaded     one CPU-bound process per core (os.cpu_count(), --busy),
             started before and killed after the workload's loaded
             measurements; the floor runs under the same load

Outputs under --out: results.json (every measurement), results.md (tables:
times and ratios, bytes/step, disk-bound limit, CPU split main/TF/writer,
engine counters), ratio_to_floor.png. --quick: rnn at tiny scale, a few
steps, both loads (a smoke test; its figures mean nothing).
"""


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.steps", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-steps-out", help="output directory (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="smoke run: rnn tiny, few steps, seconds of timing")
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS, help="default: all (quick: rnn)")
    ap.add_argument("--configs", nargs="+", choices=CONFIGS, help="default: " + " ".join(DEFAULT_CONFIGS))
    ap.add_argument("--loads", nargs="+", choices=LOADS, default=list(LOADS))
    ap.add_argument("--reps", type=int, help="repetitions of every measurement (default: per workload, PLAN)")
    ap.add_argument("--steps", type=int, nargs=2, metavar=("SHORT", "LONG"),
                    help="override N of the short and long regimes for every workload (0 drops the regime)")
    ap.add_argument("--busy", type=int, default=None, help="CPU-bound processes of the loaded regime "
                    "(default: os.cpu_count())")
    ap.add_argument("--dd-mib", type=int, default=256, help="MiB dd writes to measure the disk (default: %(default)s)")
    ap.add_argument("--budget-min", type=float, default=18.0,
                    help="time the whole run may take (default: %(default)s min): repetitions after the "
                         "first that would pass a workload's share of it are skipped, and the tables say so")
    ap.add_argument("--workdir", help="where the dumps are written (default: a temporary dir under --out)")
    args = ap.parse_args(argv)
    if args.configs is None:
        args.configs = list(DEFAULT_CONFIGS)
    if "floor" not in args.configs:
        args.configs.insert(0, "floor")  # every ratio is to the floor
    args.configs = [c for c in CONFIGS if c in args.configs]
    if args.workloads is None:
        args.workloads = list(QUICK_PLAN if args.quick else PLAN)
    return args


def plan_of(args, workload: str) -> Dict[str, Any]:
    base = (QUICK_PLAN if args.quick else PLAN).get(workload) or PLAN.get(workload) or PLAN["rnn"]
    regimes = dict(base["regimes"])
    if args.steps:
        regimes = {k: v for k, v in zip(("short", "long"), args.steps) if v > 0}
    return {"regimes": regimes, "reps": args.reps or base["reps"]}


def _run_child(spec: Dict[str, Any], work: str) -> Dict[str, Any]:
    spec_path = os.path.join(work, f"spec-{spec['workload']}.json")
    result_path = os.path.join(work, f"result-{spec['workload']}.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    # Its own process group: on a timeout everything it started goes with it.
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.steps.child", spec_path, result_path], cwd=REPO,
                            env=child_env(), start_new_session=True)
    try:
        proc.wait(timeout=CHILD_TIMEOUT_S)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if not os.path.exists(result_path):
            return {"workload": spec["workload"], "error": f"timed out after {CHILD_TIMEOUT_S} s or interrupted"}
    try:
        with open(result_path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"workload": spec["workload"], "error": f"the child exited with {proc.returncode} and no result"}


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    work = args.workdir or tempfile.mkdtemp(prefix="work-", dir=args.out)
    os.makedirs(work, exist_ok=True)
    try:
        machine = machine_info(work)
        log(f"disk: dd {args.dd_mib} MiB ...")
        dd = measure_dd(work, args.dd_mib)
        plans = {w: plan_of(args, w) for w in args.workloads}
        cost = {w: ETA_MS.get(w, 100) * len(args.configs) * len(args.loads) * p["reps"] * sum(p["regimes"].values())
                for w, p in plans.items()}
        results: Dict[str, Any] = {"workloads": {}, "summary": {}, "plans": plans}
        done_cost, spent = 0.0, 0.0
        for w in args.workloads:
            left = sum(cost[x] for x in args.workloads) - done_cost
            eta = left * (spent / done_cost) if done_cost else left / 1e3 + sum(
                CHILD_OVERHEAD_S.get(x, 30) for x in args.workloads)
            # Repetitions past a workload's share are skipped: the run ends near its budget.
            eta = min(eta, max(0.0, args.budget_min * 60 - (time.perf_counter() - t_start)))
            log(f"[{time.perf_counter() - t_start:5.0f} s] {w}: {plans[w]} (ETA of the run ~{eta / 60:.1f} min)")
            t0 = time.perf_counter()
            # This workload's share of what is left of the run's time.
            left_s = args.budget_min * 60 - (time.perf_counter() - t_start) - sum(
                CHILD_OVERHEAD_S.get(x, 30) for x in args.workloads[args.workloads.index(w):])
            weight = {x: cost[x] * PRIORITY.get(x, 1.0) for x in args.workloads[args.workloads.index(w):]}
            share = max(10.0, left_s * weight[w] / sum(weight.values()))
            if len(args.loads) == 1:
                budget_s = {args.loads[0]: share}
            else:
                budget_s = {"quiet": share * (1 - LOADED_SHARE), "loaded": share * LOADED_SHARE}
            spec = {"workload": w, "scale": "tiny" if args.quick else "full", "configs": args.configs,
                    "regimes": plans[w]["regimes"], "reps": plans[w]["reps"], "loads": args.loads,
                    "busy": args.busy, "workdir": work, "budget_s": budget_s}
            child = _run_child(spec, work)
            spent += time.perf_counter() - t0
            done_cost += cost[w]
            if child.get("error"):
                log(f"{w}: ERROR {child['error']}")
            results["workloads"][w] = child
            results["summary"][w] = summarize(child, dd.get("limit_bytes_per_s")) if child.get("loads") else {}
        results["meta"] = {
            "quick": args.quick, "configs": args.configs, "loads": args.loads,
            "busy": args.busy or os.cpu_count(), "elapsed_s": time.perf_counter() - t_start,
            "git_commit": machine.get("git_commit"), "git_dirty": machine.get("git_dirty"),
            "cpu_model": machine.get("Model name"), "cpu_count": machine.get("cpu_count"),
            "disk_bytes_per_s": dd.get("limit_bytes_per_s"), "disk_source": dd.get("limit_source"),
            "load_average_at_end": os.getloadavg(), "argv": sys.argv[1:] if argv is None else list(argv),
        }
        results["machine"] = machine
        results["dd"] = dd
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(report.markdown(results))
        try:
            report.plot(results, os.path.join(args.out, "ratio_to_floor.png"))
        except Exception as exc:  # noqa: BLE001 - the plot is optional; the tables are written
            log(f"plot failed: {exc}")
        log(f"done in {time.perf_counter() - t_start:.0f} s; see {args.out}/results.md")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    failed = [w for w, c in results["workloads"].items() if c.get("error")]
    return 1 if failed else 0
