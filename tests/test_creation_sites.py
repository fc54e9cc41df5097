"""Where the user's code created each op: recorded once per graph (an
``op_creation_sites`` META event), read back by ``Run.creation_site`` and
printed by ``trace`` (API, text and --json)."""

import json
import logging
import os

import jsonschema
import numpy as np
import pytest
import tensorflow as tf

from tfdump_fast import DumpReader, DumpingDebugHook, DumpingDebugWrapperSession
from tfdump_fast import creation_sites
from tfdump_fast.analysis import trace
from tfdump_fast.cli import main
from tfdump_fast.cli_schemas import SCHEMAS

tf1 = tf.compat.v1
THIS_FILE = os.path.abspath(__file__)
LOG_LINE = None   # set by log_graph: the line that created the Log op


def log_graph():
    global LOG_LINE
    import inspect
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [2, 2], name="x")
        shifted = tf.subtract(x, 1.0, name="shifted")
        LOG_LINE = inspect.currentframe().f_lineno + 1
        h = tf.math.log(shifted, name="features/log")
        w = tf1.placeholder_with_default(np.full((2, 2), 0.5, np.float32), [2, 2], name="w")
        loss = tf.reduce_mean(tf.matmul(h, w, name="dense"), name="loss")
        gs = tf1.train.get_or_create_global_step()
        train = tf1.assign_add(gs, 1, name="train")
    return g, x, loss, train


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sites") / "dump")
    g, x, loss, train = log_graph()
    feeds = [np.full((2, 2), 3.0, np.float32), np.array([[0.5, 2.0], [1.0, 3.0]], np.float32),
             np.full((2, 2), 2.0, np.float32)]
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[DumpingDebugHook(root)]) as sess:
            for feed in feeds:
                sess.run([loss, train], feed_dict={x: feed})
    return root


def test_trace_names_the_line_that_created_the_origin_op(dump, capsys):
    reader = DumpReader(dump)
    run = reader.runs[1]
    assert run.creation_site("features/log:0") == (THIS_FILE, LOG_LINE, "log_graph")
    result = trace(run)
    origin = result["origin"]
    assert origin["op"] == "Log"
    assert origin["created_at"] == {"file": THIS_FILE, "line": LOG_LINE, "function": "log_graph"}
    # every op on the path was created by this file
    assert all(step["created_at"]["file"] == THIS_FILE for step in result["path"])

    code = main(["trace", dump, "--json"])
    out = capsys.readouterr().out
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMAS["trace"])
    assert code == 1 and doc["trace"]["origin"]["created_at"]["line"] == LOG_LINE

    code = main(["trace", dump, "1", "--from", "loss"])
    out = capsys.readouterr().out
    where = "created at %s:%d in log_graph" % (THIS_FILE, LOG_LINE)
    assert code == 1 and "origin: features/log:0 (op Log)" in out and where in out

    code = main(["show", dump, "1", "features/log:0"])
    out = capsys.readouterr().out
    assert code == 0 and where in out
    code = main(["show", dump, "1", "features/log:0", "--json"])
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, SCHEMAS["show_tensor"])
    assert doc["created_at"] == {"file": THIS_FILE, "line": LOG_LINE, "function": "log_graph"}


def test_sites_are_recorded_once_per_graph_not_per_run(dump):
    events = DumpReader(dump).events("op_creation_sites")
    assert len(DumpReader(dump).runs) == 3
    assert len(events) == 1
    (ev,) = events
    assert ev["first_op"] == 0 and ev["ops"] >= len(ev["sites"]) > 0
    assert "features/log" in ev["sites"]


def test_a_grown_graph_records_only_its_new_ops(tmp_path):
    g = tf.Graph()
    with g.as_default():
        a = tf1.placeholder(tf.float32, [], name="a")
        b = tf.multiply(a, 3.0, name="b")
        sess = DumpingDebugWrapperSession(tf1.Session(graph=g), str(tmp_path / "d"))
        sess.run(b, feed_dict={a: 2.0})
        sess.run(b, feed_dict={a: 2.0})
        c = tf.math.log(b - 10.0, name="c")
        sess.run(c, feed_dict={a: 2.0})
        sess.run(c, feed_dict={a: 2.0})
        sess.close()
    events = DumpReader(str(tmp_path / "d")).events("op_creation_sites")
    assert len(events) == 2
    assert "b" in events[0]["sites"] and "c" not in events[0]["sites"]
    assert "c" in events[1]["sites"] and "b" not in events[1]["sites"]
    assert events[1]["first_op"] == events[0]["ops"]
    run = DumpReader(str(tmp_path / "d")).runs[-1]
    assert run.creation_site("c")[0] == THIS_FILE


class _Op:
    def __init__(self, name, traceback):
        self.name, self.traceback = name, traceback


class _Graph:
    version = 3

    def __init__(self, ops):
        self._ops = ops

    def get_operations(self):
        return list(self._ops)


def test_ops_without_user_frames_are_left_out_and_errors_never_escape(caplog):
    tf_frames = [("/usr/lib/python3/site-packages/tensorflow/python/ops/math_ops.py", 10, "log", ""),
                 ("/usr/lib/python3/site-packages/keras/src/layers/core.py", 5, "call", "")]
    recorded = []
    rec = creation_sites.CreationSiteRecorder()
    rec.maybe_record(_Graph([_Op("a", tf_frames), _Op("b", [])]),
                     lambda name, **fields: recorded.append((name, fields)))
    assert recorded == [("op_creation_sites", {"graph_version": 3, "first_op": 0, "ops": 2,
                                                "files": [], "sites": {}})]

    class Broken(_Graph):
        def get_operations(self):
            raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="tfdump_fast"):
        rec.maybe_record(Broken([]), lambda name, **fields: None)
    assert "could not record where ops were created" in caplog.text


def test_a_failing_recorder_does_not_fail_the_step(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(creation_sites, "user_frame", broken)
    g = tf.Graph()
    with g.as_default():
        a = tf1.placeholder(tf.float32, [], name="a")
        y = tf.multiply(a, 3.0, name="y")
        sess = DumpingDebugWrapperSession(tf1.Session(graph=g), str(tmp_path / "d"))
        assert sess.run(y, feed_dict={a: 2.0}) == 6.0
        sess.close()
    reader = DumpReader(str(tmp_path / "d"))
    assert reader.events("op_creation_sites") == []
    assert len(reader.runs) == 1 and reader.runs[0].creation_site("y") is None
    assert trace(reader.runs[0]) is None
