"""Every public entry point refuses bad input with a TfdumpError subclass whose
message names the problem (issue #10, outcome 5).

Real writers, real files, a real FIFO; each case raised an internal exception
(OverflowError, AttributeError, IndexError, IsADirectoryError, ...), hung, or
was silently accepted before.
"""

import os
import threading

import numpy as np
import pytest

from tfdump_fast import DumpReader, DumpWriter, convert, import_tfdbg
from tfdump_fast.dumpdir import StoreDumpDir
from tfdump_fast.errors import (
    TfdumpError,
    TfdumpFormatError,
    TfdumpNotFoundError,
    TfdumpTypeError,
    TfdumpUsageError,
)


# ------------------------------------------------------------------ DumpWriter options

@pytest.mark.parametrize("option, value, message", [
    ("queue_bytes", 2 ** 70, "queue_bytes=.* at most 1 PiB"),
    ("queue_bytes", "1G", "queue_bytes='1G' must be an integer"),
    ("dedup_max_entries", -1, "dedup_max_entries=-1 must be an integer from 0"),
    ("dedup_max_entries", 2 ** 70, "dedup_max_entries=.* must be an integer from 0"),
    ("dedup_max_entries", "x", "dedup_max_entries='x'"),
    ("zero_copy_threshold", 2 ** 70, "zero_copy_threshold="),
    ("workers", True, "workers=True must be an integer"),
    ("worker_nice", True, "worker_nice=True"),
    ("flush_interval", "x", "flush_interval='x' must be a number of seconds"),
    ("flush_interval", float("inf"), "flush_interval=inf"),
    ("disk_limit_bytes", True, "disk_limit_bytes=True must be a positive integer"),
    ("disk_limit_bytes", 2 ** 70, "disk_limit_bytes="),
    ("shuffle", "no", "shuffle='no' must be True or False"),
    ("allow_existing", "yes", "allow_existing='yes' must be True or False"),
    ("defer_during_runs", None, "defer_during_runs=None must be True or False"),
])
def test_writer_option_out_of_range(tmp_path, option, value, message):
    with pytest.raises(TfdumpUsageError, match=message):
        DumpWriter(str(tmp_path / "root"), **{option: value})
    assert not (tmp_path / "root").exists()  # refused before anything was created


@pytest.mark.parametrize("root, message", [
    (None, "session_root=None must be a path"),
    (5, "session_root=5 must be a path"),
    ("", "session_root is an empty string"),
    ("/tmp/a\0b", "contains a NUL byte"),
])
def test_writer_session_root_must_be_a_path(root, message):
    with pytest.raises(TfdumpUsageError, match=message):
        DumpWriter(root)


# ------------------------------------------------------------------ DumpWriter methods

@pytest.fixture
def writer(tmp_path):
    w = DumpWriter(str(tmp_path / "w"))
    yield w
    w.close()


@pytest.mark.parametrize("kwargs, message", [
    ({"node_name": None}, r"write\(node_name=None\): node_name must be a non-empty str"),
    ({"node_name": 5}, r"node_name=5"),
    ({"node_name": "n", "debug_op": None}, r"debug_op=None"),
    ({"node_name": "n", "device": None}, r"device=None"),
    ({"node_name": "n", "output_slot": -1}, r"output_slot=-1"),
    ({"node_name": "n", "output_slot": 2 ** 70}, r"output_slot="),
    ({"node_name": "n", "output_slot": "0"}, r"output_slot='0'"),
    ({"node_name": "n", "wall_us": 2 ** 70}, r"wall_us="),
    ({"node_name": "n", "wall_us": -1}, r"wall_us=-1"),
    ({"node_name": "n", "run": "run_1"}, r"write\(run='run_1'\): pass the Run"),
])
def test_write_bad_watch_key_or_run(writer, kwargs, message):
    with pytest.raises(TfdumpUsageError, match=message):
        writer.write(np.zeros(3, np.float32), **kwargs)
    assert writer.stats()["tensors_accepted"] == 0


@pytest.mark.parametrize("value, message", [
    (np.array([object()]), "every element must be bytes or str"),
    ({"a": 1}, "every element must be bytes or str"),
    (np.zeros(2, np.clongdouble), "has no TensorFlow equivalent"),
])
def test_write_unstorable_value(writer, value, message):
    with pytest.raises(TfdumpTypeError, match=message):
        writer.write(value, "n")


@pytest.mark.parametrize("bad", [None, "run_1", 1])
def test_end_run_needs_a_run(writer, bad):
    with pytest.raises(TfdumpUsageError, match=r"end_run\(run=.*\): pass the Run"):
        writer.end_run(bad)


