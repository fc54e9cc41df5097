"""The documented low-level path gets TF's core metadata and partition graphs (tfdump_fast.capture_run).

``DumpWriter.begin_run`` -> ``run.debug_urls`` -> the user's own
``debug_utils.watch_graph`` on a real ``tf.compat.v1.Session``; a first run
that fails on a new executor keeps that executor's graphs.
"""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tf1 = tf.compat.v1

from tensorflow.python.debug.lib import debug_data, debug_utils  # noqa: E402

import tfdump_fast  # noqa: E402
from tfdump_fast import DumpReader, DumpWriter, TfdumpUsageError  # noqa: E402
from tfdump_fast.conversion import convert  # noqa: E402

from conftest import failing_graph  # noqa: E402


def debugged_run(writer, sess, fetch, feed):
    """One run on the documented low-level path, through capture_run."""
    run = writer.begin_run()
    options = tf1.RunOptions()
    debug_utils.watch_graph(options, sess.graph, debug_urls=run.debug_urls)
    with tfdump_fast.capture_run(writer, run, sess, options) as captured:
        return sess.run(fetch, feed_dict=feed, options=captured.run_options,
                        run_metadata=captured.run_metadata), captured


def test_a_run_failing_on_a_new_executor_keeps_its_graphs_and_core_metadata(tmp_path):
    g, x, after = failing_graph()
    root = str(tmp_path / "dump")
    with tf1.Session(graph=g) as sess, DumpWriter(root) as writer:
        with pytest.raises(tf.errors.InvalidArgumentError):
            debugged_run(writer, sess, after, {x: [1.0, -2.0]})
        value, captured = debugged_run(writer, sess, after, {x: [3.0, 4.0]})
        assert value.tolist() == [6.0, 8.0]
        assert captured.core_metadata["executor_step_index"] == 1 and captured.graph_hashes
    runs = DumpReader(root).runs
    assert [r.status for r in runs] == ["failed", "complete"]
    assert runs[0].error.startswith("InvalidArgumentError")
    # TF's own core metadata, as tfdbg's dump gets it.
    assert [r.core_metadata["executor_step_index"] for r in runs] == [0, 1]
    assert runs[0].core_metadata["output_names"] == ["after:0"]
    assert runs[0].core_metadata["input_names"] == ["x:0"]
    # The failed run has the graphs of the executor it built (RunMetadata was
    # empty); the next run of that executor refers to them.
    assert runs[0].metadata["graph_hashes"] and runs[0].metadata["graph_hashes"] == runs[1].metadata["graph_hashes"]
    assert runs[0].select("before")[0].value.tolist() == [2.0, -4.0]
    dirs = convert(root, str(tmp_path / "tfdbg"))
    dd = debug_data.DebugDumpDir(dirs[0])  # validates the failed run's dumps against its graphs
    assert "before" in dd.nodes() and dd.get_tensors("before", 0, "DebugIdentity")[0].tolist() == [2.0, -4.0]
    # Nothing TF published is left in memory (only directory entries).
    published = tfdump_fast.capture._publish_directory()
    assert [f for _, _, files in tf.io.gfile.walk(published.root) for f in files] == []


def test_another_fetch_is_another_executor_with_its_own_graphs(tmp_path):
    g, x, after = failing_graph()
    with g.as_default():
        other = tf.add(x, 1.0, name="other")
    root = str(tmp_path / "dump")
    with tf1.Session(graph=g) as sess, DumpWriter(root) as writer:
        debugged_run(writer, sess, after, {x: [1.0, 2.0]})
        debugged_run(writer, sess, other, {x: [1.0, 2.0]})
        debugged_run(writer, sess, after, {x: [1.0, 2.0]})
    runs = DumpReader(root).runs
    hashes = [tuple(r.metadata["graph_hashes"]) for r in runs]
    assert hashes[0] == hashes[2] and hashes[1] != hashes[0]
    assert [r.core_metadata["executor_step_index"] for r in runs] == [0, 0, 1]


def test_usage_errors_name_the_problem(tmp_path):
    g, x, after = failing_graph()
    with tf1.Session(graph=g) as sess, DumpWriter(str(tmp_path / "a")) as writer, \
            DumpWriter(str(tmp_path / "b")) as other:
        plain = writer.begin_run(capture=False)
        with pytest.raises(TfdumpUsageError, match="capture=False"):
            with tfdump_fast.capture_run(writer, plain, sess, tf1.RunOptions()):
                pass
        writer.end_run(plain)
        with pytest.raises(TfdumpUsageError, match="already ended"):
            with tfdump_fast.capture_run(writer, plain, sess, tf1.RunOptions()):
                pass
        run = writer.begin_run()
        with pytest.raises(TfdumpUsageError, match="not a run of this writer"):
            with tfdump_fast.capture_run(other, run, sess, tf1.RunOptions()):
                pass
        with pytest.raises(TfdumpUsageError, match="RunOptions"):
            with tfdump_fast.capture_run(writer, run, sess, {"debug_options": None}):
                pass
        writer.end_run(run)


def test_unusable_ram_file_system_falls_back_to_run_metadata_and_is_recorded(tmp_path, monkeypatch, caplog,
                                                                             no_ram_filesystem):
    import tfdump_fast.capture as capture_module

    monkeypatch.setattr(capture_module, "_published", None)
    monkeypatch.setattr(capture_module, "_logged", set())
    g, x, after = failing_graph()
    root = str(tmp_path / "dump")
    with caplog.at_level("WARNING", logger="tfdump_fast"):
        with tf1.Session(graph=g) as sess, DumpWriter(root) as writer:
            for _ in range(2):
                value, _ = debugged_run(writer, sess, after, {x: [3.0, 4.0]})
                assert np.allclose(value, [6.0, 8.0])
    lines = [r.getMessage() for r in caplog.records if "ram://" in r.getMessage()]
    assert len(lines) == 1 and "fix:" in lines[0]
    runs = DumpReader(root).runs
    assert [r.status for r in runs] == ["complete", "complete"]
    assert runs[0].metadata["graph_hashes"]  # from RunMetadata
    assert runs[0].core_metadata is None
    assert "ram://" in runs[0].metadata["degraded"]["tf_publish"] and "degraded" not in runs[1].metadata
