"""DumpingDebugHook: tfdbg's DumpingDebugHook semantics on the tfdump-fast engine.

Real TensorFlow sessions, the real bridge and real files; the dump is read
back with DumpReader (and, where tfdbg's view matters, converted and opened
with tfdbg's own DebugDumpDir).
"""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tf1 = tf.compat.v1

from tensorflow.python import debug as tf_debug  # noqa: E402
from tensorflow.python.debug.lib import debug_data  # noqa: E402

from tfdump_fast.conversion import convert  # noqa: E402
from tfdump_fast.errors import TfdumpUsageError  # noqa: E402
from tfdump_fast.hooks import DumpingDebugHook  # noqa: E402
from tfdump_fast.reader import DumpReader  # noqa: E402

from conftest import PKG_PARENT as SRC, failing_graph  # noqa: E402  (the package under test)


def small_graph():
    """x -> matmul with a resource variable -> a while loop; plus a global step."""
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [None, 3], name="x")
        w = tf1.get_variable("w", initializer=tf.ones([3, 2]), use_resource=True)
        y = tf.matmul(x, w, name="y")
        loop = tf.while_loop(lambda i, a: i < 3, lambda i, a: (i + 1, a * 2.0),
                             [tf.constant(0, name="i0"), y], name="loop")
        z = tf.reduce_sum(loop[1], name="z")
        gs = tf1.train.get_or_create_global_step()
        train = tf1.assign_add(gs, 1, name="train")
    return g, x, z, train


FEED = [[1.0, 2.0, 3.0]]


def run_monitored(hook, steps=2, graph=None, extra_hooks=()):
    g, x, z, train = graph or small_graph()
    values = []
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook, *extra_hooks]) as sess:
            for _ in range(steps):
                values.append(sess.run([z, train], feed_dict={x: FEED}))
    return values


def node_names(run):
    return {k.node for k in run.watch_keys}


# ----------------------------------------------------------------- arguments


def test_session_root_created_if_missing(tmp_path):
    root = tmp_path / "a" / "b"
    hook = DumpingDebugHook(str(root))
    assert root.is_dir()
    hook.close()


def test_session_root_file_is_rejected(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="session_root path points to a file"):
        DumpingDebugHook(str(f))


def test_session_root_non_empty_dir_is_rejected_unless_allowed(tmp_path):
    (tmp_path / "other").write_text("x")
    with pytest.raises(ValueError, match="points to a non-empty directory"):
        DumpingDebugHook(str(tmp_path))
    hook = DumpingDebugHook(str(tmp_path), allow_existing=True)
    run_monitored(hook, steps=1)
    assert len(DumpReader(str(tmp_path)).runs) == 1


def test_session_root_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    hook = DumpingDebugHook("~/dumps")
    assert hook.session_root == str(tmp_path / "dumps")
    hook.close()


def test_watch_fn_not_callable(tmp_path):
    with pytest.raises(TypeError, match="watch_fn is not callable"):
        DumpingDebugHook(str(tmp_path / "d"), watch_fn=42)


def test_unknown_engine_option_names_it(tmp_path):
    with pytest.raises(TfdumpUsageError, match="'queue_size'.*queue_bytes"):
        DumpingDebugHook(str(tmp_path / "d"), queue_size=1)


def test_engine_option_is_passed_to_writer(tmp_path):
    hook = DumpingDebugHook(str(tmp_path / "d"), workers=1, codec="raw")
    assert hook.writer.options["workers"] == 1 and hook.writer.options["codec"] == "raw"
    hook.close()


def test_log_usage_is_accepted(tmp_path):
    DumpingDebugHook(str(tmp_path / "d"), log_usage=False).close()


def test_bad_thread_name_filter_regex(tmp_path):
    with pytest.raises(TfdumpUsageError, match="thread_name_filter.*not a valid regular expression"):
        DumpingDebugHook(str(tmp_path / "d"), thread_name_filter="Main(")


# ---------------------------------------------------------------- basic runs


