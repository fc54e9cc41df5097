"""Cost of recording eager ops' Python stacks in TF2 capture.

Per eager op (``tf.add`` of two 2-element tensors, 1000 per round, 7 rounds
interleaved, medians): no capture, capture with stacks (the default), and
capture with the stack lookup replaced by "no stack".

    PYTHONPATH=src python benchmarks/tf2_eager_stacks.py
"""
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

from tfdump_fast import tf2  # noqa: E402

N, ROUNDS = 1000, 7


def loop(a, b):
    t = time.perf_counter()
    for _ in range(N):
        tf.add(a, b)
    return (time.perf_counter() - t) / N * 1e6


def main():
    a, b = tf.constant([1.0, 2.0]), tf.constant([3.0, 4.0])
    res = {"no capture": [], "capture, stacks": [], "capture, no stacks": []}
    root = tempfile.mkdtemp()
    try:
        for rnd in range(ROUNDS):
            res["no capture"].append(loop(a, b))
            for i, name in enumerate(("capture, stacks", "capture, no stacks")):
                tf2.enable_dump_debug_info(os.path.join(root, f"{rnd}_{i}"))
                if name.endswith("no stacks"):
                    tf2._active._eager_stack_id = lambda: None   # noqa: SLF001 - the cost measured
                loop(a, b)   # warm up
                res[name].append(loop(a, b))
                tf2.disable_dump_debug_info()
    finally:
        shutil.rmtree(root)
    for k, v in res.items():
        print(f"{k:20s} median {statistics.median(v):6.1f} us/eager op  "
              f"(rounds: {', '.join(f'{x:.0f}' for x in v)})")


if __name__ == "__main__":
    main()
