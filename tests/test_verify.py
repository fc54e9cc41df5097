"""`verify` and the reader tell the truth about a damaged store (issue #10):
damage after a clean close is corruption, not a torn tail; a duplicated,
removed or reordered frame makes verify exit 1; the reader returns a record
once however often it is stored; a run missing accepted tensors, or holding
more than its writer counted, is a problem."""

import os
import random

import numpy as np
import pytest

from tfdump_fast import DumpReader, DumpWriter, _native, errors
from tfdump_fast.cli import main
from tfdump_fast.store.frames import encode_frame

HDR = _native.FRAME_HEADER_SIZE
FILE_HDR = _native.FILE_HEADER_SIZE


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def shard(root, suffix):
    (name,) = [n for n in os.listdir(root) if n.endswith(suffix)]
    return os.path.join(root, name)


def split_frames(path):
    """(file header bytes, [frame bytes, ...]) of a shard file."""
    with open(path, "rb") as f:
        buf = f.read()
    pos, out = FILE_HDR, []
    while pos + HDR <= len(buf):
        h = _native.parse_frame_header(buf[pos:pos + HDR])
        end = pos + HDR + h["table_stored_len"] + h["data_stored_len"]
        out.append(buf[pos:end])
        pos = end
    assert pos == len(buf)
    return buf[:FILE_HDR], out


def rewrite(path, head, frames):
    with open(path, "wb") as f:
        f.write(head + b"".join(frames))


def drop_close_event(root):
    """As if the writer was killed after its last frame: no writer_close."""
    meta = shard(root, "-meta.tfds")
    head, frames = split_frames(meta)
    rewrite(meta, head, frames[:-1])


def one_frame_store(root):
    """One run of 505 tensors, all in the only data frame (the issue's store)."""
    with DumpWriter(root, workers=1, frame_bytes=8 << 20, queue_bytes=64 << 20) as w:
        run = w.begin_run(capture=False)
        for i in range(505):
            w.write(np.full(16, i, dtype=np.float32), "t%d" % i, run=run)
        w.end_run(run)
    return root


def many_frame_store(root, n=24):
    """One run; a frame per tensor."""
    with DumpWriter(root, workers=1, frame_bytes=4096, shuffle=False) as w:
        run = w.begin_run(capture=False)
        for i in range(n):
            w.write(np.full(1024, i, dtype=np.float32), "t%d" % i, run=run)
        w.end_run(run)
    return root


@pytest.mark.parametrize("where", ["header", "table", "data"])
def test_flipped_bytes_in_the_only_data_frame_of_a_closed_store(tmp_path, capsys, where):
    """Issue row: verify said OK ('1 file(s) end in a torn frame (ignored)')
    and exited 0 while every tensor was missing."""
    root = one_frame_store(str(tmp_path / "d"))
    path = shard(root, "-0.tfds")
    head, (frame,) = split_frames(path)
    h = _native.parse_frame_header(frame[:HDR])
    at = {"header": 9, "table": HDR + 5, "data": HDR + h["table_stored_len"] + 5}[where]
    frame = bytearray(frame)
    for k in range(3):
        frame[at + k] ^= 0x5A
    rewrite(path, head, [bytes(frame)])
    with pytest.raises(errors.TfdumpCorruptionError, match="closed it cleanly"):
        DumpReader(root)
    code, out, _ = cli(capsys, "verify", root, "--no-progress")
    assert code == 1 and not out.startswith("OK")
    assert path in out and "closed it cleanly" in out and "505 of its 505 tensor(s) are missing" in out


def test_duplicated_and_removed_frame_in_a_closed_store(tmp_path, capsys):
    """Issue row: verify exited 0 and the reader returned 413 records for 412
    sequence numbers."""
    root = many_frame_store(str(tmp_path / "d"))
    path = shard(root, "-0.tfds")
    head, frames = split_frames(path)
    frames = frames[:3] + [frames[2]] + frames[4:]   # frame 2 twice, frame 3 gone
    rewrite(path, head, frames)
    with pytest.raises(errors.TfdumpCorruptionError):
        DumpReader(root)
    reader = DumpReader(root, on_corruption="skip")
    run = reader.runs[0]
    seqs = [r.seq for r in run]
    assert len(seqs) == len(set(seqs)) == 23
    for rec, value in zip(run, run.values()):
        assert value[0] == int(rec.node_name[1:])          # never wrong data
    assert any("stored twice" in p for p in reader.problems)
    code, out, _ = cli(capsys, "verify", root, "--no-progress")
    assert code == 1 and "stored twice" in out and "1 of its 24 tensor(s) are missing" in out


def test_duplicated_frame_of_a_killed_writer_is_returned_once(tmp_path, capsys):
    """Without a trailer the duplicate is still found: by (writer, run, seq)."""
    root = many_frame_store(str(tmp_path / "d"))
    drop_close_event(root)
    path = shard(root, "-0.tfds")
    head, frames = split_frames(path)
    rewrite(path, head, frames[:6] + [frames[3]] + frames[6:])
    with pytest.raises(errors.TfdumpCorruptionError, match="stored twice"):
        DumpReader(root)
    reader = DumpReader(root, on_corruption="skip")
    run = reader.runs[0]
    assert len(run) == 24 and sorted(r.seq for r in run) == list(range(24))
    code, out, _ = cli(capsys, "verify", root, "--no-progress")
    assert code == 1 and "stored twice" in out


