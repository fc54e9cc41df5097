"""Bad input: not a dump, a newer format, corrupt frames, truncated files,
lost shards, missing runs. Each gives one clear error (or, for a torn tail,
a report) -- never a traceback from deep inside."""

import os
import shutil
import struct

import numpy as np
import pytest

from tfdump_fast import DumpReader, DumpWriter, _native, errors
from tfdump_fast.cli import main

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "data", "golden_v1")
HDR = _native.FRAME_HEADER_SIZE


@pytest.fixture
def store(session_root):
    """One data shard with several frames, each holding distinct tensors."""
    with DumpWriter(session_root, workers=1, frame_bytes=4096, shuffle=False) as w:
        run = w.begin_run(capture=False)
        for i in range(12):
            w.write(np.full(1024, i, dtype=np.float32), "t%d" % i, run=run)
        w.end_run(run)
    return session_root


@pytest.fixture
def killed_store(store):
    """The same store as if its writer had been killed after writing every
    frame: its metadata shard lacks the final writer_close event (and so
    the trailer that makes later damage corruption)."""
    meta = meta_shard(store)
    offset, _ = frames(meta)[-1]
    with open(meta, "r+b") as f:
        f.truncate(offset)
    return store


def meta_shard(root):
    (name,) = [n for n in os.listdir(root) if n.endswith("-meta.tfds")]
    return os.path.join(root, name)


def data_shard(root):
    (name,) = [n for n in os.listdir(root) if n.endswith("-0.tfds")]
    return os.path.join(root, name)


def frames(path):
    """(offset, header) of every frame of a shard file."""
    with open(path, "rb") as f:
        buf = f.read()
    pos, out = _native.FILE_HEADER_SIZE, []
    while pos + HDR <= len(buf):
        h = _native.parse_frame_header(buf[pos:pos + HDR])
        out.append((pos, h))
        pos += HDR + h["table_stored_len"] + h["data_stored_len"]
    return out


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_store_has_several_frames(store):
    assert len(frames(data_shard(store))) >= 4


def test_corrupt_record_table_in_the_middle(store, capsys):
    path = data_shard(store)
    offset, h = frames(path)[1]
    flip(path, offset + HDR + 3)
    with pytest.raises(errors.TfdumpCorruptionError) as info:
        DumpReader(store)
    msg = str(info.value)
    assert path in msg and "offset %d" % offset in msg and "checksum" in msg and "verify" in msg
    # what is intact stays readable
    reader = DumpReader(store, on_corruption="skip")
    assert len(reader.problems) == 1
    assert len(reader.runs[0]) < 12 and reader.runs[0].missing_tensors == 12 - len(reader.runs[0])
    assert reader.runs[0].get("t0")[0][0] == 0
    code, out, _ = cli(capsys, "verify", store, "--no-progress")
    assert code == 1 and "CORRUPT" in out and "offset %d" % offset in out
    code, _, err = cli(capsys, "ls", store)
    assert code == 1 and err.startswith("tfdump-fast: error: ") and err.count("\n") == 1


def test_corrupt_data_block_is_found_when_read_and_by_verify(store, capsys):
    path = data_shard(store)
    offset, h = frames(path)[1]
    flip(path, offset + HDR + h["table_stored_len"] + 10)
    reader = DumpReader(store)  # opening reads only tables
    run = reader.runs[0]
    bad = []
    for rec in run.records:
        try:
            rec.value
        except errors.TfdumpCorruptionError as exc:
            assert "data block" in str(exc) and "offset %d" % offset in str(exc)
            bad.append(rec.node_name)
    assert bad and len(bad) < 12
    assert any("offset %d" % offset in p for p in DumpReader(store).verify())
    code, out, _ = cli(capsys, "verify", store, "--no-progress")
    assert code == 1 and "data block" in out
    code, _, err = cli(capsys, "show", store, "0", bad[0])
    assert code == 1 and "checksum" in err


def test_corrupt_frame_header_skips_to_the_next_frame(store):
    path = data_shard(store)
    offset, _ = frames(path)[1]
    flip(path, offset + 9)  # inside table_stored_len: the header checksum fails
    with pytest.raises(errors.TfdumpCorruptionError, match="frame header"):
        DumpReader(store)
    reader = DumpReader(store, on_corruption="skip")
    names = {r.node_name for r in reader.runs[0].records}
    assert "t0" in names and "t11" in names and len(names) < 12


