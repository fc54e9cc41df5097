"""TF2 step times: undebugged vs tfdbg v2 vs tfdump-fast's TF2 capture, per tensor_debug_mode.

Workloads: the tf.function twins of ``benchmarks/workloads.py`` (mlp, rnn,
cnn, embed: ``build_function``) and ``keras``, a Keras MLP trained with
``model.fit`` (:func:`build_keras`). Each (workload, configuration) runs in
its own child process (tfdbg v2 and our capture both instrument every
function traced while they are enabled, so they cannot share a process);
children run round-robin (none, tfdbg2, ours, none, ...) so machine load
drifts over all configurations alike. Figures are medians over rounds.

Regimes (as in BENCHMARKS.md):

* burst: blocks of ``--block`` steps; the median step time inside blocks;
  each configuration's writer drains between blocks, untimed (ours:
  ``writer.flush()``; tfdbg v2: ``FlushExecutionFiles`` /
  ``FlushNonExecutionFiles``);
* sustained: ``--steps`` steps back to back plus the final flush and close
  (``disable_dump_debug_info``), divided by the steps.

Modes: ``--modes FULL_TENSOR,CURT_HEALTH,...`` runs tfdbg v2 and ours in
each mode (configurations ``tfdbg2`` / ``ours`` for FULL_TENSOR,
``tfdbg2:<MODE>`` / ``ours:<MODE>`` for the others) against the one
undebugged baseline, all in the same round-robin.

Usage::

    python -m benchmarks.tf2_steps [--models mlp,rnn,cnn,embed,keras] [--rounds 3]
        [--modes FULL_TENSOR,CURT_HEALTH] [--out docs/benchmarks/tf2_results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CONFIGS = ("none", "tfdbg2", "ours")
MODELS = ("mlp", "rnn", "cnn", "embed", "keras")
KERAS_PARAMS = dict(batch=256, width=512, layers=3, features=256)


def build_keras(scale="full", seed=0):
    """A Keras MLP (``KERAS_PARAMS``; tiny: /8) compiled for plain SGD without
    XLA; returns ``step(n)``, which runs ``model.fit`` for n steps."""
    import numpy as np
    import keras

    p = dict(KERAS_PARAMS) if scale == "full" else {k: max(2, v // 8) for k, v in KERAS_PARAMS.items()}
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((p["features"],))]
    layers += [keras.layers.Dense(p["width"], activation="relu") for _ in range(p["layers"])]
    layers.append(keras.layers.Dense(10))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=False,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p["batch"] * 8, p["features"])).astype("float32")
    y = rng.integers(0, 10, size=(p["batch"] * 8,))

    def step(n=1):
        model.fit(x, y, batch_size=p["batch"], epochs=1, steps_per_epoch=n, shuffle=False, verbose=0)

    return step


def _dir_bytes(root):
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total


def child(model, config, regime, steps, block, scale, root):
    """One measurement: prints a JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    writer = None
    config, _, mode = config.partition(":")
    mode = mode or "FULL_TENSOR"
    if config == "tfdbg2":
        writer = tf.debugging.experimental.enable_dump_debug_info(
            root, tensor_debug_mode=mode, circular_buffer_size=-1)
    elif config == "ours":
        import tfdump_fast

        writer = tfdump_fast.enable_dump_debug_info(root, tensor_debug_mode=mode)

    if model == "keras":
        fit = build_keras(scale)
        run_steps = fit
    else:
        from benchmarks import workloads as W

        fw = W.build_function(model, scale, 0)
        fn = fw.make_step()

        def run_steps(n=1):
            for _ in range(n):
                fn()

    def drain():
        if config == "ours":
            writer.flush()
        elif config == "tfdbg2":
            writer.FlushNonExecutionFiles()
            writer.FlushExecutionFiles()

    run_steps(2)   # trace (instrumented) and warm up
    drain()
    times = []
    if regime == "burst":
        done = 0
        while done < steps:
            n = min(block, steps - done)
            for _ in range(n):
                t0 = time.perf_counter()
                run_steps(1)
                times.append(time.perf_counter() - t0)
            drain()
            done += n
        per_step = statistics.median(times)
    else:
        t0 = time.perf_counter()
        run_steps(steps) if model == "keras" else [run_steps(1) for _ in range(steps)]
        if config == "ours":
            tfdump_fast.disable_dump_debug_info()
        elif config == "tfdbg2":
            tf.debugging.experimental.disable_dump_debug_info()
        per_step = (time.perf_counter() - t0) / steps
    if regime == "burst":
        if config == "ours":
            tfdump_fast.disable_dump_debug_info()
        elif config == "tfdbg2":
            tf.debugging.experimental.disable_dump_debug_info()
    print(json.dumps({"step_ms": per_step * 1e3, "bytes": _dir_bytes(root) if config != "none" else 0,
                      "steps": steps + 2}))


