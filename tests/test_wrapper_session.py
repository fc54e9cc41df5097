"""DumpingDebugWrapperSession: tfdbg's session wrapper on the tfdump-fast engine."""

import threading

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tf1 = tf.compat.v1

from tensorflow.python import debug as tf_debug  # noqa: E402
from tensorflow.core.protobuf.config_pb2 import CallableOptions  # noqa: E402
from tensorflow.python.debug.lib import debug_data, debug_utils  # noqa: E402

from tfdump_fast.conversion import convert  # noqa: E402
from tfdump_fast.errors import TfdumpUsageError  # noqa: E402
from tfdump_fast.hooks import DumpingDebugWrapperSession, WatchOptions  # noqa: E402
from tfdump_fast.reader import DumpReader  # noqa: E402
from tfdump_fast.writer import DumpWriter  # noqa: E402


@pytest.fixture
def graph():
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [2], name="x")
        v = tf1.get_variable("v", initializer=tf.constant([1.0, 2.0]), use_resource=False)
        y = tf.multiply(x, v, name="y")
        check = tf.debugging.assert_positive(y, name="check")
        with tf.control_dependencies([check]):
            z = tf.identity(y, name="z")
        init = tf1.global_variables_initializer()
    return g, x, y, z, init


@pytest.fixture
def sess(graph):
    g, *_, init = graph
    s = tf1.Session(graph=g)
    s.run(init)
    yield s
    s.close()


def nodes(run):
    return {k.node for k in run.watch_keys}


def test_run_returns_values_and_records_one_run_per_call(tmp_path, graph, sess):
    g, x, y, z, _ = graph
    wrapped = DumpingDebugWrapperSession(sess, str(tmp_path))
    assert wrapped.graph is g and wrapped.session is sess and wrapped.sess_str == sess.sess_str
    out = wrapped.run({"z": z, "y": y}, feed_dict={x: [1.0, 3.0]})
    assert out["z"].tolist() == [1.0, 6.0]
    assert wrapped.run(z, feed_dict={x: [2.0, 2.0]}).tolist() == [2.0, 4.0]
    assert wrapped.run_call_count == 2
    wrapped.flush()
    runs = DumpReader(str(tmp_path)).runs
    assert len(runs) == 2 and all(r.status == "complete" for r in runs)
    assert runs[0].fetches == repr({"z": z, "y": y})
    assert runs[1].feed_keys == repr({x: None}.keys())
    core = runs[0].core_metadata
    # tfdbg's watch_graph sets the debug global step to -1.
    assert core["global_step"] == -1
    assert core["input_names"] == ["x:0"] and core["output_names"] == ["y:0", "z:0"]
    assert runs[0].select("z")[0].value.tolist() == [1.0, 6.0]
    wrapped.close()


def test_graphs_only_for_new_executors(tmp_path, graph, sess):
    g, x, y, z, _ = graph
    wrapped = DumpingDebugWrapperSession(sess, str(tmp_path))
    for fetch in (z, z, y, z, y):
        wrapped.run(fetch, feed_dict={x: [1.0, 1.0]})
    wrapped.flush()
    runs = DumpReader(str(tmp_path)).runs
    assert ["attachment_hashes" in r.metadata for r in runs] == [True, False, True, False, False]
    assert [r.core_metadata["executor_step_index"] for r in runs] == [0, 1, 0, 2, 1]
    assert runs[0].metadata["graph_hashes"] == runs[3].metadata["graph_hashes"]
    assert runs[0].metadata["graph_hashes"] != runs[2].metadata["graph_hashes"]
    for d in convert(str(tmp_path), str(tmp_path / "conv")):
        debug_data.DebugDumpDir(d)  # every run has graphs holding its dumped nodes
    wrapped.close()


def test_user_run_options_are_honoured_not_mutated(tmp_path, graph, sess):
    g, x, y, z, _ = graph
    wrapped = DumpingDebugWrapperSession(sess, str(tmp_path))
    options = tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE)
    meta = tf1.RunMetadata()
    wrapped.run(z, feed_dict={x: [1.0, 1.0]}, options=options, run_metadata=meta)
    assert len(options.debug_options.debug_tensor_watch_opts) == 0
    assert len(meta.step_stats.dev_stats) > 0  # the trace the caller asked for
    wrapped.close()


def test_operror_is_returned_by_default_and_run_kept_failed(tmp_path, graph, sess):
    g, x, y, z, _ = graph
    wrapped = DumpingDebugWrapperSession(sess, str(tmp_path))
    result = wrapped.run(z, feed_dict={x: [1.0, -1.0]})
    # tfdbg's wrapper hands the OpError back instead of raising it.
    assert isinstance(result, tf.errors.InvalidArgumentError)
    wrapped.flush()
    run = DumpReader(str(tmp_path)).runs[0]
    assert run.status == "failed" and run.error.startswith("InvalidArgumentError")
    assert run.select("y")[0].value.tolist() == [1.0, -2.0]  # computed before the error
    assert "z" not in nodes(run)
    wrapped.close()


