"""``$TMPDIR`` filling up or turning read-only while training never stops a step.

Real training processes with the hook, real file systems: a small tmpfs
mounted as the trainer's ``$TMPDIR`` (root only), and a ``$TMPDIR`` whose
write permission is taken away (a trainer run by root loses the
capabilities that ignore permission bits). Before TF published its
graphs and core metadata to ``file://`` URLs under ``$TMPDIR``, a full one
made TF CHECK-fail on ``Close()`` (exit 134) and a read-only one failed or
aborted every later step.
"""

import ctypes
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import PKG_PARENT
from tfdump_fast import DumpReader

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux file systems")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root)")

# The trainer: a few steps, then it says "ready" and waits for "go" on stdin
# (the test changes $TMPDIR in between), then more steps. With FILL=1 it
# fills $TMPDIR itself right before the later steps.
TRAINER = textwrap.dedent("""
    import errno, os, sys
    import tensorflow as tf
    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    from tfdump_fast import DumpingDebugHook
    from tfdump_fast import published
    RAM_ROOT = getattr(published, "RAM_ROOT", "ram://tfdump-fast")

    def ram_count(what):
        if not tf.io.gfile.isdir(RAM_ROOT):
            return 0
        return sum(len(d) * (what == "entries") + len(f) for _, d, f in tf.io.gfile.walk(RAM_ROOT))

    def fill(directory):
        # Every byte of the file system, down to the last page.
        with open(os.path.join(directory, "filler"), "wb", buffering=0) as f:
            for chunk in (1 << 20, 4096, 1):
                try:
                    while True:
                        f.write(b"x" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc

    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [4], name="x")
        w = tf1.get_variable("w", initializer=tf.ones([4]), use_resource=True)
        loss = tf.reduce_sum(tf.square(x * w), name="loss")
        gs = tf1.train.get_or_create_global_step()
        train = tf.group(tf1.train.GradientDescentOptimizer(0.01).minimize(loss),
                         tf1.assign_add(gs, 1))
    hook = DumpingDebugHook(sys.argv[1])
    ok = 0
    with g.as_default(), tf1.train.MonitoredSession(hooks=[hook]) as sess:
        for _ in range(5):
            sess.run(train, feed_dict={x: [1.0, 2.0, 3.0, 4.0]}); ok += 1
        print("ready", flush=True)
        assert sys.stdin.readline().strip() == "go"
        if os.environ.get("FILL") == "1":
            fill(os.environ["TMPDIR"])
        for _ in range(20):
            sess.run(train, feed_dict={x: [1.0, 2.0, 3.0, 4.0]}); ok += 1
        # What TF published was read and deleted after each run.
        print("ram files while training", ram_count("files"))
    print("steps ok", ok, flush=True)
    # end() removed the hook's tree; only the kept top level remains.
    print("ram entries after end", ram_count("entries"))
""")


@pytest.fixture
def small_tmpfs(tmp_path):
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    # Larger than any free-space threshold a publish path might apply, so
    # that TF would really be asked to write there until it is full.
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", str(mount_point)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield str(mount_point)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def train_with_fault(tmp_path, tmpdir, fault=None, fill=False, preexec_fn=None):
    env = dict(os.environ, TMPDIR=tmpdir, TF_CPP_MIN_LOG_LEVEL="2", FILL="1" if fill else "0",
               PYTHONPATH=PKG_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    root = str(tmp_path / "dump")
    proc = subprocess.Popen([sys.executable, "-c", TRAINER, root], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec_fn)
    try:
        line = proc.stdout.readline()
        if line.strip() == "ready":
            if fault is not None:
                fault()
            proc.stdin.write("go\n")
            proc.stdin.flush()
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, line + out, err, root


def assert_trained_and_recorded(rc, out, err, root):
    assert rc == 0, f"the training process died (rc={rc}):\n{err[-3000:]}"
    assert "steps ok 25" in out, out + err[-3000:]
    assert "ram files while training 0" in out and "ram entries after end 0" in out, out
    runs = DumpReader(root).runs
    assert len(runs) == 25 and all(r.status == "complete" for r in runs), [r.status for r in runs]
    # What TF publishes (graphs of the new executor, its own core metadata)
    # never went through $TMPDIR: the later runs have it as the first ones.
    assert runs[0].metadata["graph_hashes"]
    assert runs[-1].metadata["graph_hashes"] == runs[0].metadata["graph_hashes"]
    assert [r.core_metadata["executor_step_index"] for r in runs] == list(range(25))


@needs_root
def test_tmpdir_filling_up_while_training(tmp_path, small_tmpfs):
    rc, out, err, root = train_with_fault(tmp_path, small_tmpfs, fill=True)
    assert_trained_and_recorded(rc, out, err, root)
    st = os.statvfs(small_tmpfs)
    assert st.f_bavail == 0  # it really was full


@needs_root
def test_tmpdir_turning_read_only_while_training(tmp_path, small_tmpfs):
    def remount_read_only():
        subprocess.run(["mount", "-o", "remount,ro", small_tmpfs], check=True)

    rc, out, err, root = train_with_fault(tmp_path, small_tmpfs, fault=remount_read_only)
    assert_trained_and_recorded(rc, out, err, root)


@needs_root
def test_tmpdir_unwritable_from_the_start(tmp_path, small_tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", small_tmpfs], check=True)
    rc, out, err, root = train_with_fault(tmp_path, small_tmpfs)
    assert_trained_and_recorded(rc, out, err, root)


def without_permission_override():
    """preexec_fn: root loses CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH at exec
    (dropped from the bounding set), so permission bits apply to it too."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


@pytest.mark.parametrize("cleaned", [False, True], ids=["chmod", "emptied-then-chmod"])
def test_tmpdir_losing_write_permission_while_training(tmp_path, cleaned):
    """``chmod -R a-w $TMPDIR`` between two steps (an admin), or a temp
    cleaner emptying it first (``rm -rf $TMPDIR/*``)."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()

    def take_write_permission():
        if cleaned:
            for entry in os.scandir(tmpdir):
                shutil.rmtree(entry.path)
        for parent, dirs, files in os.walk(tmpdir):
            for name in dirs + files:
                os.chmod(os.path.join(parent, name), 0o500)
        os.chmod(tmpdir, 0o500)

    try:
        rc, out, err, root = train_with_fault(
            tmp_path, str(tmpdir), fault=take_write_permission,
            preexec_fn=without_permission_override if os.geteuid() == 0 else None)
    finally:
        for parent, dirs, _ in os.walk(tmpdir):
            os.chmod(parent, 0o700)
            for name in dirs:
                os.chmod(os.path.join(parent, name), 0o700)
    assert_trained_and_recorded(rc, out, err, root)
