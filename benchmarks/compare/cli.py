"""The command line: options, the run, the output files."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict

from benchmarks.compare.children import CHILD_KINDS, child_main
from benchmarks.compare.config import CONFIGS, DEFAULT_CONFIGS, FULL, QUICK, REGIMES
from benchmarks.compare.env import REPO, log
from benchmarks.compare.orchestrate import orchestrate
from benchmarks.compare.plot import render_plot
from benchmarks.compare.report import render_markdown


def write_outputs(results: Dict[str, Any], out: str) -> Dict[str, str]:
    """Writes results.json, results.md and step_time_ratio.png to `out`; returns their paths."""
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



def parse_args(argv=None):
    """The options, with the size defaults of --quick or of a full run filled in."""
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
    p.add_argument("--_child", choices=CHILD_KINDS, help=argparse.SUPPRESS)
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
    """``python -m benchmarks.compare``; also the entry point of every child process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    if args._child:
        child_main(args._child, args._spec, args._result)
        return 0
    results = orchestrate(args)
    paths = write_outputs(results, args.out)
    log(f"done in {results['meta']['wall_s']:.0f} s: " + ", ".join(f"{k} {v}" for k, v in paths.items()))
    bad = [c for c in results["children"] if c["error"]]
    if bad:
        log(f"{len(bad)} child process(es) reported errors; see results.json 'errors' and {args.out}/logs")
    return 0

