"""Interpreter exit while a daemon thread is still training (real subprocesses).

The main thread returns while a daemon thread runs MonitoredSession steps
through the hook, with a writer slower than the steps (a slow frame sink and
a small queue): closing the writer at exit must not wait for a drain that
the training thread keeps refilling. The process exits on its own, with
status 0, keeping every run that ended before the exit began.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("tensorflow")

from tfdump_fast.reader import DumpReader  # noqa: E402

from conftest import PKG_PARENT as SRC  # noqa: E402

CHILD = textwrap.dedent("""
    import sys, threading, time
    import numpy as np
    import tensorflow as tf
    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    from tfdump_fast.hooks import DumpingDebugHook
    from tfdump_fast.store import frames

    def slow_sink(fd, parts):
        time.sleep(0.01)  # a writer slower than the steps: the queue never empties
        frames.write_all(fd, parts)

    width = 128
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [None, width], name="x")
        h = x
        for i in range(2):
            w = tf1.get_variable("w%d" % i, [width, width], use_resource=True)
            h = tf.nn.relu(tf.matmul(h, w))
        loss = tf.reduce_mean(h * h)
        gs = tf1.train.get_or_create_global_step()
        train = tf1.train.GradientDescentOptimizer(0.01).minimize(loss, global_step=gs)
    feed = np.ones((16, width), np.float32)
    hook = DumpingDebugHook(sys.argv[1], queue_bytes=2 << 20, frame_bytes=64 << 10, frame_sink=slow_sink)
    steps = []

    def loop():
        with g.as_default():
            with tf1.train.MonitoredSession(hooks=[hook]) as sess:
                while True:
                    sess.run(train, feed_dict={x: feed})
                    steps.append(1)

    threading.Thread(target=loop, daemon=True).start()
    while len(steps) < 30:
        time.sleep(0.05)
    # Every run counted here has ended (the hook's after_run returned).
    print("ENDED_BEFORE_EXIT", len(steps), flush=True)
""")


def test_exit_with_daemon_thread_training(tmp_path):
    root = tmp_path / "dump"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=SRC, TF_CPP_MIN_LOG_LEVEL="2")
    try:
        proc = subprocess.run([sys.executable, str(script), str(root)], env=env, capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: closing the writer at exit waited on a training thread")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ended = int(proc.stdout.split("ENDED_BEFORE_EXIT")[1].split()[0])
    runs = sorted(DumpReader(str(root)).runs, key=lambda r: r.run_id)
    assert len(runs) >= ended
    for run in runs[:ended]:
        assert run.status == "complete" and run.missing_tensors == 0, (run.run_id, run.status)
    # A run the training thread was executing when the exit began is marked.
    for run in runs[ended:]:
        assert run.status in ("complete", "failed", "truncated")
