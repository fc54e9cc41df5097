"""The engine and DumpWriter without TensorFlow: round trips, threads,
backpressure, drops, disk budget, crashes and bad input."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from conftest import scan_shard, scan_store
from tfdump_fast import DumpWriter, _native, dtypes, errors
from tfdump_fast.store.payloads import decode_strings
from tfdump_fast.store.frames import write_all

ml_dtypes = pytest.importorskip("ml_dtypes")


def slow_sink(fd, parts, delay=0.05):
    """A deliberately slow disk: every data frame takes `delay` seconds to write."""
    time.sleep(delay)
    write_all(fd, parts)


def slow_writer(session_root, **kw):
    return DumpWriter(session_root, frame_sink=slow_sink, **kw)


NUMERIC_CASES = [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
    np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45], dtype=np.float32),
    np.linspace(-1, 1, 33).astype(np.float64),
    np.array([1.5, -2.25, 65504], dtype=np.float16),
    np.array([1.0, 3.140625, -7.5], dtype=ml_dtypes.bfloat16),
    np.array([-128, 0, 127], dtype=np.int8),
    np.array([-32768, 5, 32767], dtype=np.int16),
    np.array([-2**31, 7, 2**31 - 1], dtype=np.int32),
    np.array([-2**63, 9, 2**63 - 1], dtype=np.int64),
    np.array([0, 255], dtype=np.uint8),
    np.array([0, 65535], dtype=np.uint16),
    np.array([0, 2**32 - 1], dtype=np.uint32),
    np.array([0, 2**64 - 1], dtype=np.uint64),
    np.array([True, False, True]),
    np.array([1 + 2j, -3.5 - 0.25j], dtype=np.complex64),
    np.array([1e300 + 1j], dtype=np.complex128),
    np.float64(2.5),                       # 0-d
    np.zeros((0, 5), dtype=np.float32),    # empty
    np.random.default_rng(0).standard_normal((300, 300)).astype(np.float32),  # large: own frame
]


def _values(rec):
    if rec["flags"] & _native.FLAG_STRING:
        return decode_strings(rec["payload"])
    arr = np.frombuffer(rec["payload"], dtype=dtypes.to_numpy(rec["dtype"]))
    return arr.reshape(rec["shape"])


@pytest.mark.parametrize("codec,shuffle", [("zstd", True), ("zstd", False), ("raw", True)])
def test_numeric_round_trip_is_bit_exact(session_root, codec, shuffle):
    with DumpWriter(session_root, codec=codec, shuffle=shuffle) as w:
        run = w.begin_run(capture=False)
        for i, arr in enumerate(NUMERIC_CASES):
            assert w.write(arr, f"n{i}", run=run)
        w.end_run(run)
    tensors, _ = scan_store(session_root)
    assert [t["node"] for t in tensors] == [f"n{i}" for i in range(len(NUMERIC_CASES))]
    for arr, rec in zip(NUMERIC_CASES, tensors):
        got = _values(rec)
        assert rec["dtype"] == dtypes.from_numpy(np.asarray(arr).dtype)
        assert got.shape == np.shape(arr)
        assert got.dtype == np.asarray(arr).dtype
        assert got.tobytes() == np.asarray(arr).tobytes()


def test_strings_round_trip(session_root):
    values = np.array([b"", b"abc", b"\x00\xff binary", "ünïcode".encode()], dtype=object).reshape(2, 2)
    with DumpWriter(session_root) as w:
        w.write(values, "s")
        w.write(np.array(b"scalar"), "s0")
    tensors, _ = scan_store(session_root)
    assert tensors[0]["flags"] & _native.FLAG_STRING and tensors[0]["shape"] == [2, 2]
    assert decode_strings(tensors[0]["payload"]) == values.reshape(-1).tolist()
    assert tensors[1]["shape"] == [] and decode_strings(tensors[1]["payload"]) == [b"scalar"]


def test_each_distinct_payload_is_stored_once_across_runs(session_root):
    payload = np.arange(4096, dtype=np.float32)
    with DumpWriter(session_root, workers=2) as w:
        for _ in range(3):
            run = w.begin_run(capture=False)
            for node in ("a", "b", "c"):
                w.write(payload, node, run=run)
            w.write(np.full(8, 7.0), "other", run=run)
            w.end_run(run)
            w.flush()
        stats = w.stats()
    tensors, events = scan_store(session_root)
    assert len(tensors) == 12
    blob_entries = 0
    for name in os.listdir(session_root):
        _, frames, _ = scan_shard(os.path.join(session_root, name))
        blob_entries += sum(len(t.blobs) for _, t, _ in frames)
    assert blob_entries == 2  # the 16 KiB payload and the small one, once each
    assert stats["payload_bytes_stored"] == payload.nbytes + 64
    assert stats["payload_bytes_deduped"] == 8 * payload.nbytes + 2 * 64
    assert all(t["payload"] == payload.tobytes() for t in tensors if t["node"] != "other")


def test_many_producer_threads_keep_exact_arrival_order(session_root):
    n_threads, per_thread = 8, 300
    with DumpWriter(session_root, workers=2, frame_bytes=64 << 10) as w:
        run = w.begin_run(capture=False)

        def produce(t):
            for i in range(per_thread):
                w.write(np.array([t, i], dtype=np.int64), f"thread{t}", run=run)

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        counters = w.end_run(run)
    assert counters["tensors"] == n_threads * per_thread and counters["dropped_tensors"] == 0
    tensors, _ = scan_store(session_root)
    assert sorted(t["seq"] for t in tensors) == list(range(n_threads * per_thread))
    for t in range(n_threads):
        mine = [rec for rec in tensors if rec["node"] == f"thread{t}"]
        # seq order within a producer thread is its program order
        assert [int(np.frombuffer(r["payload"], np.int64)[1]) for r in mine] == list(range(per_thread))


def test_block_policy_applies_backpressure_without_loss(session_root):
    record = np.ones(256 << 10, dtype=np.uint8)  # 256 KiB, 4 fit the queue
    with slow_writer(session_root, queue_bytes=1 << 20, frame_bytes=256 << 10, workers=1) as w:
        run = w.begin_run(capture=False)
        start = time.monotonic()
        for i in range(24):
            w.write(record * (i % 250), "big", run=run)
        elapsed = time.monotonic() - start
        counters = w.end_run(run)
        stats = w.stats()
    assert counters["dropped_tensors"] == 0
    # The producer had to wait for the slow sink (24 frames x 50 ms, minus what the queue holds).
    assert elapsed > 0.5
    assert stats["queue_high_water"] <= (1 << 20) + record.nbytes
    assert len(scan_store(session_root)[0]) == 24


def test_drop_policy_counts_and_records_drops(session_root):
    record = np.ones(256 << 10, dtype=np.uint8)
    with slow_writer(session_root, queue_bytes=1 << 20, frame_bytes=256 << 10, workers=1, policy="drop") as w:
        run = w.begin_run(capture=False)
        accepted = sum(w.write(record, "big", run=run) for _ in range(40))
        counters = w.end_run(run)
    tensors, events = scan_store(session_root)
    end = next(e for e in events if e["event"] == "run_end")
    assert 0 < counters["dropped_tensors"] == 40 - accepted
    assert end["dropped_tensors"] == counters["dropped_tensors"]
    assert end["dropped_bytes"] == counters["dropped_tensors"] * record.nbytes
    assert len(tensors) == accepted
    # seq numbers are taken on arrival, so the gaps show where drops happened
    assert max(t["seq"] for t in tensors) <= 39


def test_disk_budget_stops_writing_warns_once_and_records(session_root):
    rng = np.random.default_rng(1)
    with pytest.warns(RuntimeWarning, match="disk budget") as caught:
        with DumpWriter(session_root, disk_limit_bytes=2 << 20, frame_bytes=256 << 10, codec="raw") as w:
            for step in range(6):
                run = w.begin_run(capture=False)
                for _ in range(4):
                    w.write(rng.standard_normal(64 << 10).astype(np.float32), "x", run=run)  # 256 KiB
                w.end_run(run)
                w.flush()
            stats = w.stats()
    assert sum("disk budget" in str(c.message) for c in caught) == 1
    assert stats["disk_budget_exceeded"] and stats["tensors_dropped"] > 0
    total = sum(os.path.getsize(os.path.join(session_root, n)) for n in os.listdir(session_root))
    meta = sum(os.path.getsize(os.path.join(session_root, n)) for n in os.listdir(session_root)
               if n.endswith("-meta.tfds"))
    # Tensor data stops at the budget; only the small metadata events that
    # record what was lost may go past it.
    assert total <= (2 << 20) + meta and meta < 16 << 10
    tensors, events = scan_store(session_root)
    kinds = [e["event"] for e in events]
    assert "disk_budget_exceeded" in kinds
    lost = sum(e["dropped_tensors"] for e in events if e["event"] in ("drops", "run_end"))
    assert len(tensors) + lost == 24


def test_codec_backs_off_when_the_queue_stays_full(session_root):
    rng = np.random.default_rng(2)
    with slow_writer(session_root, queue_bytes=4 << 20, frame_bytes=256 << 10, workers=1) as w:
        run = w.begin_run(capture=False)
        for _ in range(48):
            w.write(rng.standard_normal(64 << 10).astype(np.float32), "x", run=run)
        w.end_run(run)
        w.flush()
        stats = w.stats()
    assert stats["codec_changes"] >= 1
    assert set(stats["frames_by_codec"]) - {"zstd:1"}, stats["frames_by_codec"]
    _, events = scan_store(session_root)
    assert any(e["event"] == "codec_change" for e in events)
    assert len(scan_store(session_root)[0]) == 48


def test_flush_makes_finished_runs_readable_while_writer_runs(session_root):
    w = DumpWriter(session_root)
    run = w.begin_run(capture=False)
    w.write(np.arange(10), "a", run=run)
    w.end_run(run)
    w.flush()
    tensors, events = scan_store(session_root)
    assert [t["node"] for t in tensors] == ["a"]
    assert [e["event"] for e in events][-1] == "run_end"
    w.close()


def test_frame_sink_oserror_is_reported_like_a_failed_write(session_root):
    def full_disk(fd, parts):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    w = DumpWriter(session_root, frame_sink=full_disk)
    run = w.begin_run(capture=False)
    w.write(np.arange(4), "x", run=run)
    with pytest.raises(errors.TfdumpIOError) as caught:
        w.end_run(run)  # raises if the worker already failed, else flush does
        w.flush()
    assert caught.value.errno == errno.ENOSPC
    with pytest.raises(errors.TfdumpIOError):
        w.close()
    assert w.stats()["tensors_dropped"] == 1
    tensors, events = scan_store(session_root)
    assert tensors == []
    assert [e["reason"] for e in events if e["event"] == "drops"] == ["no_space"]


def test_frame_sink_must_be_callable(session_root):
    with pytest.raises(errors.TfdumpUsageError, match="frame_sink"):
        DumpWriter(session_root, frame_sink="disk")


def _run_child(code, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_kill_9_mid_write_keeps_every_complete_frame(session_root):
    child = _run_child(f"""
        import numpy as np, sys
        from tfdump_fast import DumpWriter
        w = DumpWriter({session_root!r}, workers=1, frame_bytes=64 << 10, codec="raw")
        run = w.begin_run(capture=False)
        i = 0
        while True:
            w.write(np.full(4096, i, dtype=np.int32), "x", run=run)
            i += 1
            if i == 400:
                w.flush(); print("flushed", flush=True)
    """)
    assert child.stdout.readline().strip() == "flushed"
    time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    shard = next(os.path.join(session_root, n) for n in os.listdir(session_root) if n.endswith("-0.tfds"))
    _, frames, torn = scan_shard(shard)
    n_complete = sum(len(t.tensors) for _, t, _ in frames)
    assert n_complete >= 400
    # Tear the last complete frame, as a kill during its write() would.
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        f.truncate(size - torn - 1000)
    _, frames_after, torn_after = scan_shard(shard)
    assert len(frames_after) == len(frames) - 1 and torn_after > 0
    # every surviving tensor holds exactly what was written
    values = []
    for _, t, d in frames_after:
        for b in t.blobs:
            raw = d[int(b["data_offset"]):int(b["data_offset"]) + int(b["raw_len"])]
            if b["filter"] == 1:
                raw = _native.unshuffle(raw, int(b["elem_size"]))
            values.append(np.frombuffer(raw, np.int32))
    assert len(values) == sum(len(t.blobs) for _, t, _ in frames_after) > 0
    assert all(len(v) == 4096 and (v == v[0]).all() for v in values)
    child.stdout.close()
    child.stderr.close()


def test_disk_full_surfaces_at_next_call_and_never_hangs(tmp_path):
    root = str(tmp_path / "dump")
    child = _run_child(f"""
        import resource, signal, numpy as np
        from tfdump_fast import DumpWriter, TfdumpIOError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # a 1 MiB "disk"
        w = DumpWriter({root!r}, codec="raw", frame_bytes=128 << 10)
        rng = np.random.default_rng(0)
        try:
            for step in range(20):
                run = w.begin_run(capture=False)
                for _ in range(4):
                    w.write(rng.standard_normal(32 << 10).astype(np.float32), "x", run=run)
                w.end_run(run)
                w.flush()
            print("no error")
        except TfdumpIOError as exc:
            print("raised", type(exc).__name__, exc.errno, "|", exc)
        try:
            w.close()
        except TfdumpIOError:
            pass
        print("closed")
    """)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert "raised TfdumpIOError" in out and "failed" in out, out
    assert out.strip().endswith("closed")


def test_unclosed_writer_is_flushed_at_interpreter_exit(session_root):
    child = _run_child(f"""
        import numpy as np
        from tfdump_fast import DumpWriter
        w = DumpWriter({session_root!r})
        for i in range(100):
            w.write(np.full(1000, i, dtype=np.float32), "x")
    """)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    tensors, events = scan_store(session_root)
    assert len(tensors) == 100
    assert events[-1]["event"] == "writer_close"


def test_session_root_errors(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="session_root path points to a file"):
        DumpWriter(str(a_file))
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("x")
    with pytest.raises(ValueError, match="points to a non-empty directory.*allow_existing=True"):
        DumpWriter(str(full))
    with pytest.raises(errors.TfdumpIOError, match="cannot create session_root"):
        DumpWriter(str(a_file / "sub"))
    DumpWriter(str(full), allow_existing=True).close()


@pytest.mark.parametrize("kwargs,match", [
    ({"policy": "wait"}, "policy='wait'"),
    ({"codec": "lz4"}, "codec='lz4'"),
    ({"workers": 0}, "workers=0"),
    ({"queue_bytes": 10}, "queue_bytes=10"),
    ({"level": 99}, "level=99"),
    ({"disk_limit_bytes": -1}, "disk_limit_bytes=-1"),
    ({"frame_bytes": 1}, "frame_bytes=1"),
    ({"sink": "tape"}, "sink='tape'"),
    ({"worker_nice": 40}, "worker_nice=40"),
])
def test_bad_options_name_the_option(session_root, kwargs, match):
    with pytest.raises(errors.TfdumpUsageError, match=match):
        DumpWriter(session_root, **kwargs)
    assert not os.path.exists(session_root)  # nothing created for a bad call


def test_closed_writer_and_ended_run_errors(session_root):
    w = DumpWriter(session_root)
    run = w.begin_run(capture=False)
    w.end_run(run)
    with pytest.raises(errors.TfdumpUsageError, match="has ended"):
        w.write(np.zeros(1), "x", run=run)
    with pytest.raises(errors.TfdumpUsageError, match="already ended"):
        w.end_run(run)
    w.close()
    w.close()  # idempotent
    with pytest.raises(errors.TfdumpClosedError, match="is closed"):
        w.write(np.zeros(1), "x")
    with pytest.raises(errors.TfdumpClosedError):
        w.begin_run(capture=False)
    with pytest.raises(TypeError, match="no TensorFlow equivalent"):
        DumpWriter(session_root + "2").write(np.zeros(1, dtype="datetime64[s]"), "x")


def _data_shard_bytes(root):
    return sum(os.path.getsize(os.path.join(root, n)) for n in os.listdir(root) if not n.endswith("-meta.tfds"))


def test_workers_write_between_runs_not_during_them(session_root):
    with DumpWriter(session_root, workers=2, flush_interval=0.02) as w:
        run = w.begin_run(capture=False)
        for i in range(50):
            w.write(np.full(1024, i, dtype=np.float32), "x", run=run)
        time.sleep(0.3)  # many flush intervals: a non-deferring writer would have written by now
        assert _data_shard_bytes(session_root) == 2 * _native.FILE_HEADER_SIZE
        w.end_run(run)  # the run is over: the workers catch up
        deadline = time.monotonic() + 10
        while _data_shard_bytes(session_root) == 2 * _native.FILE_HEADER_SIZE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _data_shard_bytes(session_root) > 2 * _native.FILE_HEADER_SIZE
    assert len(scan_store(session_root)[0]) == 50


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling classes")
@pytest.mark.parametrize("idle", [True, False])
def test_writer_threads_run_in_the_idle_scheduling_class(session_root, idle):
    with DumpWriter(session_root, worker_idle=idle) as w:
        w.write(np.arange(10), "x")
        w.flush()  # the workers have run, so they have set their own class
        workers = [t for t in w._threads if t.is_alive()]
        assert len(workers) == 2
        classes = {os.sched_getscheduler(t.native_id) for t in workers}
    assert classes == {os.SCHED_IDLE if idle else os.SCHED_OTHER}


def _wait_for_data(root, deadline_s=10):
    deadline = time.monotonic() + deadline_s
    while _data_shard_bytes(root) == 2 * _native.FILE_HEADER_SIZE and time.monotonic() < deadline:
        time.sleep(0.01)
    return _data_shard_bytes(root) > 2 * _native.FILE_HEADER_SIZE


def test_deferral_stops_while_runs_keep_starting_with_work_left_over(session_root):
    """Back-to-back runs leave the writer no gap: after three run starts in a
    row that find work still waiting, the workers write during runs; the first
    start that finds them idle turns deferral back on."""
    with DumpWriter(session_root, workers=2, flush_interval=0.02) as w:
        held = w.begin_run(capture=False)
        for i in range(50):
            w.write(np.full(1024, i, dtype=np.float32), "x", run=held)
        first = [w.begin_run(capture=False) for _ in range(2)]
        time.sleep(0.3)
        assert _data_shard_bytes(session_root) == 2 * _native.FILE_HEADER_SIZE  # two backlogged starts: deferring
        third = w.begin_run(capture=False)
        assert _wait_for_data(session_root)  # written although four runs are open
        for r in [held] + first + [third]:
            w.end_run(r)
        w.flush()
        written = _data_shard_bytes(session_root)
        idle_start = w.begin_run(capture=False)  # nothing waiting: deferral is back
        for i in range(50):
            w.write(np.full(1024, i, dtype=np.float32), "y", run=idle_start)
        time.sleep(0.3)
        assert _data_shard_bytes(session_root) == written
        w.end_run(idle_start)
    assert len(scan_store(session_root)[0]) == 100


def test_deferral_gives_way_to_a_filling_queue_and_to_flush(session_root):
    record = np.ones(128 << 10, dtype=np.uint8)
    with DumpWriter(session_root, queue_bytes=1 << 20, frame_bytes=128 << 10) as w:
        run = w.begin_run(capture=False)
        for i in range(40):  # 5 MiB through a 1 MiB queue inside one open run: must not stall
            w.write(record * (i % 200), "big", run=run)
        assert _data_shard_bytes(session_root) > 2 * _native.FILE_HEADER_SIZE
        other = w.begin_run(capture=False)
        w.write(np.arange(10), "small", run=other)
        w.end_run(other)
        w.flush()  # `run` is still open: flush still writes every accepted tensor
        tensors, _ = scan_store(session_root)
        assert len(tensors) == 41
        w.end_run(run)