def report(results) -> str:
    """A markdown table of a results JSON (step ms, ratio to undebugged, MB/step)."""
    lines = ["| model | regime | mode | undebugged ms | tfdbg v2 ms (x) | ours ms (x) | ours / tfdbg v2 | "
             "MB/step tfdbg v2 | MB/step ours |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    modes = results.get("args", {}).get("modes", "FULL_TENSOR").split(",")
    for model, regimes in results["models"].items():
        for regime, s in regimes.items():
            for mode in modes:
                lines.append(_report_row(model, regime, mode, s))
    return "\n".join(lines)


def _report_row(model, regime, mode, s) -> str:
    """One table row: the configurations of ``mode`` in one (model, regime) summary."""
    sfx = "" if mode == "FULL_TENSOR" else ":" + mode

    def cell(c):
        f = s.get(c, {})
        if "step_ms" not in f:
            return "error"
        return f"{f['step_ms']:.1f} ({f.get('ratio_to_none', float('nan')):.2f}x)"

    def mb(c):
        f = s.get(c, {})
        return f"{f['bytes_per_step'] / 1e6:.2f}" if "bytes_per_step" in f else "-"

    base = s.get("none", {}).get("step_ms")
    ratio = s.get("ours_over_tfdbg2" + sfx)
    if not (base and ratio):
        return f"| {model} | {regime} | {mode} | error | | | | | |"
    return (f"| {model} | {regime} | {mode} | {base:.1f} | {cell('tfdbg2' + sfx)} | {cell('ours' + sfx)} | "
            f"{ratio:.2f} | {mb('tfdbg2' + sfx)} | {mb('ours' + sfx)} |")


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Each (model, configuration, regime) runs in a fresh process; configurations "
               "round-robin per round; medians over rounds. Sustained with few --steps is dominated by "
               "the final disable (flush + close, inside the window): use 100+ steps for small steps. "
               "Example: python -m benchmarks.tf2_steps --models rnn,cnn --modes FULL_TENSOR,CURT_HEALTH "
               "--regimes sustained --steps 150 --rounds 2 --out tf2.json")
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma-separated, of {','.join(MODELS)} (default: all)")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help="comma-separated: none (undebugged), tfdbg2 (TF's enable_dump_debug_info), "
                         "ours (tfdump_fast.enable_dump_debug_info) (default: all)")
    ap.add_argument("--modes", default="FULL_TENSOR",
                    help="tensor_debug_modes of tfdbg2 and ours, comma-separated (default: FULL_TENSOR)")
    ap.add_argument("--regimes", default="burst,sustained",
                    help="burst: median step inside blocks of --block steps, writers drained between "
                         "blocks untimed; sustained: --steps back to back plus the final disable "
                         "(default: both)")
    ap.add_argument("--rounds", type=int, default=3, help="repetitions of every measurement (default: 3)")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per measurement (default: 12)")
    ap.add_argument("--block", type=int, default=4, help="steps per burst block (default: 4)")
    ap.add_argument("--scale", default="full", help="workload scale, as benchmarks.workloads (default: full)")
    ap.add_argument("--out", default=None, help="write every measurement as JSON here")
    ap.add_argument("--report", metavar="JSON", help="print the markdown table of a results file and exit")
    ap.add_argument("--child", nargs=4, metavar=("MODEL", "CONFIG", "REGIME", "ROOT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            print(report(json.load(f)))
        return 0
    if args.child:
        model, config, regime, root = args.child
        child(model, config, regime, args.steps, args.block, args.scale, root)
        return 0
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([here, os.path.join(here, "src"), os.environ.get("PYTHONPATH", "")]))
    results = {"load_before": os.getloadavg(), "args": vars(args), "models": {}}
    work = tempfile.mkdtemp(prefix="tf2bench-")
    try:
        for model in args.models.split(","):
            for regime in args.regimes.split(","):
                raw = {}
                for c in args.configs.split(","):
                    for mode in ([None] if c == "none" else args.modes.split(",")):
                        raw[c if mode in (None, "FULL_TENSOR") else f"{c}:{mode}"] = []
                for rnd in range(args.rounds):
                    for config in raw:
                        root = os.path.join(work, f"{model}-{config.replace(':', '-')}-{regime}-{rnd}")
                        proc = subprocess.run(
                            [sys.executable, "-m", "benchmarks.tf2_steps", "--steps", str(args.steps),
                             "--block", str(args.block), "--scale", args.scale,
                             "--child", model, config, regime, root],
                            env=env, cwd=here, capture_output=True, text=True, timeout=900)
                        if proc.returncode != 0:
                            raw[config].append({"error": proc.stderr[-2000:]})
                        else:
                            raw[config].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                        shutil.rmtree(root, ignore_errors=True)
                summary = {}
                for config, runs in raw.items():
                    ok = [r for r in runs if "error" not in r]
                    if not ok:
                        summary[config] = {"error": runs[0]["error"] if runs else "no runs"}
                        continue
                    summary[config] = {
                        "step_ms": statistics.median(r["step_ms"] for r in ok),
                        "step_ms_all": [round(r["step_ms"], 3) for r in ok],
                        "bytes_per_step": statistics.median(r["bytes"] / r["steps"] for r in ok)}
                base = summary.get("none", {}).get("step_ms")
                for config, s in summary.items():
                    if base and "step_ms" in s:
                        s["ratio_to_none"] = s["step_ms"] / base
                for mode in args.modes.split(","):
                    sfx = "" if mode == "FULL_TENSOR" else ":" + mode
                    ours, theirs = summary.get("ours" + sfx, {}), summary.get("tfdbg2" + sfx, {})
                    if "step_ms" in ours and "step_ms" in theirs:
                        summary["ours_over_tfdbg2" + sfx] = ours["step_ms"] / theirs["step_ms"]
                results["models"].setdefault(model, {})[regime] = summary
                print(model, regime, json.dumps(summary, default=str)[:600], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_after"] = os.getloadavg()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