def test_one_run_per_session_run_with_tfdbg_metadata(tmp_path):
    hook = DumpingDebugHook(str(tmp_path))
    values = run_monitored(hook, steps=3)
    assert [v[0] for v in values] == [96.0, 96.0, 96.0]
    runs = DumpReader(str(tmp_path)).runs
    assert len(runs) == 3
    for i, run in enumerate(runs):
        assert run.status == "complete"
        name, us, counter = run.name.split("_")
        assert name == "run" and int(counter) == i and len(us) == 16
        # tfdbg stores repr(fetches) and repr(feed_dict.keys()).
        assert run.fetches.startswith("[<tf.Tensor 'z:0'")
        assert run.feed_keys == "dict_keys([<tf.Tensor 'x:0' shape=(None, 3) dtype=float32>])"
        assert {"y", "z", "loop/body/_1/mul_0", "w"} <= node_names(run) or {"y", "z"} <= node_names(run)
        core = run.core_metadata
        assert core["input_names"] == ["x:0"]
        assert "z:0" in core["output_names"]
        assert core["target_nodes"] == []
        # MonitoredSession merges only the watches of hook options: the
        # global step TF sees is the default 0, as with tfdbg's hook.
        assert core["global_step"] == 0
        # TensorFlow's own counters, as TF publishes them to tfdbg: the
        # process-wide run id (other sessions' runs count too) and the
        # executor's run count.
        assert core["session_run_index"] > (runs[i - 1].core_metadata["session_run_index"] if i else 0)
        assert core["executor_step_index"] == i
        assert run.metadata["session_run_call"] == i + 1
        assert run.metadata["thread"] == threading.current_thread().name
    # Partition graphs: asked for on the new executor only, stored once.
    assert "attachment_hashes" in runs[0].metadata
    assert all("attachment_hashes" not in r.metadata for r in runs[1:])
    hashes = {tuple(r.metadata["graph_hashes"]) for r in runs}
    assert len(hashes) == 1 and len(runs[0].graphs) >= 1
    assert all(r.graphs == runs[0].graphs for r in runs)


def test_values_are_exact(tmp_path):
    hook = DumpingDebugHook(str(tmp_path))
    run_monitored(hook, steps=1)
    run = DumpReader(str(tmp_path)).runs[0]
    (y,) = run.select("y")
    np.testing.assert_array_equal(y.value, np.array([[6.0, 6.0]], dtype=np.float32))
    assert y.value.dtype == np.float32
    # While-loop iterations: the body's multiply runs three times.
    muls = [r.value for r in run.records if r.node_name.startswith("loop/") and
            r.node_name.endswith("mul_0")]
    assert [m.tolist() for m in muls] == [[[12.0, 12.0]], [[24.0, 24.0]], [[48.0, 48.0]]]


def test_converted_dump_opens_in_tfdbg(tmp_path):
    hook = DumpingDebugHook(str(tmp_path / "d"))
    run_monitored(hook, steps=2)
    dirs = convert(str(tmp_path / "d"), str(tmp_path / "c"))
    assert len(dirs) == 2
    for i, d in enumerate(dirs):
        dd = debug_data.DebugDumpDir(d)  # validates dumps against partition graphs
        assert dd.core_metadata.input_names == ["x:0"]
        assert dd.core_metadata.executor_step_index == i
        np.testing.assert_array_equal(dd.get_tensors("y", 0, "DebugIdentity")[0], [[6.0, 6.0]])
        assert dd.run_feed_keys_info.startswith("dict_keys([<tf.Tensor 'x:0'")


# -------------------------------------------------------------------- watch_fn


def test_watch_fn_called_per_run_with_fetches_and_feeds_and_may_be_stateful(tmp_path):
    calls = []

    def watch_fn(fetches, feeds):
        calls.append((fetches, feeds))
        # Stateful: watch y on the first run, z on the second.
        name = "y" if len(calls) == 1 else "z"
        return tf_debug.WatchOptions(node_name_regex_allowlist=f"^{name}$")

    hook = DumpingDebugHook(str(tmp_path), watch_fn=watch_fn)
    g, x, z, train = small_graph()
    run_monitored(hook, steps=2, graph=(g, x, z, train))
    assert len(calls) == 2
    fetches, feeds = calls[0]
    assert fetches == [z, train] and list(feeds) == [x]
    runs = DumpReader(str(tmp_path)).runs
    assert node_names(runs[0]) == {"y"} and node_names(runs[1]) == {"z"}