def test_truncated_file_is_a_torn_tail_not_an_error(killed_store, capsys):
    store = killed_store
    path = data_shard(store)
    offset, h = frames(path)[-1]
    size = offset + HDR + h["table_stored_len"] + h["data_stored_len"]
    with open(path, "r+b") as f:
        f.truncate(size - 7)
    reader = DumpReader(store)
    assert reader.torn_tails == {path: size - 7 - offset}
    run = reader.runs[0]
    assert run.status == "complete" and 0 < len(run) < 12 and run.missing_tensors == 12 - len(run)
    assert [v[0] for v in run.values()] == list(range(len(run)))
    code, out, err = cli(capsys, "ls", store)
    assert code == 0 and "incomplete frame" in err and "complete (%d missing)" % (12 - len(run)) in out
    # the torn tail is no error, but the tensors it held are accepted ones lost
    code, out, err = cli(capsys, "verify", store, "--no-progress")
    assert code == 1 and "torn" in out and "%d of its 12 tensor(s) are missing" % (12 - len(run)) in out
    assert "was not closed" in out


def test_garbage_appended_after_the_last_frame_is_a_torn_tail(killed_store, capsys):
    store = killed_store
    path = data_shard(store)
    with open(path, "ab") as f:
        f.write(b"\x00" * 100)
    reader = DumpReader(store)
    assert reader.torn_tails == {path: 100} and len(reader.runs[0]) == 12
    code, out, err = cli(capsys, "verify", store, "--no-progress")
    assert code == 0 and "torn" in out


def test_last_frame_with_unwritten_data_is_torn(killed_store):
    store = killed_store
    """A crash can leave the last frame at full length but zero-filled."""
    path = data_shard(store)
    offset, h = frames(path)[-1]
    data_at = offset + HDR + h["table_stored_len"]
    with open(path, "r+b") as f:
        f.seek(data_at)
        f.write(b"\x00" * h["data_stored_len"])
    reader = DumpReader(store)
    assert path in reader.torn_tails and len(reader.runs[0]) < 12


def test_file_cut_inside_its_header(killed_store):
    store = killed_store
    path = data_shard(store)
    with open(path, "r+b") as f:
        f.truncate(20)
    reader = DumpReader(store)
    assert reader.torn_tails[path] == 20
    assert reader.runs[0].missing_tensors == 12


def test_lost_data_shard_reports_missing_tensors(killed_store):
    store = killed_store
    os.remove(data_shard(store))
    run = DumpReader(store).runs[0]
    assert run.status == "complete" and len(run) == 0 and run.missing_tensors == 12


def test_newer_format_version(store, capsys):
    path = data_shard(store)
    with open(path, "r+b") as f:
        head = bytearray(f.read(48))
        head[8:12] = struct.pack("<I", _native.FORMAT_VERSION + 1)
        head[44:48] = struct.pack("<I", _native.crc32c(bytes(head[:44])))
        f.seek(0)
        f.write(head)
    with pytest.raises(errors.TfdumpFormatError) as info:
        DumpReader(store)
    msg = str(info.value)
    assert "version %d" % (_native.FORMAT_VERSION + 1) in msg and "up to version %d" % _native.FORMAT_VERSION in msg
    assert path in msg
    code, _, err = cli(capsys, "ls", store)
    assert code == 2 and "upgrade tfdump-fast" in err


def test_not_a_shard_file_among_shards(store):
    path = data_shard(store)
    with open(path, "r+b") as f:
        f.write(b"NOTASHARD")
    with pytest.raises(errors.TfdumpCorruptionError, match="not a tfdump-fast shard file"):
        DumpReader(store)


