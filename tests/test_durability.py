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


def kill_at_random_point(script, root, seconds, rng, kill_window, busy_cpu=None, env_extra=None):
    """Run ``script root cpu seconds`` pinned to one CPU (optionally with a
    busy process on it), SIGKILL it ``kill_window`` s (uniform) after it
    prints READY; return (its END lines split into fields, the kill time)."""
    cpu = sorted(os.sched_getaffinity(0))[-1]
    env = dict(os.environ, PYTHONPATH=SRC, **(env_extra or {}))
    busy = subprocess.Popen([sys.executable, "-c", BUSY, str(cpu)]) if busy_cpu else None
    child = subprocess.Popen([sys.executable, str(script), str(root), str(cpu), str(seconds)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = []
    try:
        first = child.stdout.readline()
        assert first.startswith("READY"), first
        reader = threading.Thread(target=lambda: lines.extend(child.stdout), daemon=True)
        reader.start()
        time.sleep(rng.uniform(*kill_window))
        kill_at = time.monotonic()
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        # A SIGKILLed process always dies, but on a loaded machine tearing
        # down its threads and memory has taken over 30 s.
        child.wait(timeout=300)
        reader.join(timeout=10)
    finally:
        for p in (busy, child):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    return [l.split() for l in lines if l.startswith("END")], kill_at, "CLOSED" in "".join(lines)


def kill_during_training(tmp_path, trial, rng):
    root = tmp_path / f"dump{trial}"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    end_lines, kill_at, closed = kill_at_random_point(script, root, 4.0, rng, (2.5, 6.0), busy_cpu=True,
                                                      env_extra={"TF_CPP_MIN_LOG_LEVEL": "2"})
    ends = {int(f[1]): float(f[2]) for f in end_lines}
    due = sorted(i for i, t in ends.items() if t < kill_at - DURABILITY_S)
    return root, due, len(ends), closed


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


# Back-to-back runs written through the Python API by several threads at
# once (each thread has its own queue stripe), so the queue always holds
# records of the run executing when an earlier run's write-out begins: a
# write-out that counted any records written since it began, instead of the
# ended runs' own, could stop before their last frames. The child prints, at
# every run's end, how many records were still queued.
BACK_TO_BACK = textwrap.dedent("""
    import os, sys, threading, time
    os.sched_setaffinity(0, {int(sys.argv[2])})
    import numpy as np
    from tfdump_fast.writer import DumpWriter

    w = DumpWriter(sys.argv[1], frame_bytes=32 << 10, workers=1)
    values = [np.random.RandomState(k).randn(512).astype(np.float32) for k in range(64)]
    print("READY", flush=True)
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < float(sys.argv[3]):
        run = w.begin_run(capture=False)

        def produce(t):
            for k in range(8):
                w.write(values[(i + t * 8 + k) % 64] + i, "t%d_%d" % (t, k), run=run)

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        w.end_run(run)
        queued = w.stats()["records_outstanding"]
        sys.stdout.write("END %d %.6f %d\\n" % (i, time.monotonic(), queued))
        sys.stdout.flush()
        i += 1
    w.close()
    print("CLOSED", flush=True)
""")


def kill_back_to_back(tmp_path, trial, rng):
    root = tmp_path / f"b2b{trial}"
    script = tmp_path / "b2b.py"
    script.write_text(BACK_TO_BACK)
    end_lines, kill_at, _ = kill_at_random_point(script, root, 5.0, rng, (2.5, 5.5))
    ends = {int(f[1]): (float(f[2]), int(f[3])) for f in end_lines}
    due = sorted(i for i, (t, _) in ends.items() if t < kill_at - DURABILITY_S)
    queued_at_end = sum(1 for _, q in ends.values() if q > 0)
    return root, due, ends, queued_at_end


def test_kill9_back_to_back_runs_with_queue_never_empty(tmp_path):
    """Every run that ended more than durability_s before kill -9 has all
    its tensors on disk, while the next run's records keep the queue busy."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    checked = busy_ends = 0
    for trial in range(3):
        root, due, ends, queued_at_end = kill_back_to_back(tmp_path, trial, rng)
        runs = sorted(DumpReader(str(root)).runs, key=lambda r: r.run_id)
        lost = [i for i in due if i >= len(runs) or runs[i].status != "complete" or runs[i].missing_tensors
                or len(runs[i]) != 32]
        assert not lost, (f"seed {seed}, trial {trial}: runs {lost[:10]} ({len(lost)} of {len(due)}) ended more "
                          f"than {DURABILITY_S} s before kill -9 and are incomplete (of {len(ends)} runs)")
        checked += len(due)
        busy_ends += queued_at_end
    assert checked > 0
    # The case this test is for: runs ended with records still queued.
    assert busy_ends > 0


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


# --------------------------------------------------- the engine's per-run settled count

def test_run_progress_counts_written_records_per_run(tmp_path):
    """The engine counts, per run, the accepted records that are settled
    (their frame written): the exact check the durability write-out uses."""
    import numpy as np

    from tfdump_fast.writer import DumpWriter

    with DumpWriter(str(tmp_path / "d"), durability_s=None, frame_bytes=8 << 10) as w:
        engine = w._engine
        a = w.begin_run(capture=False)
        b = w.begin_run(capture=False)  # open throughout: its records share the frames
        for k in range(40):
            w.write(np.full(256, k, np.float32), "a", run=a)
            w.write(np.full(256, -k, np.float32), "b", run=b)
        assert engine.run_progress(a.run_id)[0] == 40
        w.end_run(a)
        w.flush()
        assert engine.run_progress(a.run_id) == (40, 40)
        assert engine.run_progress(b.run_id) == (40, 40)
        assert engine.run_progress(9999) is None  # never begun: its slot holds no such run
        w.end_run(b)


def test_run_progress_counts_records_dropped_after_acceptance(tmp_path):
    """A frame lost after acceptance (here: a full disk) settles its records
    too, so a write-out waiting for them ends instead of hanging."""
    import errno

    import numpy as np

    from tfdump_fast.errors import TfdumpError
    from tfdump_fast.writer import DumpWriter

    def full_disk(fd, parts):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    w = DumpWriter(str(tmp_path / "d"), durability_s=None, frame_sink=full_disk)
    run = w.begin_run(capture=False)
    try:  # the writer error is raised by whichever call comes after the failed frame
        for k in range(10):
            w.write(np.full(64, k, np.float32), "x", run=run)
    except TfdumpError:
        pass
    try:
        w.end_run(run)
    except TfdumpError:
        pass
    with pytest.raises(TfdumpError, match="No space left"):
        w.flush()
    accepted, settled = w._engine.run_progress(run.run_id)
    assert accepted >= 1 and settled == accepted
    assert w.stats()["tensors_written"] == 0
    with pytest.raises(TfdumpError):
        w.close()


def test_durability_write_out_settles_ended_runs_while_another_run_executes(tmp_path):
    """With a run still executing (its records queued, deferral on), a run
    that ended is written by the durability thread alone: no flush, no
    close. Checked on disk by a reader while the writer is open."""
    import numpy as np

    from tfdump_fast.writer import DumpWriter

    root = str(tmp_path / "d")
    w = DumpWriter(root, durability_s=0.4, frame_bytes=64 << 10)
    try:
        running = w.begin_run(capture=False)
        w.write(np.arange(1000.0), "long_step", run=running)
        ended = w.begin_run(capture=False)
        for k in range(20):
            w.write(np.full(512, k, np.float32), "t%d" % k, run=ended)
        w.end_run(ended)
        deadline = time.monotonic() + 60
        while w._engine.run_progress(ended.run_id) != (20, 20) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert w._engine.run_progress(ended.run_id) == (20, 20)
        run = {r.run_id: r for r in DumpReader(root).runs}[ended.run_id]
        assert run.status == "complete" and run.missing_tensors == 0 and len(run) == 20
        w.end_run(running)
    finally:
        w.close()
