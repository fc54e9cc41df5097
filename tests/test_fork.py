"""os.fork() with a live hook: the child never touches its parent's writer.

Real TensorFlow, the real hook, a real fork. The child exits normally (its
atexit handlers run); before, they closed the parent's writer (a second
``writer_close`` in the parent's store) and deleted the hook's private
publish directory under the parent's feet.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("tensorflow")

from tfdump_fast.reader import DumpReader  # noqa: E402

from conftest import PKG_PARENT as SRC  # noqa: E402
from conftest import scan_store  # noqa: E402

CHILD = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    from tfdump_fast.hooks import DumpingDebugHook

    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [None, 4], name="x")
        w = tf1.get_variable("w", [4, 4], use_resource=True)
        y = tf.reduce_sum(tf.matmul(x, w), name="y")
        gs = tf1.train.get_or_create_global_step()
        train = tf1.assign_add(gs, 1)
    feed = np.ones((2, 4), np.float32)
    hook = DumpingDebugHook(sys.argv[1])
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook]) as sess:
            for _ in range(3):
                sess.run([y, train], feed_dict={x: feed})
            tmp = os.environ["TMPDIR"]
            private = [n for n in os.listdir(tmp) if n.startswith("tfdump")]
            pid = os.fork()
            if pid == 0:
                # What a normal exit runs, without tearing down the TensorFlow
                # runtime the child inherited half of (its thread pools did not
                # survive the fork).
                import atexit
                atexit._run_exitfuncs()
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            publish_alive = all(os.path.isdir(os.path.join(tmp, n)) for n in private)
            for _ in range(3):
                sess.run([y, train], feed_dict={x: feed})
    print(json.dumps({"child_status": status, "private": private,
                      "publish_alive": publish_alive}), flush=True)
""")


def test_forked_child_leaves_parent_writer_alone(tmp_path):
    root = tmp_path / "dump"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, PYTHONPATH=SRC, TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(tmp))
    try:
        proc = subprocess.run([sys.executable, str(script), str(root)], env=env, capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the forked child hung closing its parent's writer at exit")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["child_status"] == 0
    assert result["publish_alive"], "the child's exit removed the parent's publish directory"

    # Exactly one writer_close, written by the parent after all its runs.
    _, events = scan_store(str(root))
    kinds = [e["event"] for e in events]
    assert kinds.count("writer_close") == 1, kinds
    assert kinds[-1] == "writer_close"
    runs = DumpReader(str(root)).runs
    assert len(runs) == 6 and all(r.status == "complete" and r.missing_tensors == 0 for r in runs)
    assert DumpReader(str(root)).writers[0]["close"] is not None
