"""No starvation: producers waiting for queue room never wait on idle-class writers.

Two CPU-bound processes keep the cores busy while a real training loop runs
with the hook and a queue small enough that TF's threads must wait for room.
The writers run in the background class (SCHED_IDLE when this process may
undo it, else SCHED_BATCH); while a producer waits they must be in the
normal class (SCHED_OTHER), or, with SCHED_IDLE, they would get no CPU at
all. Functional only: no timing is asserted.
"""

import json
import os
import subprocess
import sys
import threading

import pytest

tf = pytest.importorskip("tensorflow")
tf1 = tf.compat.v1

from tfdump_fast.hooks import DumpingDebugHook  # noqa: E402
from tfdump_fast.reader import DumpReader  # noqa: E402

from conftest import PKG_PARENT  # noqa: E402  (the package under test)

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling classes")

# Ends itself after 120 s even if the test process dies before killing it.
BUSY = "import signal\nsignal.alarm(120)\nwhile True:\n    pass\n"
STEPS = 6


def mlp_graph(width=256, batch=128, layers=3):
    """A small MLP training step that dumps several MiB per step."""
    g = tf.Graph()
    with g.as_default():
        tf1.set_random_seed(0)
        h = tf.random.normal([batch, width], seed=1, name="x")
        for i in range(layers):
            w = tf1.get_variable(f"w{i}", initializer=tf.random.stateless_uniform(
                [width, width], seed=[i, 7], minval=-0.05, maxval=0.05), use_resource=True)
            h = tf.nn.relu(tf.matmul(h, w))
        loss = tf.reduce_mean(tf.square(h))
        tf1.train.get_or_create_global_step()
        train = tf1.train.GradientDescentOptimizer(0.01).minimize(
            loss, global_step=tf1.train.get_global_step())
    return g, train


def writer_threads():
    return [t for t in threading.enumerate() if t.name.startswith("tfdump-writer-")]


class ClassSampler(threading.Thread):
    """Reads the writers' scheduling classes whenever producers wait for room.

    "Waiting" is a producer counted as waiting by the engine, or a queue over
    3/4 of its budget (the engine raises the writers there too): the second
    is what shows the writers' class on an engine without the stat.
    """

    def __init__(self, writer, queue_bytes):
        super().__init__(name="class-sampler", daemon=True)
        self.writer = writer
        self.queue_bytes = queue_bytes
        self.stop = threading.Event()
        self.while_waiting = []  # one set of writer classes per sample taken while producers wait

    def waiting(self):
        s = self.writer.stats()
        return s.get("producers_waiting", 0) > 0 or 4 * s["queued_bytes"] > 3 * self.queue_bytes

    def run(self):
        while not self.stop.wait(0.001):
            if not self.waiting():
                continue
            try:
                classes = {os.sched_getscheduler(t.native_id) for t in writer_threads()}
            except OSError:  # a writer thread ended meanwhile
                continue
            if self.waiting():
                self.while_waiting.append(classes)


def test_waiting_producers_raise_the_writers_under_cpu_contention(tmp_path):
    g, train = mlp_graph()
    root = str(tmp_path / "dump")
    queue_bytes = 1 << 20
    hook = DumpingDebugHook(root, log_usage=False, queue_bytes=queue_bytes, frame_bytes=256 << 10)
    busy = []
    sampler = None
    try:
        with g.as_default(), tf1.train.MonitoredSession(hooks=[hook]) as sess:
            writer = hook.writer
            sampler = ClassSampler(writer, queue_bytes)
            busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(2)]
            sampler.start()
            for _ in range(STEPS):
                sess.run(train)
            stats = writer.stats()
            sampler.stop.set()
            sampler.join(10)
    finally:
        for p in busy:
            p.kill()
        for p in busy:
            p.wait()
        if sampler is not None:
            sampler.stop.set()

    # While producers waited, the writers were in the normal class; they
    # were raised from a background class.
    assert sampler.while_waiting, "no producer ever waited: the queue is too large for this test"
    assert {os.SCHED_OTHER} in sampler.while_waiting
    assert stats["worker_background"] in ("idle", "batch")
    assert stats["worker_boosts"] >= 1

    # Training completed, with every tensor of every run.
    assert stats["tensors_dropped"] == 0
    runs = DumpReader(root).runs
    assert len(runs) == STEPS
    for run in runs:
        assert run.status == "complete"
        assert run.missing_tensors == 0 and run.dropped_tensors == 0
        assert len(run) == run.expected_tensors > 0


# Run as an unprivileged user (nobody when the tests run as root): with
# RLIMIT_NICE 0 and no CAP_SYS_NICE, a thread in SCHED_IDLE can never be
# raised again (sched(7)), so the writers must not enter it.
UNPRIVILEGED_CHILD = """
import json, os, resource, shutil, sys, tempfile, threading, time
import numpy as np
from tfdump_fast.writer import DumpWriter

if os.getuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
resource.setrlimit(resource.RLIMIT_NICE, (0, 0))


def classes():
    return sorted({os.sched_getscheduler(t.native_id) for t in threading.enumerate()
                   if t.name.startswith("tfdump-writer-")})


root = tempfile.mkdtemp(prefix="tfdump_unprivileged_")  # the test's tmp_path is root's
w = DumpWriter(os.path.join(root, "dump"))
deadline = time.monotonic() + 10
# Each writer sets its class as it starts: wait for both (or for the deadline).
while classes() != [os.SCHED_BATCH] and time.monotonic() < deadline:
    time.sleep(0.01)
before = classes()
w.write(np.arange(1000), "x")
w.flush()
out = {"background": w.stats().get("worker_background"), "before": before, "after": classes(),
       "tensors_written": w.stats()["tensors_written"]}
w.close()
shutil.rmtree(root)
print(json.dumps(out))
"""


def test_unprivileged_writers_never_enter_a_class_they_cannot_leave():
    env = dict(os.environ, PYTHONPATH=PKG_PARENT)
    proc = subprocess.run([sys.executable, "-c", UNPRIVILEGED_CHILD], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before"] == out["after"] == [os.SCHED_BATCH]
    assert out["background"] == "batch"
    assert out["tensors_written"] == 1
