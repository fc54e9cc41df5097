"""Storage that fails under a running writer (issue #10): a full disk, a
write that fails halfway, a session root deleted mid-run. The store must
still open, with the loss recorded and reported by `verify`; a deleted
root is an error at the next call, and the stats do not claim tensors that
are gone."""

import errno
import logging
import os
import shutil
import subprocess

import numpy as np
import pytest

from tfdump_fast import DumpReader, DumpWriter, errors
from tfdump_fast.cli import main
from tfdump_fast.store import frames as store_frames
from tfdump_fast.store.frames import write_all


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def events_of(reader):
    return [e for w in reader.writers for e in w["events"]]


def check_values(reader):
    """Every record read back holds what was written: x<i> is i + its position."""
    for run in reader.runs:
        for rec, value in zip(run, run.values()):
            assert value[0] == float(rec.node_name[1:])


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode:
        pytest.skip("cannot mount a tmpfs: %s" % proc.stderr.strip())
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


@pytest.mark.parametrize("fills", ["data", "metadata"])
def test_disk_full_then_freed_leaves_a_store_that_opens(tiny_fs, capsys, fills):
    """Issue row: after ENOSPC and space freed, close() appended META frames
    after a half-written frame and the store did not open. ``fills``: the
    shard whose write finds the disk full (tensors, or a run's attachments)."""
    filler = os.path.join(tiny_fs, "filler")
    with open(filler, "wb") as f:
        f.write(b"\1" * (600 << 10))
    root = os.path.join(tiny_fs, "dump")
    w = DumpWriter(root, workers=1, codec="raw", frame_bytes=48 << 10, queue_bytes=4 << 20)
    rng = np.random.default_rng(0)
    failure = None
    for step in range(100):
        try:
            run = w.begin_run(capture=False)
            for j in range(3):
                value = rng.standard_normal(4096 if fills == "data" else 16).astype(np.float32)
                value[0] = j                                 # 16 KiB each, incompressible
                w.write(value, "x%d" % j, run=run)
            if fills == "data":
                w.end_run(run)
            else:
                w.end_run(run, attachments=[rng.bytes(48 << 10)])
            w.flush()
        except errors.TfdumpIOError as exc:
            failure = exc
            break
    assert failure is not None and failure.errno == errno.ENOSPC, "the tmpfs never filled up"
    os.remove(filler)                    # space comes back; the process closes normally
    try:
        w.close()
        close_error = None
    except errors.TfdumpIOError as exc:
        close_error = exc
    reader = DumpReader(root)            # opens: no half frame is followed by others
    assert close_error is not None       # close() still reports what was lost
    assert reader.problems == [] and reader.torn_tails == {}
    check_values(reader)
    kinds = [e["event"] for e in events_of(reader)]
    assert "writer_error" in kinds
    assert reader.writers[0]["close"] is not None
    code, out, _ = cli(capsys, "verify", root, "--no-progress")
    assert code == 1 and "No space left on device" in out


def half_then_fail(err):
    """A frame sink whose second frame fails after half its bytes are on disk."""
    calls = []

    def sink(fd, parts):
        calls.append(1)
        if len(calls) == 2:
            blob = b"".join(bytes(p) for p in parts)
            os.write(fd, blob[:len(blob) // 2])
            raise OSError(err, os.strerror(err))
        write_all(fd, parts)
    return sink


def write_runs(w, n_runs=4):
    """Runs of one tensor each, flushed one by one, until the writer fails."""
    for i in range(n_runs):
        run = w.begin_run(capture=False)
        w.write(np.full(1024, i, dtype=np.float32), "x%d" % i, run=run)
        try:
            w.end_run(run)
            w.flush()
        except errors.TfdumpIOError:
            return
    raise AssertionError("the injected write error never came")


@pytest.mark.parametrize("err,reason", [(errno.ENOSPC, "no_space"), (errno.EACCES, "permission")])
def test_failed_write_is_cut_off_and_recorded(tmp_path, capsys, err, reason):
    root = str(tmp_path / "d")
    w = DumpWriter(root, workers=1, frame_bytes=4096, frame_sink=half_then_fail(err))
    write_runs(w)
    with pytest.raises(errors.TfdumpIOError):
        w.close()
    reader = DumpReader(root)
    assert reader.problems == [] and reader.torn_tails == {}   # the half frame was cut off
    check_values(reader)
    assert len(reader.runs[0]) == 1
    lost = sum(r.dropped_tensors for r in reader.runs)
    assert lost >= 1
    code, out, _ = cli(capsys, "verify", root, "--no-progress")
    assert code == 1 and "failed" in out and os.strerror(err) in out


def test_failed_write_that_cannot_be_cut_off_stops_the_shard(tmp_path, capsys, monkeypatch):
    """When even ftruncate fails the shard is left alone: its trailer marks
    the tail as lost, and the store still opens."""
    def no_truncate(fd, size):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    root = str(tmp_path / "d")
    w = DumpWriter(root, workers=1, frame_bytes=4096, frame_sink=half_then_fail(errno.EIO))
    monkeypatch.setattr(store_frames.os, "ftruncate", no_truncate)
    write_runs(w)
    with pytest.raises(errors.TfdumpIOError):
        w.close()
    monkeypatch.undo()
    reader = DumpReader(root)
    assert reader.problems == []
    (torn_path,) = reader.torn_tails
    assert torn_path.endswith("-0.tfds")
    (trailer,) = [e for n, e in reader.writers[0]["close"]["shards"].items() if n.endswith("-0.tfds")]
    assert trailer["tail_lost"] is True
    check_values(reader)
    code, out, _ = cli(capsys, "verify", root, "--no-progress")
    assert code == 1 and "failed" in out


@pytest.mark.parametrize("call", ["flush", "close", "begin_run", "end_run", "write"])
def test_deleted_session_root_is_an_error_at_the_next_call(tmp_path, caplog, call):
    """Issue row: after `rm -rf` of the root, flush/close succeeded and the
    stats said every tensor was written."""
    root = str(tmp_path / "d")
    w = DumpWriter(root, workers=2)
    run = w.begin_run(capture=False)
    for i in range(20):
        w.write(np.full(256, i, dtype=np.float32), "x%d" % i, run=run)
    if call != "end_run":
        w.end_run(run)
        w.flush()
    assert w.stats()["tensors_written"] == 20 or call == "end_run"
    shutil.rmtree(root)
    caplog.set_level(logging.ERROR, logger="tfdump_fast")
    with pytest.raises(errors.TfdumpIOError, match="deleted") as info:
        if call == "flush":
            w.flush()
        elif call == "close":
            w.close()
        elif call == "begin_run":
            w.begin_run(capture=False)
        elif call == "end_run":
            w.end_run(run)
        else:
            w.write(np.zeros(3), "y")
    assert root in str(info.value) and "new" in str(info.value)
    stats = w.stats()
    assert stats["tensors_written"] == 0 and stats["error"]
    if call != "end_run":
        assert stats["tensors_lost"] == 20
    if call != "close":
        with pytest.raises(errors.TfdumpIOError):
            w.close()
    assert w.closed
    assert sum("deleted" in r.getMessage() for r in caplog.records) == 1
    assert not os.path.exists(root)            # nothing was written to a new root