def test_legacy_tuple_watch_fn(tmp_path):
    hook = DumpingDebugHook(str(tmp_path),
                            watch_fn=lambda f, fd: (["DebugIdentity"], r"^(y|z)$", "MatMul"))
    run_monitored(hook, steps=1)
    assert node_names(DumpReader(str(tmp_path)).runs[0]) == {"y"}


def test_op_type_and_dtype_allowlists(tmp_path):
    hook = DumpingDebugHook(str(tmp_path / "a"), watch_fn=lambda f, fd: tf_debug.WatchOptions(
        op_type_regex_allowlist="(MatMul|Sum)"))
    run_monitored(hook, steps=1)
    assert node_names(DumpReader(str(tmp_path / "a")).runs[0]) == {"y", "z"}
    hook = DumpingDebugHook(str(tmp_path / "b"), watch_fn=lambda f, fd: tf_debug.WatchOptions(
        tensor_dtype_regex_allowlist="^int64$"))
    run_monitored(hook, steps=1)
    run = DumpReader(str(tmp_path / "b")).runs[0]
    assert len(run) > 0 and {r.dtype_name for r in run.records} == {"int64"}


def test_several_debug_ops_and_attributes(tmp_path):
    hook = DumpingDebugHook(str(tmp_path), watch_fn=lambda f, fd: tf_debug.WatchOptions(
        debug_ops=["DebugIdentity", "DebugNumericSummary", "DebugNanCount"],
        node_name_regex_allowlist="^y$"))
    run_monitored(hook, steps=1)
    run = DumpReader(str(tmp_path)).runs[0]
    by_op = {r.debug_op: r.value for r in run.records}
    assert set(by_op) == {"DebugIdentity", "DebugNumericSummary", "DebugNanCount"}
    assert by_op["DebugNanCount"].tolist() == [0]
    summary = by_op["DebugNumericSummary"]
    assert summary.dtype == np.float64 and summary[0] == 1.0  # is_initialized
    assert summary[1] == 2  # element count


def test_mute_if_healthy_attribute(tmp_path):
    hook = DumpingDebugHook(str(tmp_path), watch_fn=lambda f, fd: tf_debug.WatchOptions(
        debug_ops=["DebugNumericSummary(mute_if_healthy=true)"], node_name_regex_allowlist="^y$"))
    run_monitored(hook, steps=1)
    # y is healthy: the summary is muted.
    assert len(DumpReader(str(tmp_path)).runs[0]) == 0


def test_watch_nothing_records_an_empty_run(tmp_path):
    hook = DumpingDebugHook(str(tmp_path), watch_fn=lambda f, fd: tf_debug.WatchOptions(
        node_name_regex_allowlist="^no_such_node$"))
    values = run_monitored(hook, steps=2)
    assert values[0][0] == 96.0
    runs = DumpReader(str(tmp_path)).runs
    assert [len(r) for r in runs] == [0, 0]
    assert all(r.status == "complete" and r.core_metadata is None for r in runs)


def test_summaries_of_tensors_tf_cannot_summarise_are_skipped_not_failed(tmp_path):
    # TF's DebugNumericSummary has no kernel for resource / string tensors and
    # fails the step; ours skips them and counts them, tolerant or not.
    for tolerate in (False, True):
        root = str(tmp_path / str(tolerate))
        hook = DumpingDebugHook(root, watch_fn=lambda f, fd: tf_debug.WatchOptions(
            debug_ops=["DebugNumericSummary"], tolerate_debug_op_creation_failures=tolerate))
        run_monitored(hook, steps=1)
        stats = hook.stats()
        hook.close()
        run = DumpReader(root).runs[0]
        assert run.status == "complete" and len(run) > 0
        assert {r.debug_op for r in run.records} == {"DebugNumericSummary"}
        assert {r.dtype_name for r in run.records} == {"float64"}
        assert stats["summaries_skipped"] > 0
        assert stats["summaries_submitted"] == len(run)


