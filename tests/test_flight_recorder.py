"""The flight recorder: keep_last=K, keep_bytes, persist_on=("inf_nan", "error"), persist().

Real TensorFlow sessions (MonitoredSession with the hook, the wrapper
session), the real native engine, real files and real processes: a NaN fed
at step N persists exactly runs N-K..N with the values a full capture
records; runs of no trigger leave no tensor bytes on disk; a raising run and
``persist()`` are triggers; the ring stays within ``keep_bytes``; a trigger
survives the process ending right after it (kill -9, SIGTERM, normal exit).
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tf1 = tf.compat.v1
tf1.disable_eager_execution()

from tfdump_fast import _native  # noqa: E402
from tfdump_fast.errors import TfdumpUsageError  # noqa: E402
from tfdump_fast.hooks import DumpingDebugHook, DumpingDebugWrapperSession  # noqa: E402
from tfdump_fast.reader import DumpReader  # noqa: E402
from tfdump_fast.writer import DumpWriter  # noqa: E402

from conftest import PKG_PARENT as SRC, failing_graph  # noqa: E402

TRIGGER = "flight_recorder_trigger"


def graph():
    """x -> matmul with a resource variable -> relu -> sum; a global step."""
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [None, 4], name="x")
        w = tf1.get_variable("w", initializer=tf.ones([4, 3]), use_resource=True)
        y = tf.nn.relu(tf.matmul(x, w), name="y")
        z = tf.reduce_sum(y, name="z")
        gs = tf1.train.get_or_create_global_step()
        train = tf1.assign_add(gs, 1, name="train")
    return g, x, z, train


def feed(step, nan_at=None):
    value = np.full((2, 4), float(step + 1), np.float32)
    if step == nan_at:
        value[1, 2] = np.nan
    return value


def train(hook, steps, nan_at=None):
    g, x, z, step_op = graph()
    with g.as_default(), tf1.train.MonitoredSession(hooks=[hook]) as sess:
        for i in range(steps):
            sess.run([z, step_op], feed_dict={x: feed(i, nan_at)})


def by_call(reader):
    return {r.metadata["session_run_call"]: r for r in reader.runs}


def tensor_bytes_on_disk(root):
    """Bytes of the data shards past their file headers (the metadata shard aside)."""
    total = 0
    for name in os.listdir(root):
        if name.endswith(".tfdump") and f"_s{_native.META_SHARD_INDEX:03d}" not in name:
            total += os.path.getsize(os.path.join(root, name)) - _native.FILE_HEADER_SIZE
    return total


def test_nan_at_step_n_persists_exactly_the_k_runs_before_and_its_values_equal_full_capture(tmp_path):
    steps, nan_at, k = 10, 6, 3
    full_root, flight_root = str(tmp_path / "full"), str(tmp_path / "flight")
    full = DumpingDebugHook(full_root)
    train(full, steps, nan_at)
    hook = DumpingDebugHook(flight_root, keep_last=k)
    train(hook, steps, nan_at)

    flight = DumpReader(flight_root)
    persisted = by_call(flight)
    # session_run_call is 1-based: step i is call i + 1
    assert sorted(persisted) == [c + 1 for c in range(nan_at - k, nan_at + 1)]
    reference = by_call(DumpReader(full_root))
    for call, run in persisted.items():
        ref = reference[call]
        assert run.status == "complete" and run.missing_tensors == 0 and len(run) == len(ref) > 0
        ours = {(t.watch_key, t.seq): t for t in run}
        theirs = {(t.watch_key, t.seq): t for t in ref}
        assert sorted(k_[0] for k_ in ours) == sorted(k_[0] for k_ in theirs)
        by_key = {t.watch_key: t for t in ref}
        for t in run:
            np.testing.assert_array_equal(t.value, by_key[t.watch_key].value)
        assert run.graphs  # partition graphs, though the run that carried them was evicted

    (event,) = flight.events(TRIGGER)
    trigger_run = persisted[nan_at + 1]
    assert event["reason"] == "inf_nan" and event["run_id"] == trigger_run.run_id
    assert event["runs"] == [persisted[c + 1].run_id for c in range(nan_at - k, nan_at + 1)]
    # the first bad tensor: the fed x (or the first op that saw its nan)
    assert event["tensor"]["node"] in {"_arg_x_0_0", "x", "MatMul"} and event["tensor"]["debug_op"] == "DebugIdentity"
    assert np.isnan(trigger_run.select(event["tensor"]["node"])[0].value).any()
    stats = hook.stats()
    assert stats["nonfinite_triggers"] == 1 and stats["held_runs_released"] == k + 1
    assert stats["held_runs_evicted"] == steps - (k + 1)


def test_no_trigger_writes_no_tensor_bytes_and_no_runs(tmp_path):
    root = str(tmp_path / "d")
    hook = DumpingDebugHook(root, keep_last=4)
    train(hook, 12)
    stats = hook.stats()
    assert stats["tensors_accepted"] > 0 and stats["tensors_written"] == 0
    assert stats["held_runs_evicted"] == 12  # 8 pushed out of the ring, 4 let go at close
    assert stats["held_bytes"] == 0 and stats["records_outstanding"] == 0
    assert tensor_bytes_on_disk(root) == 0
    reader = DumpReader(root)
    assert reader.runs == [] and reader.events(TRIGGER) == []


def test_summaries_are_written_every_step_full_tensors_only_on_trigger(tmp_path):
    root = str(tmp_path / "d")
    watch = lambda fetches, feeds: tf_debug_watch(["DebugIdentity", "DebugNanCount"])  # noqa: E731
    hook = DumpingDebugHook(root, watch_fn=watch, keep_last=1)
    train(hook, 6, nan_at=4)
    runs = by_call(DumpReader(root))
    assert sorted(runs) == [1, 2, 3, 4, 5, 6]
    for call, run in runs.items():
        ops = {t.debug_op for t in run}
        assert run.missing_tensors == 0, call
        if call in (4, 5):  # the run before the nan, and the nan's
            assert ops == {"DebugIdentity", "DebugNanCount"}
        else:
            assert ops == {"DebugNanCount"}
    nan_counts = [t.value for t in runs[5] if t.debug_op == "DebugNanCount" and t.node_name == "_arg_x_0_0"]
    assert nan_counts == [1]


def tf_debug_watch(ops):
    from tensorflow.python.debug.wrappers import framework

    # DebugNanCount has no kernel for the int64 global step: tolerated, as in tfdbg
    return framework.WatchOptions(debug_ops=ops, tolerate_debug_op_creation_failures=True)


def test_raising_run_is_a_trigger_with_the_runs_before_it(tmp_path):
    root = str(tmp_path / "d")
    g, x, after = failing_graph()
    hook = DumpingDebugHook(root, keep_last=2, persist_on=("error",))
    with g.as_default(), tf1.train.MonitoredSession(hooks=[hook]) as sess:
        for v in (1.0, 2.0, 3.0, 4.0):
            sess.run(after, feed_dict={x: [v, v]})
        with pytest.raises(tf.errors.InvalidArgumentError):
            sess.run(after, feed_dict={x: [1.0, -5.0]})
        # MonitoredSession skips after_run of a raising run; the hook ends it
        # at the next run of the thread (or at end(), or at exit).
        sess.run(after, feed_dict={x: [9.0, 9.0]})
    reader = DumpReader(root)
    runs = by_call(reader)
    assert sorted(runs) == [3, 4, 5]
    assert runs[5].status == "failed"
    assert runs[5].select("before")[0].value.tolist() == [2.0, -10.0]
    assert runs[4].select("before")[0].value.tolist() == [8.0, 8.0]
    (event,) = reader.events(TRIGGER)
    assert event["reason"] == "error" and "Session.run raised" in event["error"]
    assert event["runs"] == [runs[3].run_id, runs[4].run_id, runs[5].run_id]


def test_wrapper_raising_run_and_manual_persist(tmp_path):
    root = str(tmp_path / "d")
    g, x, z, step_op = graph()
    with g.as_default():
        bad = tf.debugging.assert_positive(x, name="bad")
        sess = DumpingDebugWrapperSession(tf1.Session(graph=g), root, keep_last=2,
                                          pass_through_operrors=True)
        sess.run(tf1.global_variables_initializer())
        for i in range(4):
            sess.run(z, feed_dict={x: feed(i)})
        names = sess.persist("loss spike")
        assert len(names) == 2
        for i in range(3):
            sess.run(z, feed_dict={x: feed(i)})
        with pytest.raises(tf.errors.InvalidArgumentError):
            sess.run(bad, feed_dict={x: -feed(0)})
        sess.close()
    reader = DumpReader(root)
    manual, error = reader.events(TRIGGER)
    assert manual["reason"] == "manual" and manual["message"] == "loss spike"
    assert [r.name for r in reader.runs][:2] == names
    assert error["reason"] == "error" and len(error["runs"]) == 3
    assert [r.status for r in reader.runs] == ["complete"] * 4 + ["failed"]
    assert all(r.missing_tensors == 0 and len(r) > 0 for r in reader.runs)


def test_ring_stays_within_keep_bytes(tmp_path):
    """Runs of ~1.5 MiB (several zero-copy tensors) with a 4 MiB bound: the ring
    holds two of them, the oldest are evicted; a run larger than the bound
    alone keeps what fits and drops (and counts) the rest."""
    root = str(tmp_path / "d")
    keep_bytes = 4 << 20
    w = DumpWriter(root, keep_last=10, keep_bytes=keep_bytes, handle_signals=False)
    rng = np.random.RandomState(0)
    tensor = rng.randn(3, 64 << 10).astype(np.float32)  # 3 x 256 KiB
    for step in range(8):
        run = w.begin_run(capture=False)
        for i in range(2):
            w.write(tensor + step, f"t{i}", run=run)
        w.end_run(run)
        s = w.stats()
        assert s["held_bytes"] <= keep_bytes
        assert s["held_runs"] <= 2
    s = w.stats()
    assert s["held_runs_evicted"] >= 6 and s["tensors_written"] == 0
    big = w.begin_run(capture=False)
    for i in range(8):  # 6 MiB: more than the bound on its own
        w.write(tensor, f"big{i}", run=big)
        assert w.stats()["held_bytes"] <= keep_bytes
    counters = w.end_run(big)
    assert counters["dropped_tensors"] > 0 and w.stats()["held_overflow_tensors"] == counters["dropped_tensors"]
    assert w.persist("check") == [big.run_name]
    w.close()
    (run,) = DumpReader(root).runs
    assert len(run) == counters["tensors"] > 0
    assert run.missing_tensors == 0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64", "complex64", "complex128"])
def test_every_float_dtype_triggers_on_inf_and_nan_and_integers_never(tmp_path, dtype):
    from tfdump_fast import dtypes

    np_dtype = dtypes.to_numpy(dtypes.DT_BFLOAT16) if dtype == "bfloat16" else np.dtype(dtype)
    w = DumpWriter(str(tmp_path / "d"), keep_last=0, handle_signals=False)
    names = {}
    for bad in (None, np.inf, -np.inf, np.nan):
        run = w.begin_run(capture=False)
        value = np.ones(257, np_dtype)
        if bad is not None:
            value[200] = bad
        # integers whose bits read as inf/nan floats: never a trigger
        w.write(np.full(8, 0x7FC00000, np.int32), "bits", run=run)
        w.write(value, "v", run=run)
        w.end_run(run)
        names[run.run_name] = bad
    w.close()
    runs = DumpReader(str(tmp_path / "d")).runs
    assert sorted(r.name for r in runs) == sorted(n for n, b in names.items() if b is not None)
    assert all(len(r) == 2 for r in runs)


def test_options_are_checked(tmp_path):
    with pytest.raises(TfdumpUsageError, match="keep_last"):
        DumpWriter(str(tmp_path / "a"), keep_last=-1)
    with pytest.raises(TfdumpUsageError, match="keep_bytes"):
        DumpWriter(str(tmp_path / "b"), keep_last=2, keep_bytes=10)
    with pytest.raises(TfdumpUsageError, match="persist_on"):
        DumpWriter(str(tmp_path / "c"), keep_last=2, persist_on="inf_nan")
    with pytest.raises(TfdumpUsageError, match="persist_on"):
        DumpWriter(str(tmp_path / "c"), keep_last=2, persist_on=("nan",))
    w = DumpWriter(str(tmp_path / "e"), handle_signals=False)
    with pytest.raises(TfdumpUsageError, match="keep_last"):
        w.persist("x")
    w.close()


CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import tensorflow as tf
    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    from tfdump_fast.hooks import DumpingDebugHook

    root, how, nan_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [None, 64], name="x")
        h = x
        for i in range(3):
            w = tf1.get_variable("w%d" % i, [64, 64], use_resource=True,
                                 initializer=tf1.random_normal_initializer(stddev=0.1, seed=i))
            h = tf.nn.relu(tf.matmul(h, w))
        loss = tf.reduce_mean(h)
    hook = DumpingDebugHook(root, keep_last=2)
    with g.as_default(), tf1.train.MonitoredSession(hooks=[hook]) as sess:
        step = 0
        while True:
            value = np.ones((8, 64), np.float32)
            if step == nan_at:
                value[3, 5] = np.nan
            sess.run(loss, feed_dict={x: value})
            if step == nan_at:
                print("TRIGGERED", flush=True)
                if how == "exit":
                    sys.exit(0)  # a normal exit: the at-exit handler closes the writer
            step += 1
            if step > nan_at:
                time.sleep(0.01)  # training goes on after the trigger
""")


