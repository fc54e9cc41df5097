"""Microbenchmarks (pytest-benchmark): DumpReader vs tfdbg's DebugDumpDir.

Both read one training step of the same graph: tfdbg's DebugDumpDir reads
what ``tf_debug.DumpingDebugHook`` wrote, DumpReader what
``tfdump_fast.DumpingDebugHook`` wrote. Every operation starts from a fresh
open (neither side keeps state between rounds); the page cache is warm after
the first round for both. The conversion benchmark writes tfdbg's layout
from our store; ``extra_info["tfdbg_write_s"]`` is what the same step cost
under tfdbg (its debugged step minus the plain step), the time conversion
must beat. Both start after ``os.sync()``: writing a gigabyte is at the mercy
of the page cache's dirty-page writeback, so neither side may inherit the
other's backlog.

Run::

    pytest benchmarks/bench_reader.py --benchmark-only --benchmark-group-by=group

Environment: ``TFDUMP_BENCH_MODEL`` (default ``rnn``: ~17k small tensors,
TensorList variants, a ~1.3 GB tfdbg dump) and ``TFDUMP_BENCH_SCALE``
(``full`` or ``tiny``), ``TFDUMP_BENCH_DIR`` (scratch directory; default a
pytest temporary directory).
"""

import importlib.util
import os
import shutil
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
if importlib.util.find_spec("tfdump_fast") is None:  # an uninstalled checkout
    sys.path.insert(0, os.path.join(REPO, "src"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFDBG_DISK_BYTES_LIMIT", str(1 << 50))

tf = pytest.importorskip("tensorflow")
pytest.importorskip("pytest_benchmark")

from tensorflow.python import debug as tf_debug  # noqa: E402

import tfdump_fast  # noqa: E402
from benchmarks import workloads as W  # noqa: E402
from tfdump_fast.reader import has_inf_or_nan  # noqa: E402

MODEL = os.environ.get("TFDUMP_BENCH_MODEL", "rnn")
SCALE = os.environ.get("TFDUMP_BENCH_SCALE", "full")


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """One step of the workload, dumped by tfdbg and by tfdump-fast."""
    W.graph_mode_setup()
    base = os.environ.get("TFDUMP_BENCH_DIR") or str(tmp_path_factory.mktemp("bench"))
    base = os.path.join(base, "%s-%s" % (MODEL, SCALE))
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    wl = W.build_graph(MODEL, SCALE, 0)

    def step(hooks):
        with wl.graph.as_default():
            W.unfinalize(wl.graph)
            with tf.compat.v1.train.MonitoredSession(hooks=hooks) as sess:
                sess.run(wl.train_op)  # warm up kernels outside the timed step
                os.sync()  # both sides start writing with no dirty pages pending
                t0 = time.perf_counter()
                sess.run(wl.train_op)
                return time.perf_counter() - t0

    plain = min(step([]) for _ in range(3))
    tfdbg_root = os.path.join(base, "tfdbg")
    tfdbg_step = step([tf_debug.DumpingDebugHook(tfdbg_root)])
    ours_root = os.path.join(base, "ours")
    hook = tfdump_fast.DumpingDebugHook(ours_root, log_usage=False)
    step([hook])
    # the timed step is the second run of each session: read that one
    run_dir = os.path.join(tfdbg_root, sorted(os.listdir(tfdbg_root))[-1])
    info = {"model": MODEL, "scale": SCALE, "plain_step_s": plain, "tfdbg_step_s": tfdbg_step,
            "tfdbg_write_s": max(0.0, tfdbg_step - plain)}
    yield {"tfdbg": run_dir, "ours": ours_root, "base": base, "info": info}
    if not os.environ.get("TFDUMP_BENCH_DIR"):
        shutil.rmtree(base, ignore_errors=True)


def _open(which, dumps):
    if which == "tfdbg":
        return tf_debug.DebugDumpDir(dumps["tfdbg"])
    return tfdump_fast.DumpReader(dumps["ours"])


def _bench(benchmark, dumps, group, which, fn):
    benchmark.group = group
    benchmark.extra_info.update(dumps["info"])
    return benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("which", ["tfdbg", "ours"])
def test_open(benchmark, dumps, which):
    """Open and index the step's dump (tfdbg lists and stats every file)."""
    _bench(benchmark, dumps, "open", which, lambda: _open(which, dumps))


@pytest.mark.parametrize("which", ["tfdbg", "ours"])
def test_list(benchmark, dumps, which):
    """Open, then enumerate every dumped tensor's record."""
    if which == "tfdbg":
        fn = lambda: list(_open(which, dumps).dumped_tensor_data)  # noqa: E731
    else:
        fn = lambda: list(_open(which, dumps).runs[-1].records)  # noqa: E731
    n = len(_bench(benchmark, dumps, "list", which, fn))
    benchmark.extra_info["tensors"] = n


@pytest.mark.parametrize("which", ["tfdbg", "ours"])
def test_find_inf_nan(benchmark, dumps, which):
    """Open, then find every tensor holding inf or nan."""
    if which == "tfdbg":
        fn = lambda: _open(which, dumps).find(tf_debug.has_inf_or_nan)  # noqa: E731
    else:
        fn = lambda: _open(which, dumps).runs[-1].find(has_inf_or_nan)  # noqa: E731
    benchmark.extra_info["matches"] = len(_bench(benchmark, dumps, "find_inf_nan", which, fn))


@pytest.mark.parametrize("which", ["tfdbg", "ours"])
def test_load_all(benchmark, dumps, which):
    """Open, then load every tensor's value."""
    if which == "tfdbg":
        fn = lambda: [d.get_tensor() for d in _open(which, dumps).dumped_tensor_data]  # noqa: E731
    else:
        fn = lambda: _open(which, dumps).runs[-1].values()  # noqa: E731
    benchmark.extra_info["loaded"] = len(_bench(benchmark, dumps, "load_all", which, fn))


def test_convert(benchmark, dumps):
    """Write the step in tfdbg's layout; compare with extra_info['tfdbg_write_s']."""
    reader = tfdump_fast.DumpReader(dumps["ours"])
    run = reader.runs[-1]
    dests = []

    def setup():
        # a new directory each round: deleting the previous round's 17k files
        # right before would charge their deletion to this round
        dests.append(os.path.join(dumps["base"], "converted-%d" % len(dests)))
        os.sync()  # as before tfdbg's timed step
        return (dests[-1],), {}

    benchmark.group = "convert"
    benchmark.extra_info.update(dumps["info"])
    benchmark.pedantic(lambda dest: tfdump_fast.convert(reader, dest, runs=[run]), setup=setup, rounds=3,
                       iterations=1)
    dd = tf_debug.DebugDumpDir(os.path.join(dests[-1], os.listdir(dests[-1])[0]))
    assert dd.size == len(run)
    for dest in dests:
        shutil.rmtree(dest, ignore_errors=True)