@pytest.mark.parametrize("watch, message", [
    (tf_debug.WatchOptions(node_name_regex_allowlist="y("),
     r"node_name_regex_allowlist='y\(' is not a valid regular expression"),
    (tf_debug.WatchOptions(op_type_regex_allowlist="[a"), "op_type_regex_allowlist"),
    (tf_debug.WatchOptions(tensor_dtype_regex_allowlist="*float"), "tensor_dtype_regex_allowlist"),
    (tf_debug.WatchOptions(debug_ops=["DebugIdentiti"]), "unknown debug op 'DebugIdentiti'.*DebugIdentity"),
    (tf_debug.WatchOptions(debug_ops=["DebugIdentity(gated_grpc=true"]), "malformed debug op"),
    (tf_debug.WatchOptions(debug_ops=["DebugNumericSummary(mute=true)"]),
     "DebugNumericSummary has no attribute 'mute'.*mute_if_healthy"),
    (tf_debug.WatchOptions(debug_ops=["DebugIdentity(gated_grpc)"]), "malformed attribute"),
])
def test_bad_watch_options_are_named(tmp_path, watch, message):
    hook = DumpingDebugHook(str(tmp_path), watch_fn=lambda f, fd: watch)
    with pytest.raises(TfdumpUsageError, match=message):
        run_monitored(hook, steps=1)


def test_watch_fn_returning_garbage(tmp_path):
    hook = DumpingDebugHook(str(tmp_path), watch_fn=lambda f, fd: None)
    with pytest.raises(TypeError, match="watch_fn returned None"):
        run_monitored(hook, steps=1)


# ------------------------------------------------------------------- threads


def test_thread_name_filter(tmp_path):
    hook = DumpingDebugHook(str(tmp_path), thread_name_filter=r"worker-\d$")
    g, x, z, train = small_graph()
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook]) as sess:
            sess.run(z, feed_dict={x: FEED})  # MainThread: not debugged

            def work():
                sess.run(z, feed_dict={x: FEED})

            for name in ("worker-1", "other"):
                t = threading.Thread(target=work, name=name)
                t.start()
                t.join()
    runs = DumpReader(str(tmp_path)).runs
    assert [r.metadata["thread"] for r in runs] == ["worker-1"]


def test_concurrent_runs_land_in_their_own_runs(tmp_path):
    # The dequeue blocks until the other thread's enqueue runs, so both
    # Session.run calls are in flight at once and hold two capture slots.
    g = tf.Graph()
    with g.as_default():
        q = tf1.FIFOQueue(1, tf.float32, shapes=[[2]], name="q")
        value = tf1.placeholder(tf.float32, [2], name="value")
        enqueue = q.enqueue(tf.multiply(value, 10.0, name="scaled"), name="enq")
        got = tf.identity(q.dequeue(name="deq") + 1.0, name="got")
    hook = DumpingDebugHook(str(tmp_path))
    results = {}
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook]) as sess:
            t = threading.Thread(target=lambda: results.update(got=sess.run(got)), name="consumer")
            t.start()
            sess.run(enqueue, feed_dict={value: [1.0, 2.0]})
            t.join(timeout=60)
    assert results["got"].tolist() == [11.0, 21.0]
    runs = {r.metadata["thread"]: r for r in DumpReader(str(tmp_path)).runs}
    assert set(runs) == {"consumer", threading.current_thread().name}
    producer, consumer = runs[threading.current_thread().name], runs["consumer"]
    assert "scaled" in node_names(producer) and "got" not in node_names(producer)
    assert "got" in node_names(consumer) and "scaled" not in node_names(consumer)
    assert consumer.select("got")[0].value.tolist() == [11.0, 21.0]


# ----------------------------------------------------------------- failures