@pytest.mark.parametrize("how", ["kill9", "sigterm", "exit"])
def test_trigger_survives_the_process_ending_right_after_it(tmp_path, how):
    root = str(tmp_path / "d")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=SRC, TF_CPP_MIN_LOG_LEVEL="2")
    nan_at = 4
    child = subprocess.Popen([sys.executable, str(script), root, how, str(nan_at)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "TRIGGERED", child.stderr.read()
        if how == "kill9":
            time.sleep(1.0)  # the promise: on disk within 1 s of the trigger
            child.send_signal(signal.SIGKILL)
        elif how == "sigterm":
            child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    reader = DumpReader(root)
    runs = by_call(reader)
    # the nan's run (call nan_at + 1) and the two before it, all tensors present
    for call in (nan_at - 1, nan_at, nan_at + 1):
        assert call in runs, (how, sorted(runs))
        assert runs[call].status == "complete" and runs[call].missing_tensors == 0 and len(runs[call]) > 0
    (event,) = reader.events(TRIGGER)
    assert event["reason"] == "inf_nan" and event["run_id"] == runs[nan_at + 1].run_id
    assert set(runs) <= {nan_at - 1, nan_at, nan_at + 1}  # nothing of the untriggered runs


def test_ls_shows_triggers(tmp_path):
    root = str(tmp_path / "d")
    w = DumpWriter(root, keep_last=1, handle_signals=False)
    for step in range(3):
        run = w.begin_run(capture=False)
        value = np.ones(16, np.float32)
        if step == 2:
            value[7] = np.inf
        w.write(value, "grad", run=run)
        w.end_run(run)
    w.close()
    env = dict(os.environ, PYTHONPATH=SRC)
    out = subprocess.run([sys.executable, "-m", "tfdump_fast", "ls", root], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert "flight recorder trigger: inf_nan in grad:0 at run" in out and "2 run(s) written" in out
    js = subprocess.run([sys.executable, "-m", "tfdump_fast", "ls", "--json", root], env=env,
                        capture_output=True, text=True, check=True).stdout
    import json

    (trigger,) = json.loads(js)["triggers"]
    assert trigger["reason"] == "inf_nan" and trigger["tensor"]["node"] == "grad"


def test_raising_run_is_persisted_when_the_monitored_session_closes(tmp_path):
    """No next run, no end(): the session's close (its __exit__ after the
    raise) ends the run and fires the "error" trigger before the process goes on."""
    root = str(tmp_path / "d")
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [2], name="x")
        check = tf.debugging.assert_positive(tf.multiply(x, 2.0, name="before"), name="check")
    hook = DumpingDebugHook(root, keep_last=1)
    with pytest.raises(tf.errors.InvalidArgumentError):
        with g.as_default(), tf1.train.MonitoredSession(hooks=[hook]) as sess:
            sess.run(check, feed_dict={x: [1.0, 1.0]})
            sess.run(check, feed_dict={x: [1.0, -1.0]})
    hook.flush()  # the writer stays open (no end()); what the trigger released is written
    reader = DumpReader(root)
    assert [r.status for r in reader.runs] == ["complete", "failed"]
    (event,) = reader.events(TRIGGER)
    assert event["reason"] == "error"
    hook.close()


def test_concurrent_runs_of_several_threads(tmp_path):
    """Runs of four threads at once, one nan: the runs the trigger names are
    complete, nothing else is written, nothing stays held or queued."""
    import threading

    root = str(tmp_path / "d")
    w = DumpWriter(root, keep_last=3, handle_signals=False)
    errors = []

    def work(t):
        try:
            for step in range(20):
                run = w.begin_run(capture=False)
                for k in range(3):
                    value = np.full(300, t * 100 + step, np.float32)
                    if t == 2 and step == 10 and k == 1:
                        value[17] = np.nan
                    w.write(value, f"t{t}_{k}", run=run)
                w.end_run(run)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    stats = w.stats()
    w.close()
    assert stats["nonfinite_triggers"] == 1
    reader = DumpReader(root)
    (event,) = reader.events(TRIGGER)
    assert event["tensor"]["node"] == "t2_1"
    assert sorted(r.run_id for r in reader.runs) == sorted(event["runs"]) and 1 <= len(event["runs"]) <= 4
    for run in reader.runs:
        assert run.status == "complete" and run.missing_tensors == 0 and len(run) == 3
    assert w.stats()["held_bytes"] == 0 and w.stats()["records_outstanding"] == 0