def test_reordered_frames_of_a_closed_store(tmp_path, capsys):
    root = many_frame_store(str(tmp_path / "d"))
    path = shard(root, "-0.tfds")
    head, frames = split_frames(path)
    frames[4], frames[5] = frames[5], frames[4]
    rewrite(path, head, frames)
    with pytest.raises(errors.TfdumpCorruptionError, match="out of order"):
        DumpReader(root)
    code, out, _ = cli(capsys, "verify", root, "--no-progress")
    assert code == 1 and "out of order" in out


def test_removed_frame_of_a_killed_writer_is_missing_tensors(tmp_path, capsys):
    root = many_frame_store(str(tmp_path / "d"))
    drop_close_event(root)
    path = shard(root, "-0.tfds")
    head, frames = split_frames(path)
    rewrite(path, head, frames[:10] + frames[11:])
    reader = DumpReader(root)                      # nothing is corrupt ...
    assert reader.runs[0].missing_tensors == 1
    code, out, _ = cli(capsys, "verify", root, "--no-progress")
    assert code == 1 and "1 of its 24 tensor(s) are missing" in out   # ... but a tensor is lost


def test_run_holding_more_tensors_than_counted(tmp_path, capsys):
    """Frames of another store's run grafted in (a killed writer: no trailer
    to catch it): the run's stored tensors exceed its writer's count."""
    a = many_frame_store(str(tmp_path / "a"), n=24)
    b = many_frame_store(str(tmp_path / "b"), n=30)
    drop_close_event(a)
    path = shard(a, "-0.tfds")
    head, frames = split_frames(path)
    _, more = split_frames(shard(b, "-0.tfds"))
    rewrite(path, head, frames + more[24:])       # seq 24..29 of a run that counted 24
    reader = DumpReader(a)
    assert len(reader.runs[0]) == 30
    code, out, _ = cli(capsys, "verify", a, "--no-progress")
    assert code == 1 and "30 tensor(s) are stored, but its writer counted 24" in out


def test_torn_tail_of_a_killed_writer_that_lost_nothing_verifies_ok(tmp_path, capsys):
    root = many_frame_store(str(tmp_path / "d"))
    drop_close_event(root)
    path = shard(root, "-0.tfds")
    head, frames = split_frames(path)
    rewrite(path, head, frames + [frames[-1][:HDR + 3]])
    assert DumpReader(root).torn_tails
    code, out, _ = cli(capsys, "verify", root, "--no-progress")
    assert code == 0 and out.startswith("OK") and "torn" in out


def test_intact_store_verifies_ok(tmp_path, capsys):
    root = many_frame_store(str(tmp_path / "d"))
    code, out, _ = cli(capsys, "verify", root, "--no-progress")
    assert code == 0 and out.startswith("OK")
    reader = DumpReader(root)
    assert reader.verify() == [] and not reader.problems and not reader.torn_tails


def test_refresh_reports_a_duplicate_once(tmp_path):
    root = many_frame_store(str(tmp_path / "d"))
    drop_close_event(root)
    path = shard(root, "-0.tfds")
    head, frames = split_frames(path)
    rewrite(path, head, frames + [frames[0]])
    reader = DumpReader(root, on_corruption="skip")
    reader.refresh()
    reader.refresh()
    assert sum("stored twice" in p for p in reader.problems) == 1


def test_random_frame_shuffles_never_return_a_record_twice(tmp_path):
    root = many_frame_store(str(tmp_path / "d"), n=12)
    drop_close_event(root)
    path = shard(root, "-0.tfds")
    head, frames = split_frames(path)
    rng = random.Random(7)
    for _ in range(20):
        picked = [rng.choice(frames) for _ in range(rng.randint(1, 20))]
        rewrite(path, head, picked)
        reader = DumpReader(root, on_corruption="skip")
        run = reader.runs[0]
        seqs = [r.seq for r in run]
        assert len(seqs) == len(set(seqs))
        for rec, value in zip(run, run.values()):
            assert value[0] == int(rec.node_name[1:])


@pytest.mark.parametrize("half_of", ["the next event", "a larger frame"])
def test_half_frame_followed_by_frames_is_corruption_and_skipped(tmp_path, capsys, half_of):
    """What older writers left on a full disk: half a frame, then the META
    events written once space came back. The half frame is corruption (not
    a torn tail that hides the events after it); skipping it keeps them.
    ``half_of``: the half frame's declared length ends inside the next frame,
    or beyond the end of the file."""
    root = many_frame_store(str(tmp_path / "d"))
    drop_close_event(root)
    meta = shard(root, "-meta.tfds")
    head, frames = split_frames(meta)
    if half_of == "the next event":
        half = frames[-1][:len(frames[-1]) // 2]      # the run_end event, half written
    else:
        blob = os.urandom(8192)                       # an event with a large attachment
        raw_table, raw_data, n = _native.encode_meta('{"event": "run_end"}', [blob], [_native.hash128(blob)])
        big = b"".join(bytes(p) for p in encode_frame(_native.FRAME_KIND_META, raw_table, raw_data, n))
        assert len(big) // 2 > len(frames[-1])
        half = big[:len(big) // 2]
    rewrite(meta, head, frames[:-1] + [half] + frames[-1:])
    with pytest.raises(errors.TfdumpCorruptionError, match="offset %d" % (FILE_HDR + sum(map(len, frames[:-1])))):
        DumpReader(root)
    reader = DumpReader(root, on_corruption="skip")
    run = reader.runs[0]
    assert run.status == "complete" and len(run) == 24 and not reader.torn_tails
    code, out, _ = cli(capsys, "verify", root, "--no-progress")
    assert code == 1 and "CORRUPT" in out