def test_end_run_refuses_another_writers_run(tmp_path, writer):
    with DumpWriter(str(tmp_path / "other")) as other:
        theirs = other.begin_run(capture=False)
        mine = writer.begin_run(capture=False)  # same run_id (1) in both writers
        assert theirs.run_id == mine.run_id
        with pytest.raises(TfdumpUsageError, match="does not belong to this writer"):
            writer.end_run(theirs)
        with pytest.raises(TfdumpUsageError, match="does not belong to this writer"):
            writer.write(np.zeros(2), "n", run=theirs)
        other.end_run(theirs)  # still open in its own writer
        with pytest.raises(TfdumpUsageError, match="belongs to another writer"):
            writer.end_run(theirs)
        writer.end_run(mine)


def test_begin_run_metadata_cannot_override_run_id(tmp_path):
    root = str(tmp_path / "w")
    with DumpWriter(root) as w:
        with pytest.raises(TfdumpUsageError, match="sets run_id, which the writer records itself"):
            w.begin_run(metadata={"run_id": 99}, capture=False)
        with pytest.raises(TfdumpUsageError, match="metadata must be a dict"):
            w.begin_run(metadata=[("a", 1)], capture=False)
        run = w.begin_run(metadata={"fetches": "x"}, capture=False)
        w.write(np.arange(3), "n", run=run)
        with pytest.raises(TfdumpUsageError, match="sets status"):
            w.end_run(run, metadata={"status": "ok"})
        w.end_run(run)
    runs = DumpReader(root).runs
    assert [(r.run_id, r.status, len(r)) for r in runs] == [(1, "complete", 1)]


@pytest.mark.parametrize("kwargs, message", [
    ({"capture": "yes"}, "capture must be True or False"),
    ({"run_name": 5}, "a run name must be a non-empty str"),
    ({"run_name": "a/b"}, "without '/'"),
])
def test_begin_run_bad_arguments(writer, kwargs, message):
    kwargs.setdefault("capture", False)
    with pytest.raises(TfdumpUsageError, match=message):
        writer.begin_run(**kwargs)


@pytest.mark.parametrize("attachments", ["graph", [1], [b"ok", None]])
def test_end_run_attachments_must_be_bytes(writer, attachments):
    run = writer.begin_run(capture=False)
    with pytest.raises(TfdumpUsageError, match="sequence of bytes"):
        writer.end_run(run, attachments=attachments)
    writer.end_run(run)  # the run is still open: the refused call changed nothing


def test_flush_timeout_must_be_a_number(writer):
    with pytest.raises(TfdumpUsageError, match=r"flush\(timeout='x'\)"):
        writer.flush("x")


# ------------------------------------------------------------------ reader

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("store") / "dump")
    with DumpWriter(root) as w:
        run = w.begin_run(capture=False)
        w.write(np.arange(4, dtype=np.float32), "a", run=run)
        w.write(np.arange(2, dtype=np.int64), "b", run=run)
        w.end_run(run)
    return root


@pytest.mark.parametrize("index", [10 ** 6, -10 ** 6, 2])
def test_run_value_index_out_of_range(store, index):
    run = DumpReader(store).runs[0]
    with pytest.raises(TfdumpNotFoundError, match=r"holds 2 tensors, so value\(-?\d+\) is out of range"):
        run.value(index)
    np.testing.assert_array_equal(run.value(-1), [0, 1])


@pytest.mark.parametrize("index", [10 ** 6, -10 ** 6, 2])
def test_run_records_index_out_of_range(store, index):
    run = DumpReader(store).runs[0]
    for lookup in (lambda: run.records[index], lambda: run[index]):
        with pytest.raises(TfdumpNotFoundError, match=r"has 2 records; index -?\d+ is out of range") as info:
            lookup()
        assert isinstance(info.value, IndexError)  # as a list's, for code that catches that
    assert run.records[-1].node_name == "b" and [r.node_name for r in run.records[:5]] == ["a", "b"]


@pytest.mark.parametrize("index", ["a", 1.5, None])
def test_run_records_index_must_be_an_integer(store, index):
    run = DumpReader(store).runs[0]
    with pytest.raises(TfdumpTypeError, match="indexed by int or slice"):
        run.records[index]


@pytest.mark.parametrize("progress", [5, "yes", [print]])
def test_verify_progress_must_be_callable(store, progress):
    with pytest.raises(TfdumpTypeError, match=r"verify\(progress=.*\): progress must be a callable"):
        DumpReader(store).verify(progress=progress)
    seen = []
    assert DumpReader(store).verify(progress=lambda done, total: seen.append((done, total))) == []


@pytest.mark.parametrize("index", ["x", 1.5, None, True])
def test_run_value_index_must_be_an_integer(store, index):
    with pytest.raises(TfdumpUsageError, match="takes an integer position"):
        DumpReader(store).runs[0].value(index)


