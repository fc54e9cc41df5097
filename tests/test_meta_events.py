"""Every META event on disk is what docs/FORMAT.md's META table says.

The table is parsed from FORMAT.md itself; stores are written for real by a
DumpWriter (including its back-off, disk budget and write-error paths), by
the hooks around a real ``tf.compat.v1`` session and by the tfdbg importer.
Each event must carry every key of the table's "always" column and nothing
outside its "always" and "sometimes" columns, and every event type written
must be in the table (and every type in the table is written by one of
these stores).
"""

import errno
import os
import re
import time

import numpy as np
import pytest

from conftest import scan_store
from tfdump_fast import DumpWriter, errors, import_tfdbg
from tfdump_fast.store.frames import write_all

HERE = os.path.dirname(os.path.abspath(__file__))
FORMAT_MD = os.path.join(HERE, os.pardir, "docs", "FORMAT.md")
GOLDEN_TFDBG = os.path.join(HERE, "data", "golden_v1", "tfdbg")


def _meta_section() -> str:
    with open(FORMAT_MD, encoding="utf-8") as f:
        text = f.read()
    start = text.index("## META events")
    return text[start:text.index("\n## ", start + 1)]


def documented_events():
    """{event type: (always keys, sometimes keys)} from FORMAT.md's META table."""
    table = {}
    for line in _meta_section().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        (name,) = re.findall(r"`([^`]+)`", cells[0])
        table[name] = (set(re.findall(r"`([^`]+)`", cells[1])), set(re.findall(r"`([^`]+)`", cells[2])))
    return table


def documented_note(event: str) -> str:
    """The bullet below the table that describes ``event``."""
    m = re.search(r"^\* `%s` — (.*?)(?=^\* |^\S|\Z)" % re.escape(event), _meta_section(), re.M | re.S)
    assert m, f"FORMAT.md has no note on {event}"
    return m.group(1)


DOCUMENTED = documented_events()


def check_events(events):
    """Assert the table's contract on each event; return the types seen."""
    seen = set()
    for ev in events:
        kind = ev.get("event")
        assert kind in DOCUMENTED, f"META event {kind!r} is not in FORMAT.md's table: {ev}"
        always, sometimes = DOCUMENTED[kind]
        keys = set(ev) - {"event"}
        assert always <= keys, f"{kind} lacks {sorted(always - keys)} that FORMAT.md lists: {ev}"
        extra = keys - always - sometimes
        assert not extra, f"{kind} has keys FORMAT.md does not list: {sorted(extra)}"
        seen.add(kind)
    return seen


ENUMERATED = {"run_end": "status", "drops": "reason", "codec_change": "state", "flight_recorder_trigger": "reason"}


def check_values(events):
    """Fields with a fixed set of values hold values FORMAT.md's notes name."""
    for ev in events:
        field = ENUMERATED.get(ev["event"])
        if field is not None:
            assert f"`{ev[field]}`" in documented_note(ev["event"]), (ev["event"], field, ev[field])


def test_table_parses():
    assert {"writer_open", "run_begin", "run_end", "drops", "codec_change", "disk_budget_exceeded",
            "writer_error", "writer_close"} <= set(DOCUMENTED)
    assert all(always for always, _ in DOCUMENTED.values())
    for kind in DOCUMENTED:
        documented_note(kind)


# ----------------------------------------------------------------- the stores

def slow_sink(fd, parts):
    time.sleep(0.05)
    write_all(fd, parts)