def test_pass_through_operrors_raises(tmp_path, graph, sess):
    g, x, y, z, _ = graph
    wrapped = DumpingDebugWrapperSession(sess, str(tmp_path), pass_through_operrors=True)
    with pytest.raises(tf.errors.InvalidArgumentError):
        wrapped.run(z, feed_dict={x: [1.0, -1.0]})
    wrapped.run(z, feed_dict={x: [1.0, 1.0]})
    wrapped.flush()
    assert [r.status for r in DumpReader(str(tmp_path)).runs] == ["failed", "complete"]
    wrapped.close()


def test_non_operror_exception_ends_run_and_propagates(tmp_path, graph, sess):
    g, x, y, z, _ = graph
    wrapped = DumpingDebugWrapperSession(sess, str(tmp_path))
    with pytest.raises(ValueError):  # wrong feed shape, raised by the Python session
        wrapped.run(z, feed_dict={x: [1.0, 2.0, 3.0]})
    wrapped.flush()
    run = DumpReader(str(tmp_path)).runs[0]
    assert run.status == "failed" and run.error.startswith("ValueError")
    wrapped.close()


def test_empty_fetches_pass_through(tmp_path, graph, sess):
    wrapped = DumpingDebugWrapperSession(sess, str(tmp_path))
    assert wrapped.run([]) == []
    assert wrapped.run({"a": []}) == {"a": []}
    wrapped.flush()
    assert DumpReader(str(tmp_path)).runs == []
    assert wrapped.run_call_count == 2
    wrapped.close()


def test_thread_name_filter(tmp_path, graph, sess):
    g, x, y, z, _ = graph
    wrapped = DumpingDebugWrapperSession(sess, str(tmp_path), thread_name_filter="MainThread$")
    out = {}
    t = threading.Thread(target=lambda: out.update(v=wrapped.run(z, feed_dict={x: [1.0, 1.0]})))
    t.start()
    t.join()
    assert out["v"].tolist() == [1.0, 2.0]
    wrapped.run(z, feed_dict={x: [1.0, 1.0]})
    wrapped.flush()
    runs = DumpReader(str(tmp_path)).runs
    assert [r.metadata["thread"] for r in runs] == ["MainThread"]
    wrapped.close()


def test_make_callable_is_debugged(tmp_path, graph, sess):
    g, x, y, z, _ = graph
    wrapped = DumpingDebugWrapperSession(sess, str(tmp_path))
    runner = wrapped.make_callable(z, feed_list=[x])
    assert runner([1.0, 2.0]).tolist() == [1.0, 4.0]
    assert runner([2.0, 2.0]).tolist() == [2.0, 4.0]
    wrapped.flush()
    runs = DumpReader(str(tmp_path)).runs
    assert len(runs) == 2
    assert runs[0].fetches == "None"  # what tfdbg records for a callable
    assert runs[0].metadata["callable_fetches"] == repr(z)
    assert runs[0].core_metadata["output_names"] == ["z:0"]
    assert runs[1].select("z")[0].value.tolist() == [2.0, 4.0]
    wrapped.close()


def test_callable_from_options_is_debugged(tmp_path, graph, sess):
    g, x, y, z, _ = graph
    wrapped = DumpingDebugWrapperSession(sess, str(tmp_path))
    opts = CallableOptions(feed=["x:0"], fetch=["z:0"])
    runner = wrapped._make_callable_from_options(opts)
    assert runner(np.array([3.0, 1.0], np.float32))[0].tolist() == [3.0, 2.0]
    assert runner(np.array([1.0, 1.0], np.float32))[0].tolist() == [1.0, 2.0]
    wrapped.flush()
    runs = DumpReader(str(tmp_path)).runs
    assert len(runs) == 2
    assert [r.select("z")[0].value.tolist() for r in runs] == [[3.0, 2.0], [1.0, 2.0]]
    assert runs[0].core_metadata["input_names"] == ["x:0"]
    for d in convert(str(tmp_path), str(tmp_path / "conv")):
        debug_data.DebugDumpDir(d)
    wrapped.close()


