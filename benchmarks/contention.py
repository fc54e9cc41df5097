"""Step time of the hook under CPU contention, against no hook under the same load.

Starts ``--busy`` CPU-bound processes (2 by default: one per core of the
reference machine), then times training steps of one workload (the
1024-wide MLP by default) in alternating blocks without and with
:class:`tfdump_fast.DumpingDebugHook` (``queue_bytes=32 MiB`` by default, so
that the producers must wait for the writers), and prints both medians and
their ratio. The busy processes run the whole time, so both figures see the
same load; alternating the blocks spreads any drift of the load over both.

The writers run in the background class while the machine is otherwise
idle; this measures that a producer waiting for queue room does not wait on
writers that get no CPU (issue #10: 797 ms against 20.5 ms, 39x, before the
engine raised waiting writers).

``--writer-only`` times the engine alone (no TF): 6x the queue written from
Python, which waits for room all along.

Usage: ``python -m benchmarks.contention [--steps 10] [--blocks 3] [--busy 2]
[--queue-mb 32] [--model mlp] [--scale full] [--normal-class] [--writer-only]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# A busy process ends itself after `limit` seconds even if we die first.
BUSY = "import signal\nsignal.alarm({limit})\nwhile True:\n    pass\n"


def start_busy(n: int, limit_s: int):
    return [subprocess.Popen([sys.executable, "-c", BUSY.format(limit=limit_s)]) for _ in range(n)]


def stop_busy(procs) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def time_steps(session, train_op, steps: int):
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        session.run(train_op)
        times.append(time.perf_counter() - t0)
    return times


def writer_only(args) -> dict:
    """The engine alone: time to push 6x the queue through it from Python.

    No TF, so no step compute to share the CPU with: what remains is how long
    a producer waits for room, which is what starves when the writers get
    no CPU.
    """
    import numpy as np

    from tfdump_fast.writer import DumpWriter

    queue = args.queue_mb << 20
    arr = np.random.default_rng(0).standard_normal(1 << 18).astype(np.float32)  # 1 MiB
    n = 6 * args.queue_mb
    with tempfile.TemporaryDirectory(prefix="tfdump_contention_") as tmp:
        w = DumpWriter(os.path.join(tmp, "dump"), queue_bytes=queue, frame_bytes=min(2 << 20, queue // 8))
        run = w.begin_run(capture=False)
        busy = start_busy(args.busy, args.limit_s)
        try:
            time.sleep(0.5)
            t0 = time.perf_counter()
            for i in range(n):
                arr[0] = i  # distinct payloads: no deduplication
                w.write(arr, "x", run=run)
            elapsed = time.perf_counter() - t0
        finally:
            stop_busy(busy)
        w.end_run(run)
        w.close()
        stats = w.stats()
    print(f"{n} MiB written through a {args.queue_mb} MiB queue under {args.busy} busy processes: "
          f"{elapsed:.2f} s")
    return {"writer_only_s": round(elapsed, 3), "mib": n, "worker_boosts": stats.get("worker_boosts")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--scale", default="full")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per block")
    ap.add_argument("--blocks", type=int, default=3, help="blocks of each configuration, alternating")
    ap.add_argument("--busy", type=int, default=2, help="CPU-bound processes running meanwhile")
    ap.add_argument("--queue-mb", type=int, default=32)
    ap.add_argument("--limit-s", type=int, default=900, help="the busy processes' own time limit")
    ap.add_argument("--writer-only", action="store_true",
                    help="time only the engine (DumpWriter.write of 1 MiB arrays, 6x the queue), no TF")
    ap.add_argument("--normal-class", action="store_true",
                    help="also time the hook with writers always in the normal class (worker_idle=False, "
                         "worker_nice=0): what the hook costs when the writers never wait for CPU")
    args = ap.parse_args(argv)

    if args.writer_only:
        print(json.dumps(writer_only(args)))
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import tfdump_fast
    from benchmarks.workloads import build_graph, graph_mode_setup, unfinalize

    graph_mode_setup()
    wl = build_graph(args.model, args.scale)
    v1 = tf.compat.v1
    with tempfile.TemporaryDirectory(prefix="tfdump_contention_") as tmp, wl.graph.as_default():
        plain = v1.train.MonitoredSession()
        unfinalize(wl.graph)
        sessions = {"no hook": plain}
        hook = None
        variants = [("hook", {})]
        if args.normal_class:
            variants.append(("hook, writers always normal", {"worker_idle": False, "worker_nice": 0}))
        for name, options in variants:
            unfinalize(wl.graph)
            h = tfdump_fast.DumpingDebugHook(os.path.join(tmp, f"dump{len(sessions)}"), log_usage=False,
                                             queue_bytes=args.queue_mb << 20, **options)
            hook = hook or h
            sessions[name] = v1.train.MonitoredSession(hooks=[h])
        for s in sessions.values():  # graph set-up and first-run costs
            s.run(wl.train_op)
        busy = start_busy(args.busy, args.limit_s)
        times = {name: [] for name in sessions}
        try:
            time.sleep(0.5)  # let the busy processes take the cores
            for _ in range(args.blocks):
                for name, s in sessions.items():
                    s.run(wl.train_op)  # the block's warm-up step
                    times[name] += time_steps(s, wl.train_op, args.steps)
            stats = hook.writer.stats()
        finally:
            stop_busy(busy)
        for s in sessions.values():
            s.close()

    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    result = {
        "model": args.model, "scale": args.scale, "busy_processes": args.busy, "queue_mb": args.queue_mb,
        "steps": {k: len(v) for k, v in times.items()},
        "median_ms": {k: round(v, 1) for k, v in med.items()},
        "ratio": round(med["hook"] / med["no hook"], 2),
        "worker_boosts": stats.get("worker_boosts"), "worker_background": stats.get("worker_background"),
        "tensors_dropped": stats.get("tensors_dropped"),
    }
    if args.normal_class:
        result["ratio_normal_class"] = round(med["hook, writers always normal"] / med["no hook"], 2)
    print(f"{args.model} under {args.busy} busy processes: "
          + ", ".join(f"{k} {v:.1f} ms/step" for k, v in med.items()) + f"; hook/no hook {result['ratio']:.2f}x")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