def test_failed_run_keeps_tensors_and_is_marked_failed(tmp_path):
    g, x, after = failing_graph()
    hook = DumpingDebugHook(str(tmp_path))
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook]) as sess:
            assert sess.run(after, feed_dict={x: [1.0, 2.0]}).tolist() == [2.0, 4.0]
            with pytest.raises(tf.errors.InvalidArgumentError):
                sess.run(after, feed_dict={x: [1.0, -2.0]})
            # The hook learns of the failure at the next run on this thread.
            sess.run(after, feed_dict={x: [3.0, 4.0]})
    runs = DumpReader(str(tmp_path)).runs
    assert [r.status for r in runs] == ["complete", "failed", "complete"]
    failed = runs[1]
    assert "Session.run raised" in failed.error
    assert failed.select("before")[0].value.tolist() == [2.0, -4.0]
    assert "after" not in node_names(failed)


def test_run_failing_on_a_new_executor_still_has_its_partition_graphs(tmp_path):
    """tfdbg's dump gets the partition graphs when TF builds the executor, so
    a first run that fails has them; RunMetadata is empty then. Ours must
    have them too, and tfdbg's DebugDumpDir must accept the converted run
    (it checks every dumped node against the graphs)."""
    g, x, after = failing_graph()
    hook = DumpingDebugHook(str(tmp_path / "dump"))
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook]) as sess:
            with pytest.raises(tf.errors.InvalidArgumentError):
                sess.run(after, feed_dict={x: [1.0, -2.0]})
            sess.run(after, feed_dict={x: [3.0, 4.0]})
            publish_root = hook._dumper.published.root
            assert publish_root.startswith("ram://") and tf.io.gfile.isdir(publish_root)
    assert not tf.io.gfile.exists(publish_root)  # end() removes TF's published files
    runs = DumpReader(str(tmp_path / "dump")).runs
    assert [r.status for r in runs] == ["failed", "complete"]
    assert runs[0].metadata["graph_hashes"] and runs[0].metadata["graph_hashes"] == runs[1].metadata["graph_hashes"]
    assert runs[0].core_metadata["executor_step_index"] == 0 and runs[1].core_metadata["executor_step_index"] == 1
    dirs = convert(str(tmp_path / "dump"), str(tmp_path / "tfdbg"))
    dd = debug_data.DebugDumpDir(dirs[0])  # validates the failed run's dumps against its graphs
    assert "before" in dd.nodes() and dd.get_tensors("before", 0, "DebugIdentity")[0].tolist() == [2.0, -4.0]


def test_tf_publish_unavailable_never_fails_the_run_and_is_recorded(tmp_path, monkeypatch, caplog,
                                                                   no_ram_filesystem):
    """Without a usable ram:// file system (injected: every call raises what
    TF raises for an unknown scheme) the hook does not ask TF to publish,
    logs one line with the cause and the fix, and the store records it."""
    g, x, z, train = small_graph()
    hook = DumpingDebugHook(str(tmp_path / "dump"))
    with caplog.at_level("WARNING", logger="tfdump_fast"):
        with g.as_default():
            with tf1.train.MonitoredSession(hooks=[hook]) as sess:
                for _ in range(3):
                    sess.run(train, feed_dict={x: FEED})
    lines = [r.getMessage() for r in caplog.records if "ram://" in r.getMessage()]
    assert len(lines) == 1 and "not implemented" in lines[0] and "fix:" in lines[0], lines
    runs = DumpReader(str(tmp_path / "dump")).runs
    assert [r.status for r in runs] == ["complete"] * 3
    assert "attachment_hashes" in runs[0].metadata  # graphs from RunMetadata instead
    assert [r.core_metadata["session_run_index"] for r in runs] == [0, 1, 2]  # the hook's own account
    degraded = [r.metadata.get("degraded") for r in runs]
    assert degraded[0] and "ram://" in degraded[0]["tf_publish"] and degraded[1:] == [None, None]