def test_argument_checks_match_tfdbg(tmp_path, graph, sess):
    g, x, y, z, _ = graph
    wrapped = DumpingDebugWrapperSession(sess, str(tmp_path))
    runner = sess.make_callable(z, feed_list=[x], accept_options=True)
    with pytest.raises(ValueError, match="callable_runner and fetches/feed_dict are mutually exclusive"):
        wrapped.run(z, callable_runner=runner)
    with pytest.raises(ValueError, match="callable_runner and callable_options are mutually exclusive"):
        wrapped.run(None, callable_runner=runner, callable_options=CallableOptions())
    with pytest.raises(NotImplementedError):
        wrapped.partial_run_setup([z])
    with pytest.raises(NotImplementedError):
        wrapped.partial_run(None, z)
    with pytest.raises(ValueError, match="does not have a method called 'should_stop'"):
        wrapped.should_stop()
    # tfdbg's exact message (issue #10: drop-in parity), not our own wording.
    with pytest.raises(TypeError, match=r"^Expected type \(<class 'tensorflow\.python\.client\.session\."
                                        r"BaseSession'>, <class 'tensorflow\.python\.training\."
                                        r"monitored_session\.MonitoredSession'>\); got type <class 'object'>$"):
        DumpingDebugWrapperSession(object(), str(tmp_path / "other"))
    with pytest.raises(TypeError, match="watch_fn is not callable"):
        DumpingDebugWrapperSession(sess, str(tmp_path / "other2"), watch_fn="all")
    wrapped.close()


def test_session_root_checks(tmp_path, sess):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="session_root path points to a file"):
        DumpingDebugWrapperSession(sess, str(tmp_path / "f"))
    with pytest.raises(ValueError, match="session_root path points to a non-empty directory"):
        DumpingDebugWrapperSession(sess, str(tmp_path))


def test_watch_fn_with_wrapper(tmp_path, graph, sess):
    g, x, y, z, _ = graph
    seen = []

    def watch_fn(fetches, feeds):
        seen.append(fetches)
        return WatchOptions(debug_ops=["DebugIdentity", "DebugNanCount"], node_name_regex_allowlist="^y$")

    wrapped = DumpingDebugWrapperSession(sess, str(tmp_path), watch_fn=watch_fn)
    wrapped.run(z, feed_dict={x: [1.0, 1.0]})
    wrapped.flush()
    run = DumpReader(str(tmp_path)).runs[0]
    assert seen == [z]
    assert sorted((k.node, k.debug_op) for k in run.watch_keys) == [("y", "DebugIdentity"),
                                                                     ("y", "DebugNanCount")]
    wrapped.close()


def test_bad_watch_options_raise_before_the_run(tmp_path, graph, sess):
    g, x, y, z, _ = graph
    wrapped = DumpingDebugWrapperSession(
        sess, str(tmp_path), watch_fn=lambda f, fd: WatchOptions(debug_ops="DebugFoo"))
    with pytest.raises(TfdumpUsageError, match="unknown debug op 'DebugFoo'"):
        wrapped.run(z, feed_dict={x: [1.0, 1.0]})
    wrapped.close()


def test_context_manager_and_close(tmp_path, graph):
    g, x, y, z, init = graph
    sess = tf1.Session(graph=g)
    wrapped = DumpingDebugWrapperSession(sess, str(tmp_path))
    with wrapped as default:
        assert tf1.get_default_session() is wrapped and default is wrapped
        wrapped.run(init)
    # Leaving the block flushed the dump (the session stays open, as in tfdbg).
    assert len(DumpReader(str(tmp_path)).runs) == 1
    wrapped.close()
    assert sess._closed and wrapped.writer.closed


def test_wraps_monitored_session(tmp_path, graph):
    g, x, y, z, init = graph
    with g.as_default():
        mon = tf1.train.MonitoredSession()
    wrapped = DumpingDebugWrapperSession(mon, str(tmp_path))
    assert wrapped.run(z, feed_dict={x: [1.0, 1.0]}).tolist() == [1.0, 2.0]
    assert wrapped.run_step_fn(lambda ctx: ctx.run_with_hooks(y, feed_dict={x: [2.0, 1.0]})).tolist() \
        == [2.0, 2.0]
    assert wrapped.should_stop() is False
    wrapped.close()
    assert len(DumpReader(str(tmp_path)).runs) == 2


def test_documented_low_level_path(tmp_path, graph, sess):
    g, x, y, z, _ = graph
    writer = DumpWriter(str(tmp_path))
    run = writer.begin_run(metadata={"fetches": repr(z)})
    options = tf1.RunOptions(output_partition_graphs=True)
    debug_utils.watch_graph(options, g, debug_urls=run.debug_urls)
    run_metadata = tf1.RunMetadata()
    try:
        sess.run(z, feed_dict={x: [1.0, 1.0]}, options=options, run_metadata=run_metadata)
    except Exception as e:  # pragma: no cover - not expected here
        writer.end_run(run, status="failed", error=str(e))
        raise
    writer.end_run(run, attachments=[pg.SerializeToString(deterministic=True)
                                     for pg in run_metadata.partition_graphs])
    writer.close()
    r = DumpReader(str(tmp_path)).runs[0]
    assert r.select("z")[0].value.tolist() == [1.0, 2.0] and len(r.graphs) == 1


def test_tfdbg_wrapper_watch_options_interchangeable(tmp_path, graph, sess):
    # tf_debug.WatchOptions and tfdump_fast.hooks.WatchOptions are one class.
    assert WatchOptions is tf_debug.WatchOptions