def full_disk(fd, parts):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def writer_stores(tmp_path):
    rng = np.random.default_rng(0)
    roots = []

    # Runs that end ok and failed, with attachments, through a slow disk that
    # makes the codec back off.
    root = str(tmp_path / "backoff")
    with DumpWriter(root, queue_bytes=4 << 20, frame_bytes=256 << 10, workers=1, frame_sink=slow_sink) as w:
        run = w.begin_run(capture=False)
        for _ in range(48):
            w.write(rng.standard_normal(64 << 10).astype(np.float32), "x", run=run)
        w.end_run(run)
        run = w.begin_run(capture=False)
        w.write(np.arange(3), "y", run=run)
        w.end_run(run, status="failed", error="boom", attachments=[b"a graph"])
        w.write(np.arange(2), "implicit")  # the implicit run close() ends
    roots.append(root)

    # A disk budget.
    root = str(tmp_path / "budget")
    with pytest.warns(RuntimeWarning, match="disk budget"):
        with DumpWriter(root, disk_limit_bytes=2 << 20, frame_bytes=256 << 10, codec="raw") as w:
            for _ in range(6):
                run = w.begin_run(capture=False)
                for _ in range(4):
                    w.write(rng.standard_normal(64 << 10).astype(np.float32), "x", run=run)
                w.end_run(run)
                w.flush()
    roots.append(root)

    # The flight recorder: an inf at the third run persists it and the one
    # before; a run with a summary record that leaves the ring is recorded
    # with what was written of it.
    root = str(tmp_path / "flight")
    with DumpWriter(root, keep_last=1) as w:
        for step in range(4):
            run = w.begin_run(capture=False)
            w.write(np.full(4, np.inf if step == 2 else 1.0, np.float32), "x", run=run)
            w.write(np.arange(3), "x", debug_op="DebugNanCount", run=run)
            w.end_run(run)
    roots.append(root)

    # Events recorded through the public API, with the names and fields the
    # hooks record (tests/test_record_event.py has them from real runs).
    root = str(tmp_path / "recorded")
    with DumpWriter(root) as w:
        w.record_event("tfdbg_byte_limit_reached", limit_bytes=10, tensor_bytes=8)
        w.record_event("tf_publish_degraded", reason="TensorFlow's ram:// file system is unusable (...)")
        w.record_event("op_creation_sites", graph_version=3, first_op=0, ops=2, files=["train.py"],
                       sites={"log": [0, 12, "model"]})
    roots.append(root)

    # A full disk: writer_error, then the lost frame as drops.
    root = str(tmp_path / "full")
    w = DumpWriter(root, frame_sink=full_disk)
    run = w.begin_run(capture=False)
    w.write(np.arange(4), "x", run=run)
    try:
        w.end_run(run)
        w.flush()
    except errors.TfdumpError:
        pass
    with pytest.raises(errors.TfdumpError):
        w.close()
    roots.append(root)
    return roots


def test_writer_events_match_format_md(tmp_path):
    seen = set()
    for root in writer_stores(tmp_path):
        _, events = scan_store(root)
        seen |= check_events(events)
        check_values(events)
    # TF2 capture's events (tf2_*) are written and checked against the table by test_tf2.py
    expected = {k for k in DOCUMENTED if not k.startswith("tf2_")}
    assert seen == expected, f"not written by these stores: {sorted(expected - seen)}"


def test_full_disk_is_recorded_as_error_and_drops(tmp_path):
    root = writer_stores(tmp_path)[-1]
    _, events = scan_store(root)
    kinds = [e["event"] for e in events]
    assert "writer_error" in kinds
    drops = [e for e in events if e["event"] == "drops"]
    assert drops and all(e["reason"] == "no_space" for e in drops)


def test_importer_events_match_format_md(tmp_path):
    root = str(tmp_path / "imported")
    import_tfdbg(GOLDEN_TFDBG, root)
    _, events = scan_store(root)
    assert {"writer_open", "run_begin", "run_end", "writer_close"} <= check_events(events)
    check_values(events)


def test_hook_events_match_format_md(tmp_path):
    tf = pytest.importorskip("tensorflow")
    tf1 = tf.compat.v1
    from tfdump_fast.hooks import DumpingDebugHook, DumpingDebugWrapperSession

    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [2], name="x")
        y = tf.multiply(x, 2.0, name="y")
        check = tf.debugging.assert_positive(y, name="check")
        with tf.control_dependencies([check]):
            z = tf.identity(y, name="z")
        gs = tf1.train.get_or_create_global_step()
        train = tf1.assign_add(gs, 1, name="train")

    # The wrapper: a run that succeeds, one that fails, one of a callable.
    wrapper_root = str(tmp_path / "wrapper")
    with tf1.Session(graph=g) as sess:
        sess.run(tf1.global_variables_initializer())
        wrapped = DumpingDebugWrapperSession(sess, wrapper_root)
        wrapped.run(z, feed_dict={x: [1.0, 2.0]})
        wrapped.run(z, feed_dict={x: [-1.0, 2.0]})  # the OpError is returned, as by tfdbg's wrapper
        fn = wrapped.make_callable(z, feed_list=[x])
        fn([3.0, 4.0])
        wrapped.close()

    # The hook, with sampling, in a MonitoredSession.
    hook_root = str(tmp_path / "hook")
    hook = DumpingDebugHook(hook_root, sample=1)
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook]) as sess:
            for _ in range(2):
                sess.run([z, train], feed_dict={x: [1.0, 2.0]})
    hook.close()

    for root in (wrapper_root, hook_root):
        _, events = scan_store(root)
        assert {"writer_open", "run_begin", "run_end", "writer_close"} <= check_events(events)
        check_values(events)
        begins = [e for e in events if e["event"] == "run_begin"]
        ends = [e for e in events if e["event"] == "run_end"]
        assert begins and len(begins) == len(ends)
    _, events = scan_store(wrapper_root)
    assert any(e["event"] == "run_end" and e["status"] == "failed" and "error" in e for e in events)
    _, events = scan_store(hook_root)
    assert all("step" in e and "global_step" in e for e in events if e["event"] == "run_begin")
