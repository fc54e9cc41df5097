"""The durability promise: every run that ended more than 2 s ago survives kill -9.

Real subprocesses, real TensorFlow (tf.compat.v1 MonitoredSession and the
hook), real files. The training child shares one CPU with a busy process (a
machine running other jobs): writer threads of an idle scheduling class then
get no CPU time of their own. The child prints the time after every step
(each run has ended by then: the hook's after_run returned); the test kills
it with SIGKILL at a random moment (while training, while closing, or after
it finished) and checks every run that ended more than ``durability_s``
before the kill against the store: present, ended, no tensor missing.
"""

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

pytest.importorskip("tensorflow")

from tfdump_fast.reader import DumpReader  # noqa: E402

from conftest import PKG_PARENT as SRC  # noqa: E402

DURABILITY_S = 2.0  # the documented default

CHILD = textwrap.dedent("""
    import os, sys, time
    os.sched_setaffinity(0, {int(sys.argv[2])})  # before TensorFlow sizes its thread pools
    import numpy as np
    import tensorflow as tf
    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    from tfdump_fast.hooks import DumpingDebugHook

    width, train_s = 256, float(sys.argv[3])
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [None, width], name="x")
        h = x
        for i in range(3):
            w = tf1.get_variable("w%d" % i, [width, width], use_resource=True,
                                 initializer=tf1.random_normal_initializer(stddev=0.05))
            h = tf.nn.relu(tf.matmul(h, w))
        loss = tf.reduce_mean(h * h)
        gs = tf1.train.get_or_create_global_step()
        train = tf1.train.GradientDescentOptimizer(0.01).minimize(loss, global_step=gs)
    feed = np.random.RandomState(0).randn(32, width).astype(np.float32)
    hook = DumpingDebugHook(sys.argv[1])
    with g.as_default(), tf1.train.MonitoredSession(hooks=[hook]) as sess:
        print("READY", flush=True)
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < train_s:
            sess.run(train, feed_dict={x: feed})
            # CLOCK_MONOTONIC is system-wide: the parent compares it with its own.
            sys.stdout.write("END %d %.6f\\n" % (i, time.monotonic()))
            sys.stdout.flush()
            i += 1
        print("CLOSING", flush=True)
    print("CLOSED", flush=True)
""")

BUSY = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def kill_during_training(tmp_path, trial, rng):
    root = tmp_path / f"dump{trial}"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    cpu = sorted(os.sched_getaffinity(0))[-1]
    env = dict(os.environ, PYTHONPATH=SRC, TF_CPP_MIN_LOG_LEVEL="2")
    busy = subprocess.Popen([sys.executable, "-c", BUSY, str(cpu)])
    child = subprocess.Popen([sys.executable, str(script), str(root), str(cpu), "4.0"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = []
    try:
        first = child.stdout.readline()
        assert first.startswith("READY"), first
        reader = threading.Thread(target=lambda: lines.extend(child.stdout), daemon=True)
        reader.start()
        time.sleep(rng.uniform(2.5, 6.0))
        kill_at = time.monotonic()
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        reader.join(timeout=10)
    finally:
        for p in (busy, child):
            if p.poll() is None:
                p.kill()
                p.wait()
    ends = {int(l.split()[1]): float(l.split()[2]) for l in lines if l.startswith("END")}
    due = sorted(i for i, t in ends.items() if t < kill_at - DURABILITY_S)
    return root, due, len(ends), "CLOSED" in "".join(lines)


def test_kill9_keeps_every_run_that_ended_2s_before(tmp_path):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    checked = 0
    for trial in range(3):
        root, due, steps, closed = kill_during_training(tmp_path, trial, rng)
        runs = sorted(DumpReader(str(root)).runs, key=lambda r: r.run_id)
        lost = [i for i in due if i >= len(runs) or runs[i].status != "complete" or runs[i].missing_tensors]
        assert not lost, (f"seed {seed}, trial {trial}: {len(lost)} of {len(due)} runs that ended more than "
                          f"{DURABILITY_S} s before kill -9 are incomplete (of {steps} steps; closed={closed})")
        checked += len(due)
    assert checked > 0, (steps, due, closed)


@pytest.mark.parametrize("bad", [0, -1.0, "2", True, float("nan"), float("inf")])
def test_durability_s_validated(tmp_path, bad):
    from tfdump_fast.errors import TfdumpUsageError
    from tfdump_fast.writer import DumpWriter

    with pytest.raises(TfdumpUsageError, match="durability_s"):
        DumpWriter(str(tmp_path / "d"), durability_s=bad)


def test_durability_off_still_writes_on_close(tmp_path):
    import numpy as np

    from tfdump_fast.writer import DumpWriter

    with DumpWriter(str(tmp_path / "d"), durability_s=None) as w:
        run = w.begin_run(capture=False)
        w.write(np.arange(4.0), "n", run=run)
        w.end_run(run)
    assert len(DumpReader(str(tmp_path / "d")).run(0)) == 1