def test_out_of_range_ends_loop_and_end_records_the_error(tmp_path):
    g = tf.Graph()
    with g.as_default():
        ds = tf.data.Dataset.from_tensor_slices(np.arange(2, dtype=np.int64))
        nxt = tf.identity(tf1.data.make_one_shot_iterator(ds).get_next(), name="nxt")
    hook = DumpingDebugHook(str(tmp_path))
    seen = []
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook]) as sess:
            while not sess.should_stop():
                seen.append(int(sess.run(nxt)))
    assert seen == [0, 1]
    runs = DumpReader(str(tmp_path)).runs
    assert [r.status for r in runs] == ["complete", "complete", "failed"]
    assert runs[2].error.startswith("OutOfRangeError")
    assert [r.select("nxt")[0].value.tolist() for r in runs[:2]] == [0, 1]


# --------------------------------------------------------- monitored sessions


def test_monitored_training_session_with_other_hooks(tmp_path):
    g, x, z, train = small_graph()
    hook = DumpingDebugHook(str(tmp_path / "d"))
    with g.as_default():
        log_hook = tf1.train.LoggingTensorHook({"z": z}, every_n_iter=2)
        with tf1.train.MonitoredTrainingSession(
                hooks=[hook, log_hook, tf1.train.StopAtStepHook(last_step=3)],
                checkpoint_dir=None, save_summaries_steps=None, log_step_count_steps=None) as sess:
            while not sess.should_stop():
                sess.run(train, feed_dict={x: FEED})
    runs = DumpReader(str(tmp_path / "d")).runs
    assert len(runs) == 3 and all(r.status == "complete" for r in runs)
    # The logging hook adds z to every other run; the dump has what ran.
    assert ["z" in node_names(r) for r in runs] == [True, False, True]
    assert hook.writer.closed  # end() flushed and closed


class FetchOnSecondRun(tf1.train.SessionRunHook):
    """A hook whose extra fetch changes TensorFlow's executor on one run only."""

    def __init__(self, tensor):
        self.tensor, self.n = tensor, 0

    def before_run(self, run_context):
        self.n += 1
        return tf1.train.SessionRunArgs({"extra": self.tensor}) if self.n == 2 else None


def test_other_hooks_fetches_get_their_own_graphs_and_core_names(tmp_path):
    g, x, z, train = small_graph()
    hook = DumpingDebugHook(str(tmp_path / "d"))
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook, FetchOnSecondRun(z)]) as sess:
            for _ in range(3):
                sess.run(train, feed_dict={x: FEED})
    runs = DumpReader(str(tmp_path / "d")).runs
    assert ["z" in node_names(r) for r in runs] == [False, True, False]
    # tfdbg's core metadata lists what really ran, other hooks' fetches included.
    assert ["z:0" in r.core_metadata["output_names"] for r in runs] == [False, True, False]
    # The second run used another executor: its graph contains z, the others' not.
    for d in convert(str(tmp_path / "d"), str(tmp_path / "c")):
        dd = debug_data.DebugDumpDir(d)  # raises if a dumped node is missing from the graphs
        graph_nodes = {n.name for pg in dd.partition_graphs() for n in pg.node}
        assert ("z" in graph_nodes) == ("z" in dd.nodes())


class RecordMergedOptions(tf1.train.SessionRunHook):
    """Records, per run, whether the merged RunOptions asked for partition graphs."""

    def __init__(self):
        self.asked = []

    def after_run(self, run_context, run_values):
        self.asked.append(bool(run_values.options.output_partition_graphs))


def test_other_hooks_runs_take_graphs_from_tf_publishing_not_run_metadata(tmp_path):
    # Another hook that may change the fetches: the executor is named after
    # the run, and a new one's graphs come from what TF publishes, so no run
    # makes TF copy every partition graph into RunMetadata.
    g, x, z, train = small_graph()
    hook, probe = DumpingDebugHook(str(tmp_path / "d")), RecordMergedOptions()
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook, FetchOnSecondRun(z), probe]) as sess:
            for _ in range(4):
                sess.run(train, feed_dict={x: FEED})
    assert probe.asked == [False] * 4
    runs = DumpReader(str(tmp_path / "d")).runs
    assert all(r.graphs for r in runs)
    # Runs 1, 3 and 4 ran the same executor: the same graphs, stored once.
    assert runs[0].metadata["graph_hashes"] == runs[2].metadata["graph_hashes"] == runs[3].metadata["graph_hashes"]
    assert runs[1].metadata["graph_hashes"] != runs[0].metadata["graph_hashes"]
    assert ["attachment_hashes" in r.metadata for r in runs] == [True, True, False, False]