def test_paths_that_are_not_dumps(tmp_path, capsys):
    with pytest.raises(errors.TfdumpIOError, match="does not exist"):
        DumpReader(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.TfdumpFormatError, match="holds no \\*.tfds shard files"):
        DumpReader(str(tmp_path / "empty"))
    with pytest.raises(errors.TfdumpFormatError, match="looks like a tfdbg dump"):
        DumpReader(os.path.join(GOLDEN, "tfdbg"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(errors.TfdumpFormatError, match="not a directory"):
        DumpReader(str(tmp_path / "file"))
    for argv in (["ls", str(tmp_path / "missing")], ["ls", str(tmp_path / "empty")],
                 ["verify", os.path.join(GOLDEN, "tfdbg")]):
        code, out, err = cli(capsys, *argv)
        assert code == 2 and err.startswith("tfdump-fast: error: ") and err.count("\n") == 1


def test_missing_run_and_tensor(store, capsys):
    reader = DumpReader(store)
    with pytest.raises(errors.TfdumpNotFoundError, match="no run named run_9_9"):
        reader.run("run_9_9")
    with pytest.raises(errors.TfdumpNotFoundError, match="out of range"):
        reader.run(5)
    with pytest.raises(KeyError):  # still a KeyError for code written against dicts
        reader.runs[0].get("nope")
    code, _, err = cli(capsys, "show", store, "run_9_9", "t1")
    assert code == 2 and "no run named run_9_9" in err


def test_corrupt_golden_copy_reported_by_cli_find(tmp_path, capsys):
    root = str(tmp_path / "g")
    shutil.copytree(os.path.join(GOLDEN, "writer"), root)
    shard = sorted(n for n in os.listdir(root) if n.endswith("-meta.tfds"))[-1]
    path = os.path.join(root, shard)
    offset, h = frames(path)[1]  # a META frame in the middle of the metadata shard
    flip(path, offset + HDR + 2)
    code, _, err = cli(capsys, "find", root, "--inf-nan")
    assert code == 1 and "checksum" in err


def test_scanner_reports_corruption_and_torn_tails_as_two_kinds(store):
    """store.scan hands each kind of damage to its own DamageReporter method."""
    from tfdump_fast.store.naming import parse_shard_file_name
    from tfdump_fast.store.scan import DamageReporter, Shard, ShardScanner

    class Recording(DamageReporter):
        def __init__(self):
            super().__init__(store, "skip")
            self.torn = []

        def torn_tail(self, path, nbytes):
            super().torn_tail(path, nbytes)
            self.torn.append(nbytes)

    path = data_shard(store)
    offsets = frames(path)
    flip(path, offsets[1][0] + HDR + 3)  # a record table in the middle
    with open(path, "ab") as f:
        f.write(b"\x00" * 10)            # and a torn tail
    name = parse_shard_file_name(os.path.basename(path))
    reporter = Recording()
    found = []
    ShardScanner(reporter).scan(0, Shard(path, name.writer_id, name.index), found)
    assert len(found) == len(offsets) - 1
    assert len(reporter.problems) == 1 and "offset %d" % offsets[1][0] in reporter.problems[0]
    assert reporter.torn[-1] == 10 and reporter.torn_bytes(path) == 10


def _cut_last_frame(path):
    offset, h = frames(path)[-1]
    with open(path, "r+b") as f:
        f.truncate(offset + HDR + h["table_stored_len"] + h["data_stored_len"] - 7)


def _append_garbage(path):
    with open(path, "ab") as f:
        f.write(b"\x00" * 100)


def _zero_last_data_block(path):
    offset, h = frames(path)[-1]
    with open(path, "r+b") as f:
        f.seek(offset + HDR + h["table_stored_len"])
        f.write(b"\x00" * h["data_stored_len"])


def _cut_inside_header(path):
    with open(path, "r+b") as f:
        f.truncate(20)


@pytest.mark.parametrize("damage", [_cut_last_frame, _append_garbage, _zero_last_data_block,
                                    _cut_inside_header, os.remove])
def test_damage_after_a_clean_close_is_corruption_not_a_torn_tail(store, capsys, damage):
    """The writer_close trailer says where each shard ends: what a killed
    writer leaves as a torn tail is, after a clean close, corruption."""
    path = data_shard(store)
    damage(path)
    with pytest.raises(errors.TfdumpCorruptionError, match="closed it cleanly"):
        DumpReader(store)
    reader = DumpReader(store, on_corruption="skip")
    assert reader.torn_tails == {}
    assert any("closed it cleanly" in p for p in reader.problems)
    code, out, _ = cli(capsys, "verify", store, "--no-progress")
    assert code == 1 and "CORRUPT" in out and "closed it cleanly" in out


def test_clean_close_records_where_each_shard_ends(store):
    reader = DumpReader(store)
    (w,) = reader.writers
    trailer = w["close"]["shards"]
    assert sorted(trailer) == sorted(os.path.basename(p) for p in w["shards"])
    path = data_shard(store)
    entry = trailer[os.path.basename(path)]
    assert entry["bytes"] == os.path.getsize(path) and entry["frames"] == len(frames(path))
    meta = trailer[os.path.basename(meta_shard(store))]
    assert frames(meta_shard(store))[-1][0] == meta["bytes"]   # the writer_close frame follows
