"""The writer's per-tensor savings, with real parts: payloads equal to one
copied just before are stored as references (and read back bit-identical),
and the codec follows the compression ratio it measures (incompressible data
stored raw; data that compresses stays compressed when the queue fills)."""

import os
import time

import numpy as np
import pytest

from conftest import scan_store
from tfdump_fast import DumpWriter
from tfdump_fast.reader import DumpReader
from tfdump_fast.store.frames import write_all


def slow_sink(fd, parts, delay=0.05):
    """A deliberately slow disk: every data frame takes `delay` seconds."""
    time.sleep(delay)
    write_all(fd, parts)


def test_repeated_payloads_are_stored_as_references_and_read_back_exactly(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.standard_normal(512).astype(np.float32)      # 2 KiB, like a loop state
    b = a.copy()
    b[-1] = np.nextafter(b[-1], np.float32(np.inf))        # equal but for the last bit
    sequence = [a, a, b, a, a.copy(), b, np.float32(7.0) * a]
    root = str(tmp_path / "d")
    with DumpWriter(root, workers=1) as w:
        run = w.begin_run(capture=False)
        for i, x in enumerate(sequence):
            w.write(x, f"n{i}", run=run)
        w.end_run(run)
        w.flush()
        stats = w.stats()
    # a (again), b (again) and a's copy equal a record copied just before.
    assert stats["payloads_aliased"] == 4
    # Stored once each: a, b and 7a.
    assert stats["payload_bytes_stored"] == 3 * a.nbytes
    by_node = {r.node_name: r.value for r in DumpReader(root).runs[0].records}
    for i, x in enumerate(sequence):
        assert by_node[f"n{i}"].tobytes() == np.asarray(x).tobytes()


def test_small_or_large_payloads_are_not_compared(tmp_path):
    small = np.arange(16, dtype=np.float32)                  # 64 B: copied again
    large = np.arange(1 << 15, dtype=np.float32)             # 128 KiB: kept by reference anyway
    with DumpWriter(str(tmp_path / "d"), workers=1) as w:
        run = w.begin_run(capture=False)
        for x in (small, small, large, large):
            w.write(x, "x", run=run)
        w.end_run(run)
        w.flush()
        assert w.stats()["payloads_aliased"] == 0


def test_identity_outputs_are_aliased_and_exact(tmp_path):
    tf = pytest.importorskip("tensorflow")
    tf1 = tf.compat.v1
    from tfdump_fast.hooks import DumpingDebugHook

    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [16, 32], name="x")
        y = tf.identity(x, name="y")
        z = tf.identity(y, name="z")
        out = tf.tanh(z, name="out")
    feed = np.random.default_rng(4).standard_normal((16, 32)).astype(np.float32)
    root = str(tmp_path / "d")
    hook = DumpingDebugHook(root, log_usage=False)
    with g.as_default(), tf1.train.MonitoredSession(hooks=[hook]) as sess:
        expected = sess.run({"y": y, "z": z, "out": out}, feed_dict={x: feed})
        stats = hook.stats()
    hook.close()
    assert stats["payloads_aliased"] >= 1
    run = DumpReader(root).runs[0]
    got = {r.node_name: r.value for r in run.records}
    for name in ("y", "z", "out"):
        assert got[name].tobytes() == expected[name].tobytes(), name


def test_incompressible_data_is_stored_raw(tmp_path):
    rng = np.random.default_rng(5)
    root = str(tmp_path / "d")
    with DumpWriter(root, workers=1, frame_bytes=256 << 10) as w:
        run = w.begin_run(capture=False)
        for _ in range(24):
            w.write(rng.integers(0, 256, 256 << 10, dtype=np.uint8), "noise", run=run)
            w.flush()  # one frame each, written at the configured level until measured
        w.end_run(run)
        w.flush()
        stats = w.stats()
    assert stats["codec_ratios"]["zstd:1"] > 0.97
    assert stats["frames_uncompressible"] >= 1
    assert stats["frames_by_codec"].get("raw", 0) == stats["frames_uncompressible"]
    assert stats["frames_by_codec"]["zstd:1"] >= 1   # the measurement and the probes
    assert stats["codec_changes"] == 0                # not a back-off: a choice per frame
    assert len(scan_store(root)[0]) == 24


def test_compressible_data_is_not_stored_raw_when_the_queue_fills(tmp_path):
    # Post-ReLU-like activations: half zeros, compress well. A slow disk
    # fills the queue; the writer steps down to the fast level but not to
    # raw, which would multiply the bytes on disk.
    rng = np.random.default_rng(6)
    root = str(tmp_path / "d")
    with DumpWriter(root, queue_bytes=4 << 20, frame_bytes=256 << 10, workers=1, frame_sink=slow_sink) as w:
        run = w.begin_run(capture=False)
        for _ in range(48):
            w.write(np.maximum(rng.standard_normal(64 << 10), 0).astype(np.float32).round(2), "relu", run=run)
        w.end_run(run)
        w.flush()
        stats = w.stats()
    assert stats["queue_high_water"] >= 0.8 * (4 << 20)   # the old ladder's raw threshold was passed
    assert stats["codec_changes"] >= 1
    assert "raw" not in stats["frames_by_codec"], stats["frames_by_codec"]
    assert len(scan_store(root)[0]) == 48
    assert sum(os.path.getsize(os.path.join(root, n)) for n in os.listdir(root)) < 0.8 * 48 * (256 << 10)