def test_unnamed_executor_falls_back_to_run_metadata_graphs(tmp_path, monkeypatch):
    # Should TF's MonitoredSession internals change so that the executor
    # cannot be named after the run, later runs ask RunMetadata again and
    # every run still has its graphs.
    from tfdump_fast import _tf_private

    monkeypatch.setattr(_tf_private, "hooked_run_args", lambda run_context: None)
    g, x, z, train = small_graph()
    hook, probe = DumpingDebugHook(str(tmp_path / "d")), RecordMergedOptions()
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook, FetchOnSecondRun(z), probe]) as sess:
            for _ in range(3):
                sess.run(train, feed_dict={x: FEED})
    assert probe.asked == [False, True, True]
    runs = DumpReader(str(tmp_path / "d")).runs
    assert [bool(r.graphs) for r in runs] == [True, True, True]
    assert ("z" in node_names(runs[1])) and not ("z" in node_names(runs[2]))


def test_constant_fetch_hooks_keep_graphs_requested_once(tmp_path):
    g, x, z, train = small_graph()
    hook = DumpingDebugHook(str(tmp_path))
    with g.as_default():
        with tf1.train.MonitoredSession(
                hooks=[hook, tf1.train.StopAtStepHook(last_step=3),
                       tf1.train.StepCounterHook(output_dir=str(tmp_path / "sc"))]) as sess:
            while not sess.should_stop():
                sess.run(train, feed_dict={x: FEED})
    runs = DumpReader(str(tmp_path)).runs
    assert len(runs) == 3
    assert ["attachment_hashes" in r.metadata for r in runs] == [True, False, False]
    assert [r.core_metadata["executor_step_index"] for r in runs] == [0, 1, 2]
    # The core metadata names include the hooks' global-step fetch, as tfdbg's do.
    assert len(runs[0].core_metadata["output_names"]) > 1


def test_singular_monitored_session(tmp_path):
    g, x, z, train = small_graph()
    hook = DumpingDebugHook(str(tmp_path))
    with g.as_default():
        with tf1.train.SingularMonitoredSession(hooks=[hook]) as sess:
            sess.run(z, feed_dict={x: FEED})
            sess.raw_session().run(z, feed_dict={x: FEED})  # bypasses hooks
    assert len(DumpReader(str(tmp_path)).runs) == 1


def test_hook_reused_after_end(tmp_path):
    hook = DumpingDebugHook(str(tmp_path))
    run_monitored(hook, steps=1)
    run_monitored(hook, steps=2)
    reader = DumpReader(str(tmp_path))
    assert len(reader.runs) == 3 and len(reader.writers) == 2


def test_flush_makes_finished_runs_readable(tmp_path):
    g, x, z, train = small_graph()
    hook = DumpingDebugHook(str(tmp_path))
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook]) as sess:
            sess.run(z, feed_dict={x: FEED})
            hook.flush()
            runs = DumpReader(str(tmp_path)).runs
            assert len(runs) == 1 and runs[0].status == "complete"
            assert runs[0].missing_tensors == 0 and len(runs[0]) > 0


