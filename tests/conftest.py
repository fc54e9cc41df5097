"""Shared fixtures. Tests run real TensorFlow, the real native extension and real files."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402

import pytest  # noqa: E402
import zstandard  # noqa: E402

import tfdump_fast  # noqa: E402
from tfdump_fast import _native  # noqa: E402

# Where the package under test was imported from (site-packages after
# `pip install .`, or src/ in a development build). Subprocesses of the tests
# must import that same package, never the bare source tree of a fresh clone,
# which has no compiled extensions.
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(tfdump_fast.__file__)))


def scan_shard(path):
    """A deliberately minimal, independent reader of one shard file (docs/FORMAT.md).

    Returns (file header, list of (frame header, parsed table, raw data), torn tail bytes).
    """
    with open(path, "rb") as f:
        buf = f.read()
    header = _native.parse_file_header(buf[:_native.FILE_HEADER_SIZE])
    pos, frames = _native.FILE_HEADER_SIZE, []
    while pos < len(buf):
        if len(buf) - pos < _native.FRAME_HEADER_SIZE:
            break
        fh = _native.parse_frame_header(buf[pos:pos + _native.FRAME_HEADER_SIZE])
        end = pos + _native.FRAME_HEADER_SIZE + fh["table_stored_len"] + fh["data_stored_len"]
        if end > len(buf):
            break
        body = pos + _native.FRAME_HEADER_SIZE
        table = buf[body:body + fh["table_stored_len"]]
        data = buf[body + fh["table_stored_len"]:end]
        assert _native.crc32c(table) == fh["table_crc"]
        assert _native.crc32c(data) == fh["data_crc"]
        if fh["codec"] == _native.CODEC_ZSTD:
            dctx = zstandard.ZstdDecompressor()
            table = dctx.decompress(table)
            data = dctx.decompress(data) if data else b""
        assert len(table) == fh["table_raw_len"] and len(data) == fh["data_raw_len"]
        frames.append((fh, _native.parse_table(table, fh["n_entries"]), data))
        pos = end
    return header, frames, len(buf) - pos


def scan_store(root):
    """All tensors and META events of a session root, via :func:`scan_shard`.

    Returns ``(tensors, events)``: tensors are dicts with the watch key, run,
    seq, dtype, flags, shape, payload bytes and attached blob payloads.
    """
    blobs, keys, pending, events = {}, {}, [], []
    for name in sorted(os.listdir(root)):
        if not name.endswith(".tfds"):
            continue
        header, frames, _torn = scan_shard(os.path.join(root, name))
        wid = header["writer_id"]
        for fh, table, data in frames:
            for b in table.blobs:
                raw = data[int(b["data_offset"]):int(b["data_offset"]) + int(b["raw_len"])]
                if b["filter"] == 1:
                    raw = _native.unshuffle(raw, int(b["elem_size"]))
                blobs[(wid, bytes(b["hash"]))] = raw
            for key_id, slot, device, node, op in table.key_defs:
                keys[(wid, header["shard_index"], key_id)] = (device, node, slot, op)
            for t in table.tensors:
                dims = table.dims[t["dims_offset"]:t["dims_offset"] + t["ndims"]].tolist()
                refs = [bytes(h) for h in table.blob_refs[t["blobs_offset"]:t["blobs_offset"] + t["n_blobs"]]]
                pending.append((wid, header["shard_index"], t, dims, refs))
            for text, _att in table.metas:
                events.append(json.loads(text))
    tensors = []
    for wid, shard, t, dims, refs in pending:
        payload = b"" if t["payload_len"] == 0 else blobs[(wid, bytes(t["payload_hash"]))]
        assert len(payload) == t["payload_len"]
        device, node, slot, op = keys[(wid, shard, int(t["key_id"]))]
        tensors.append({
            "writer": wid, "run_id": int(t["run_id"]), "seq": int(t["seq"]), "wall_us": int(t["wall_us"]),
            "device": device, "node": node, "slot": slot, "debug_op": op, "dtype": int(t["dtype"]),
            "flags": int(t["flags"]), "shape": dims, "payload": payload,
            "blobs": [blobs[(wid, h)] for h in refs],
        })
    tensors.sort(key=lambda d: (d["writer"], d["run_id"], d["seq"]))
    return tensors, events


@pytest.fixture
def session_root(tmp_path):
    return str(tmp_path / "dump")


@pytest.fixture
def no_ram_filesystem(monkeypatch):
    """Makes TensorFlow's ``ram://`` file system look absent to tfdump-fast
    (every call raises ``UnimplementedError``, as TF does for an unknown scheme)."""
    import tensorflow as tf

    import tfdump_fast.published as published_module

    class NoRamFileSystem:
        def __getattr__(self, name):
            def unimplemented(*args, **kwargs):
                raise tf.errors.UnimplementedError(
                    None, None, "File system scheme 'ram' not implemented")
            return unimplemented

    monkeypatch.setattr(published_module, "_gfile", NoRamFileSystem())


def failing_graph():
    """``x`` (float32[2]) -> ``before = 2x`` -> ``check`` (assert_positive) ->
    ``after`` (an identity that waits for the check): a run fed a negative
    element raises ``InvalidArgumentError`` after ``before`` ran.
    Returns ``(graph, x, after)``."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [2], name="x")
        before = tf.multiply(x, 2.0, name="before")
        check = tf.debugging.assert_positive(before, message="not positive", name="check")
        with tf.control_dependencies([check]):
            after = tf.identity(before, name="after")
    return g, x, after
