"""SIGTERM and SIGINT during training (real subprocesses, real TensorFlow).

A child trains through the hook and prints a line after every step; the test
signals it mid-training. Every run that ended before the signal must be in
the store, complete, and the writer closed (``writer_close``) when the
signal's default action ends the process; handlers installed before ours
still run, and SIGINT still raises KeyboardInterrupt.
"""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("tensorflow")

from tfdump_fast.reader import DumpReader  # noqa: E402

from conftest import PKG_PARENT as SRC  # noqa: E402

CHILD = textwrap.dedent("""
    import os, signal, sys, time
    import numpy as np
    import tensorflow as tf
    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    from tfdump_fast.hooks import DumpingDebugHook
    from tfdump_fast.store import frames

    mode = sys.argv[2]
    stop = []
    if mode == "user-exit":
        # The program's own handler ends the process at once, as many do:
        # os._exit runs no atexit handler, so ours must have run before it.
        def on_signal(signum, frame):
            print("USER HANDLER", signum, flush=True)
            os._exit(5)
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def slow_sink(fd, parts):
        time.sleep(0.005)  # the writer lags the steps a little: the queue is never empty
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
    hook = DumpingDebugHook(sys.argv[1], frame_bytes=64 << 10, frame_sink=slow_sink)
    try:
        with g.as_default():
            with tf1.train.MonitoredSession(hooks=[hook]) as sess:
                i = 0
                while not stop:
                    sess.run(train, feed_dict={x: feed})
                    print("END", i, flush=True)
                    i += 1
                    if i > 20000:
                        sys.exit(3)
    except KeyboardInterrupt:
        print("KEYBOARD INTERRUPT", flush=True)
        sys.exit(4)
    print("STOPPED", flush=True)
""")


def signal_mid_training(tmp_path, mode, signum):
    root = tmp_path / "dump"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=SRC, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, str(script), str(root), mode], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ended = 0
    try:
        for line in proc.stdout:
            if line.startswith("END"):
                ended = int(line.split()[1]) + 1
                if ended == 40:
                    proc.send_signal(signum)
                    break
        rest, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the process did not end after the signal")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return root, ended, proc.returncode, rest, err


def check_runs(root, ended):
    runs = sorted(DumpReader(str(root)).runs, key=lambda r: r.run_id)
    assert len(runs) >= ended
    for run in runs[:ended]:
        assert run.status == "complete" and run.missing_tensors == 0, (run.run_id, run.status,
                                                                        run.missing_tensors)
    return runs


def test_sigterm_default_action(tmp_path):
    root, ended, rc, _out, err = signal_mid_training(tmp_path, "default", signal.SIGTERM)
    assert rc == -signal.SIGTERM, err[-3000:]  # the exit status the default action gives
    check_runs(root, ended)
    assert DumpReader(str(root)).writers[0]["close"] is not None, "the writer was not closed"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_chains_to_the_program_handler(tmp_path, signum):
    root, ended, rc, out, err = signal_mid_training(tmp_path, "user-exit", signum)
    assert f"USER HANDLER {int(signum)}" in out, err[-3000:]
    assert rc == 5
    check_runs(root, ended)


def test_sigint_keeps_keyboard_interrupt(tmp_path):
    # Python's own SIGINT handler still runs after ours (a regression check:
    # this behaviour is what the program had before the hook).
    root, ended, rc, out, err = signal_mid_training(tmp_path, "default", signal.SIGINT)
    assert "KEYBOARD INTERRUPT" in out, err[-3000:]
    assert rc == 4
    check_runs(root, ended)