@pytest.mark.parametrize("call, message", [
    (lambda run: run.select(None), "node=None must be a node or tensor name"),
    (lambda run: run.get(5), "node=5"),
    (lambda run: run.select("a", output_slot="0"), "output_slot='0'"),
    (lambda run: run.select("a", debug_op=1), "debug_op=1"),
    (lambda run: run.find(5), r"find\(predicate=5\)"),
    (lambda run: run.find(None, first_n="x"), r"find\(first_n='x'\)"),
    (lambda run: run.find(None, exclude=5), r"find\(exclude=5\)"),
    (lambda run: run.find(None, device=0), r"find\(device=0\)"),
])
def test_run_query_arguments(store, call, message):
    with pytest.raises(TfdumpUsageError, match=message):
        call(DumpReader(store).runs[0])


@pytest.mark.parametrize("kwargs, message", [
    ({"session_root": None}, "session_root=None must be a path"),
    ({"cache_bytes": -1}, "cache_bytes=-1"),
    ({"cache_bytes": "x"}, "cache_bytes='x'"),
])
def test_reader_arguments(store, kwargs, message):
    kwargs.setdefault("session_root", store)
    with pytest.raises(TfdumpUsageError, match=message):
        DumpReader(**kwargs)


def test_reader_run_by_key_needs_integers(store):
    with pytest.raises(TfdumpUsageError, match=r"\(writer_id, run_id\) integers"):
        DumpReader(store).run(("a", "b"))


def test_store_dump_dir_needs_a_path():
    with pytest.raises(TfdumpUsageError, match="session_root=None must be a path"):
        StoreDumpDir(None)


def test_convert_and_import_need_paths(store, tmp_path):
    with pytest.raises(TfdumpUsageError, match="dest=None must be a path"):
        convert(store, None)
    with pytest.raises(TfdumpUsageError, match="session_root=None must be a path"):
        convert(None, str(tmp_path / "out"))
    with pytest.raises(TfdumpUsageError, match="tfdbg_dir=None must be a path"):
        import_tfdbg(None, str(tmp_path / "new"))
    with pytest.raises(TfdumpUsageError, match="session_root=None must be a path"):
        import_tfdbg(str(tmp_path), None)


# ------------------------------------------------------------------ special files

def test_directory_named_like_a_shard_is_refused(tmp_path):
    root = tmp_path / "dump"
    (root / "w0000000000000001-0.tfds").mkdir(parents=True)
    with pytest.raises(TfdumpFormatError, match="is a directory, not a shard file"):
        DumpReader(str(root))


def open_or_fail_if_hung(root, fifo):
    """DumpReader(root)'s exception; fails the test (unblocking the reader) if it hangs on ``fifo``."""
    outcome = []

    def open_it():
        try:
            DumpReader(str(root))
        except TfdumpError as exc:
            outcome.append(exc)

    t = threading.Thread(target=open_it, daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():
        # Unblock the reader stuck in open() so the test process can go on.
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(10)
        pytest.fail("DumpReader hung opening a FIFO named like a shard")
    assert len(outcome) == 1, "DumpReader opened a FIFO without an error"
    return outcome[0]


def test_fifo_named_like_a_shard_is_refused_without_hanging(tmp_path):
    root = tmp_path / "dump"
    root.mkdir()
    fifo = root / "w0000000000000001-0.tfds"
    os.mkfifo(fifo)
    exc = open_or_fail_if_hung(root, fifo)
    assert isinstance(exc, TfdumpFormatError) and "is a FIFO, not a shard file" in str(exc)


def test_fifo_beside_real_shards_is_refused(store, tmp_path):
    import shutil

    root = tmp_path / "dump"
    shutil.copytree(store, root)
    fifo = root / "w00000000000000ff-0.tfds"
    os.mkfifo(fifo)
    exc = open_or_fail_if_hung(root, fifo)
    assert isinstance(exc, TfdumpFormatError) and "FIFO" in str(exc)


def test_convert_into_a_file_is_refused(store, tmp_path):
    target = tmp_path / "a_file"
    target.write_text("x")
    with pytest.raises(TfdumpUsageError, match="is a file, not a directory"):
        convert(store, str(target))
    assert target.read_text() == "x"


def test_import_refuses_a_fifo_in_a_tfdbg_run_directory(tmp_path):
    run_dir = tmp_path / "tfdbg" / "run_1_0"
    run_dir.mkdir(parents=True)
    fifo = run_dir / "_tfdbg_core_metadata_1"
    os.mkfifo(fifo)
    outcome = []

    def run_import():
        try:
            import_tfdbg(str(tmp_path / "tfdbg"), str(tmp_path / "store"))
        except TfdumpError as exc:
            outcome.append(exc)

    t = threading.Thread(target=run_import, daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(10)
        pytest.fail("import_tfdbg hung opening a FIFO")
    assert len(outcome) == 1 and isinstance(outcome[0], TfdumpFormatError)
    assert "is not a regular file" in str(outcome[0])
