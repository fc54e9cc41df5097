"""Events recorded in the store: DumpWriter.record_event and what the hooks record with it.

Real writers and files; the hook cases use real tf.compat.v1 sessions.
``TFDBG_DISK_BYTES_LIMIT`` being reached and TensorFlow's ram:// publish path
being unusable are each recorded once as an event (docs/FORMAT.md, "META
events") and read back through ``DumpReader.events``.
"""

import json
import logging

import numpy as np
import pytest

from conftest import scan_store
from tfdump_fast import DumpWriter
from tfdump_fast.errors import TfdumpClosedError, TfdumpError, TfdumpTypeError, TfdumpUsageError
from tfdump_fast.reader import DumpReader


def test_record_event_roundtrip(tmp_path):
    root = str(tmp_path / "d")
    with DumpWriter(root) as w:
        run = w.begin_run(capture=False)
        w.write(np.arange(3.0), "x", run=run)
        w.end_run(run)
        w.record_event("lr_changed", step=7, lr=0.5, tags=["a", "b"], detail={"from": 1.0})
        w.record_event("lr_changed", step=9, lr=0.25)
        w.record_event("checkpoint_saved", path="/ckpt/model-9")
        writer_name = w.writer_name
    reader = DumpReader(root)
    events = reader.events()
    assert [e["event"] for e in events] == ["lr_changed", "lr_changed", "checkpoint_saved"]
    assert events[0]["step"] == 7 and events[0]["lr"] == 0.5 and events[0]["tags"] == ["a", "b"]
    assert events[0]["detail"] == {"from": 1.0} and events[0]["writer_id"] == writer_name
    assert all(isinstance(e["wall_us"], int) for e in events)
    assert [e["step"] for e in reader.events("lr_changed")] == [7, 9]
    assert reader.events("nothing_like_it") == []
    assert reader.verify() == []
    # The run bookkeeping is not among the events.
    _, meta = scan_store(root)
    assert {e["event"] for e in meta} >= {"run_begin", "run_end", "lr_changed"}


def test_record_event_survives_kill_without_close(tmp_path):
    """Written at once: a reader sees the event while the writer is still open."""
    root = str(tmp_path / "d")
    w = DumpWriter(root)
    try:
        w.record_event("started", config=json.loads('{"batch": 32}'))
        assert DumpReader(root).events("started")[0]["config"] == {"batch": 32}
    finally:
        w.close()


@pytest.mark.parametrize("name, fields, error, words", [
    ("", {}, TfdumpUsageError, "event name"),
    ("Upper", {}, TfdumpUsageError, "lower-case"),
    ("has space", {}, TfdumpUsageError, "lower-case"),
    ("x" * 65, {}, TfdumpUsageError, "64"),
    (7, {}, TfdumpUsageError, "event name"),
    ("run_end", {}, TfdumpUsageError, "records itself"),
    ("writer_close", {}, TfdumpUsageError, "records itself"),
    ("ok", {"wall_us": 1}, TfdumpUsageError, "wall_us"),
    ("ok", {"writer_id": "w"}, TfdumpUsageError, "writer_id"),
    ("ok", {"value": float("nan")}, TfdumpTypeError, "JSON"),
    ("ok", {"value": np.arange(3)}, TfdumpTypeError, "JSON"),
    ("ok", {"value": b"bytes"}, TfdumpTypeError, "JSON"),
])
def test_record_event_validates(tmp_path, name, fields, error, words):
    with DumpWriter(str(tmp_path / "d")) as w:
        with pytest.raises(error, match=words):
            w.record_event(name, **fields)
        assert isinstance(error("x"), TfdumpError)
    assert DumpReader(str(tmp_path / "d")).events() == []


def test_record_event_after_close(tmp_path):
    w = DumpWriter(str(tmp_path / "d"))
    w.close()
    with pytest.raises(TfdumpClosedError):
        w.record_event("late")


def test_events_name_validated(tmp_path):
    with DumpWriter(str(tmp_path / "d")) as w:
        w.record_event("a")
    with pytest.raises(TfdumpUsageError, match="event type"):
        DumpReader(str(tmp_path / "d")).events(3)


# ----------------------------------------------------------------- the hooks

tf = pytest.importorskip("tensorflow")
tf1 = tf.compat.v1
tf1.disable_eager_execution()


def counter_graph():
    g = tf.Graph()
    with g.as_default():
        v = tf1.Variable(10.0, name="v")
        delta = tf.constant(1.0, name="delta")
        inc_v = tf1.assign_add(v, delta, name="inc_v")
        tf1.train.get_or_create_global_step()
    return g, inc_v


def delta_only(fetches, feeds):
    return "DebugIdentity", r".*delta.*", r".*"


def test_tfdbg_byte_limit_reached_is_recorded_once(tmp_path, monkeypatch):
    from tfdump_fast.hooks import DumpingDebugHook

    monkeypatch.setenv("TFDBG_DISK_BYTES_LIMIT", "10")
    g, inc_v = counter_graph()
    hook = DumpingDebugHook(str(tmp_path / "dump"), watch_fn=delta_only)
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook]) as mon:
            for _ in range(5):
                mon.run(inc_v)
    assert hook.stats()["runs_over_tfdbg_byte_limit"] == 3
    reader = DumpReader(str(tmp_path / "dump"))
    events = reader.events("tfdbg_byte_limit_reached")
    assert len(events) == 1, events
    assert events[0]["limit_bytes"] == 10 and events[0]["tensor_bytes"] == 8  # two 4-byte dumps
    assert reader.verify() == []


def test_tf_publish_degraded_is_recorded_once(tmp_path, monkeypatch, no_ram_filesystem):
    from tfdump_fast.hooks import DumpingDebugHook

    g, inc_v = counter_graph()
    hook = DumpingDebugHook(str(tmp_path / "dump"))
    logging.getLogger("tfdump_fast").setLevel(logging.CRITICAL)
    try:
        with g.as_default():
            with tf1.train.MonitoredSession(hooks=[hook]) as mon:
                for _ in range(3):
                    mon.run(inc_v)
    finally:
        logging.getLogger("tfdump_fast").setLevel(logging.NOTSET)
    reader = DumpReader(str(tmp_path / "dump"))
    events = reader.events("tf_publish_degraded")
    assert len(events) == 1, events
    assert "ram://" in events[0]["reason"] and "not implemented" in events[0]["reason"]
    assert [r.status for r in reader.runs] == ["complete"] * 3
