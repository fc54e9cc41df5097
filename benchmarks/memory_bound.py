"""Measures the engine's resident-memory bound: peak RSS over the queue budget.

Each case runs in a fresh subprocess that pushes far more data than the
queue holds through a DumpWriter whose sink is slower than the producer, so
the queue sits at its budget the whole time. The figure of merit is
``peak RSS - RSS before the writer - queue_bytes``: what the engine holds
beyond its budget (frame buffers, compressor state, bookkeeping).

Usage: ``python -m benchmarks.memory_bound [--queue-mb 64] [--total-mb 1024]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json, os, resource, sys, tempfile, time
    import numpy as np
    from tfdump_fast import DumpWriter
    from tfdump_fast.store.frames import write_all

    tensor_bytes, total, queue = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

    def rss_mb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0

    def slow_sink(fd, parts):
        time.sleep(0.002)
        write_all(fd, parts)

    arr = np.random.default_rng(0).standard_normal(max(1, tensor_bytes // 4)).astype(np.float32)
    with tempfile.TemporaryDirectory() as root:
        # Warm up numpy/zstd/threads so the baseline holds the fixed costs.
        with DumpWriter(os.path.join(root, "warm")) as w:
            w.write(arr, "warm")
        base = rss_mb()
        w = DumpWriter(os.path.join(root, "d"), queue_bytes=queue, frame_bytes=min(2 << 20, queue // 4),
                       frame_sink=slow_sink)
        run = w.begin_run(capture=False)
        n = max(1, total // arr.nbytes)
        t0 = time.perf_counter()
        for i in range(n):
            arr[0] = i  # distinct payloads: no deduplication
            w.write(arr, "x", run=run)
        w.end_run(run)
        w.flush()
        elapsed = time.perf_counter() - t0
        stats = w.stats()
        w.close()
        peak = rss_mb()
    print(json.dumps({"tensor_bytes": arr.nbytes, "tensors": n, "queue_mb": queue / 2**20,
                      "baseline_rss_mb": round(base, 1), "peak_rss_mb": round(peak, 1),
                      "over_budget_mb": round(peak - base - queue / 2**20, 1),
                      "queue_high_water_mb": round(stats["queue_high_water"] / 2**20, 1),
                      "mb_per_s": round(n * arr.nbytes / elapsed / 2**20, 1)}))
""")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queue-mb", type=int, default=64, help="queue budget (default 64)")
    ap.add_argument("--total-mb", type=int, default=1024, help="data pushed per case (default 1024)")
    ap.add_argument("--sizes", default="64,4096,262144,16777216",
                    help="tensor sizes in bytes, comma-separated")
    args = ap.parse_args(argv)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run([sys.executable, "-c", CHILD, str(size), str(args.total_mb << 20),
                              str(args.queue_mb << 20)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| tensor size | tensors | queue budget | peak RSS over baseline | over budget | queue high water |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tensor_bytes']} B | {r['tensors']} | {r['queue_mb']:.0f} MiB | "
              f"{r['peak_rss_mb'] - r['baseline_rss_mb']:.1f} MiB | {r['over_budget_mb']:+.1f} MiB | "
              f"{r['queue_high_water_mb']:.1f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