def run_script(code, tmp_path):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_exit_without_end_still_flushes(tmp_path):
    root = tmp_path / "d"
    proc = run_script(f"""
        import tensorflow as tf
        from tfdump_fast import DumpingDebugHook
        tf1 = tf.compat.v1
        with tf.Graph().as_default():
            x = tf.constant([1.0, 2.0], name="x")
            y = tf.multiply(x, 3.0, name="y")
            bad = tf.debugging.assert_negative(y, name="bad")
            sess = tf1.train.MonitoredSession(hooks=[DumpingDebugHook({str(root)!r})])
            sess.run(y)
            sess.run(bad)  # raises; the interpreter exits, end() is never called
        """, tmp_path)
    assert proc.returncode != 0 and "InvalidArgumentError" in proc.stderr
    runs = DumpReader(str(root)).runs
    assert [r.status for r in runs] == ["complete", "failed"]
    assert runs[1].error.startswith("InvalidArgumentError")
    assert runs[0].select("y")[0].value.tolist() == [3.0, 6.0]


def test_demo_runs(tmp_path, capsys):
    from tfdump_fast import demo

    root = tmp_path / "demo"
    assert demo.main(["--session-root", str(root), "--steps", "4", "--every", "2"]) == 0
    out = capsys.readouterr().out
    assert f"dumping to {root}" in out
    assert "The dump: 3 runs" in out  # global steps 0, 2 and the evaluation at 4
    assert "The while loop ran 8 iterations" in out
    assert "_arg_x" in out  # the NaN of the evaluation batch was found
    assert demo.main(["--session-root", str(root)]) == 2  # not empty any more


def test_writer_trouble_never_stops_training(tmp_path, caplog):
    g, x, z, train = small_graph()
    hook = DumpingDebugHook(str(tmp_path))
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook]) as sess:
            sess.run(z, feed_dict={x: FEED})
            hook.writer.close()  # stands in for a writer that failed (disk gone, ...)
            with caplog.at_level("ERROR", logger="tfdump_fast"):
                values = [sess.run(z, feed_dict={x: FEED}) for _ in range(2)]
    assert values == [96.0, 96.0]
    assert "could not start a debugged run" in caplog.text
    assert caplog.text.count("could not start a debugged run") == 1  # logged once
    assert len(DumpReader(str(tmp_path)).runs) == 1


def test_bridge_trouble_is_reported_at_construction(tmp_path):
    root = tmp_path / "d"
    env_code = f"""
        import os
        os.environ["TFDUMP_FAST_BRIDGE_LIB"] = {str(tmp_path / "missing.so")!r}
        from tfdump_fast import DumpingDebugHook, TfdumpBridgeError
        try:
            DumpingDebugHook({str(root)!r})
        except TfdumpBridgeError as e:
            print("BRIDGE ERROR:", e)
        """
    proc = run_script(env_code, tmp_path)
    assert "BRIDGE ERROR:" in proc.stdout and "TFDUMP_FAST_BRIDGE_LIB" in proc.stdout, proc.stderr
    assert os.listdir(root) == []  # nothing written: a retry may reuse the directory


class AbortOnce(tf1.train.SessionRunHook):
    """Raises AbortedError from after_run once, as a preempted worker would."""

    def __init__(self, when):
        self.when, self.n, self.sessions = when, 0, 0

    def after_create_session(self, session, coord):
        self.sessions += 1

    def after_run(self, run_context, run_values):
        self.n += 1
        if self.n == self.when:
            raise tf.errors.AbortedError(None, None, "preempted")


def test_recovery_after_aborted_session(tmp_path):
    # MonitoredSession replaces its session after an AbortedError and retries
    # the run; the new session builds new executors, so graphs are asked again.
    g, x, z, train = small_graph()
    hook, abort = DumpingDebugHook(str(tmp_path)), AbortOnce(when=2)
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[abort, hook]) as sess:
            out = [float(sess.run(z, feed_dict={x: FEED})) for _ in range(2)]
    assert out == [96.0, 96.0] and abort.sessions == 2
    runs = DumpReader(str(tmp_path)).runs
    # The aborted attempt never reached our after_run: kept, marked failed.
    assert [r.status for r in runs] == ["complete", "failed", "complete"]
    assert "attachment_hashes" in runs[2].metadata
    # Executors are per session: the new session's count starts again.
    assert runs[0].core_metadata["executor_step_index"] == 0
    assert runs[2].core_metadata["executor_step_index"] == 0
