"""DumpReader: runs, watch keys, bit-exact values, search, live and merged
stores, the golden format-version-1 files. Real files written by DumpWriter;
no TensorFlow (one test checks that the reader never imports it)."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tfdump_fast import DumpReader, DumpWriter, errors
from tfdump_fast.reader import InconvertibleTensor, VariantElement, WatchKey, has_inf_or_nan

ml_dtypes = pytest.importorskip("ml_dtypes")

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "data", "golden_v1")
from conftest import PKG_PARENT as SRC  # noqa: E402  (the package under test)
DEVICE = "/job:localhost/replica:0/task:0/device:CPU:0"

CASES = {
    "f32": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
    "f32_special": np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45], dtype=np.float32),
    "f64": np.linspace(-1, 1, 33),
    "f16": np.array([1.5, -2.25, 65504], dtype=np.float16),
    "bf16": np.array([1.0, 3.140625, -7.5], dtype=ml_dtypes.bfloat16),
    "i8": np.array([-128, 0, 127], dtype=np.int8),
    "i16": np.array([-32768, 5, 32767], dtype=np.int16),
    "i32": np.array([-2**31, 7, 2**31 - 1], dtype=np.int32),
    "i64": np.array([-2**63, 9, 2**63 - 1], dtype=np.int64),
    "u8": np.array([0, 255], dtype=np.uint8),
    "u16": np.array([0, 65535], dtype=np.uint16),
    "u32": np.array([0, 2**32 - 1], dtype=np.uint32),
    "u64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "bool": np.array([[True, False], [False, True]]),
    "c64": np.array([1 + 2j, -3.5 - 0.25j], dtype=np.complex64),
    "c128": np.array([1e300 + 1j], dtype=np.complex128),
    "scalar": np.array(2.5),
    "empty": np.zeros((0, 5), dtype=np.float32),
    "strings": np.array([b"abc", b"", b"nul\x00inside", b"\xff" * 300], dtype=object),
    "big": np.random.default_rng(0).standard_normal((300, 300)).astype(np.float32),
}


def same(a, b):
    """Bit-identical: dtype, shape and bytes (element lists for strings)."""
    assert isinstance(b, np.ndarray), b
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype == object:
        assert a.tolist() == b.tolist()
    else:
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


@pytest.fixture
def store(session_root):
    """Two runs: every dtype, a loop, a nan; then a failed run."""
    with DumpWriter(session_root, frame_bytes=8192) as w:
        run = w.begin_run(metadata={"fetches": "[<tf.Tensor 'y:0'>]", "feed_keys": "None",
                                    "global_step": 5}, capture=False)
        for name, arr in CASES.items():
            w.write(arr, "case/" + name, run=run)
        for i in range(4):
            w.write(np.array(i, dtype=np.int32), "while/body/add", run=run)
        w.write(np.array([1.0, np.nan], dtype=np.float32), "bad/nan", run=run)
        w.write(CASES["f32"], "case/f32_again", run=run)  # deduplicated payload
        w.end_run(run, metadata={"core_metadata": {"global_step": 5, "session_run_index": 0,
                                                   "executor_step_index": 0, "input_names": [],
                                                   "output_names": ["y:0"], "target_nodes": []}},
                  attachments=[b"fake graph bytes"])
        failed = w.begin_run(capture=False)
        w.write(np.array([np.inf], dtype=np.float16), "loss", run=failed)
        w.end_run(failed, status="failed", error="InvalidArgumentError: boom")
    return session_root


def test_runs_and_metadata(store):
    reader = DumpReader(store)
    assert len(reader.runs) == 2
    ok, failed = reader.runs
    assert ok.status == "complete" and failed.status == "failed"
    assert failed.error == "InvalidArgumentError: boom"
    assert ok.name.startswith("run_") and ok.name != failed.name
    assert ok.global_step == 5
    assert ok.fetches == "[<tf.Tensor 'y:0'>]" and ok.feed_keys == "None"
    assert ok.core_metadata["output_names"] == ["y:0"]
    assert len(ok) == len(CASES) + 6 and ok.expected_tensors == len(ok)
    assert ok.missing_tensors == 0 and ok.dropped_tensors == 0
    assert ok.graphs == [b"fake graph bytes"]
    assert reader.run(ok.name) is ok and reader.run(-1) is failed and reader.run(ok.key) is ok
    assert reader.torn_tails == {} and reader.problems == []


def test_values_bit_identical_for_every_dtype(store):
    run = DumpReader(store).runs[0]
    for name, arr in CASES.items():
        (rec,) = run.select("case/" + name)
        same(arr, rec.value)
        assert rec.shape == arr.shape
        assert rec.key == WatchKey(DEVICE, "case/" + name, 0, "DebugIdentity")
    assert run.select("case/bf16")[0].dtype_name == "bfloat16"
    assert run.select("case/strings")[0].dtype_name == "string"


def test_values_in_bulk_match_one_by_one(store):
    run = DumpReader(store).runs[0]
    bulk = run.values()
    assert len(bulk) == len(run)
    for i, v in enumerate(bulk):
        same(run.value(i), v)
    # numeric values are read-only views: the store's data cannot be changed through them
    with pytest.raises(ValueError):
        run.select("case/f32")[0].value[0, 0, 0] = 1


def test_watch_keys_in_execution_order_with_timestamps(store):
    run = DumpReader(store).runs[0]
    names = [k.node for k in run.watch_keys]
    assert names[:len(CASES)] == ["case/" + n for n in CASES]
    assert names[len(CASES)] == "while/body/add"
    seqs = [r.seq for r in run.records]
    assert seqs == sorted(seqs) and [r.index for r in run.records] == list(range(len(run)))
    walls = run.wall_us
    assert (np.diff(walls) >= 0).all() and run.t0 == walls[0]


def test_all_executions_of_a_loop_key_in_order(store):
    run = DumpReader(store).runs[0]
    values = run.get("while/body/add")
    assert [int(v) for v in values] == [0, 1, 2, 3]
    assert [int(v) for v in run.get("while/body/add:0:DebugIdentity")] == [0, 1, 2, 3]
    with pytest.raises(errors.TfdumpNotFoundError, match="did you mean while/body/add"):
        run.get("while/body/ad")


def test_find_inf_nan_matches_the_plain_predicate(store):
    run = DumpReader(store).runs[0]
    fast = [r.watch_key for r in run.find(has_inf_or_nan)]
    slow = [r.watch_key for r in run.find(lambda rec, v: has_inf_or_nan(rec, v))]
    assert fast == slow == ["case/f32_special:0:DebugIdentity", "bad/nan:0:DebugIdentity"]
    assert [r.node_name for r in run.find(has_inf_or_nan, first_n=1)] == ["case/f32_special"]
    assert [r.node_name for r in run.find(has_inf_or_nan, exclude=["^case/"])] == ["bad/nan"]
    assert run.find(has_inf_or_nan, exclude="^(case|bad)/") == []
    # a float16 inf in the failed run, a bfloat16 inf found too
    assert [r.node_name for r in DumpReader(store).runs[1].find(has_inf_or_nan)] == ["loss"]


def test_find_with_custom_predicate_and_tfdbg_style_signature(store):
    run = DumpReader(store).runs[0]
    seen = []

    def big(datum, tensor):
        seen.append(datum.watch_key)
        return isinstance(tensor, np.ndarray) and tensor.size > 1000

    assert [r.node_name for r in run.find(big)] == ["case/big"]
    assert len(seen) == len(run)
    assert len(run.find(None)) == len(run) and len(run.find(None, first_n=3)) == 3
    with pytest.raises(errors.TfdumpUsageError, match="bad exclude pattern"):
        run.find(has_inf_or_nan, exclude="(")


def test_inf_nan_in_bfloat16_and_complex(session_root):
    with DumpWriter(session_root) as w:
        w.write(np.array([1, np.inf], dtype=ml_dtypes.bfloat16), "bf")
        w.write(np.array([1 + 1j, complex(np.nan, 0)], dtype=np.complex64), "cx")
        w.write(np.array([1, 2], dtype=np.int32), "ints")
        w.write(np.array([b"nan"], dtype=object), "s")
    run = DumpReader(session_root).runs[0]
    assert [r.node_name for r in run.find(has_inf_or_nan)] == ["bf", "cx"]


def test_reader_never_imports_tensorflow(store):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {SRC!r})
        import tfdump_fast
        from tfdump_fast.reader import has_inf_or_nan
        r = tfdump_fast.DumpReader({store!r})
        r.runs[0].values(); r.runs[0].find(has_inf_or_nan)
        from tfdump_fast import convert
        assert "tensorflow" not in sys.modules, "reader imported tensorflow"
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_lru_cache_is_bounded(session_root):
    with DumpWriter(session_root, frame_bytes=64 << 10, shuffle=False, codec="raw") as w:
        for i in range(40):
            w.write(np.full(16 << 10, i, dtype=np.float32), "t%d" % i)
    reader = DumpReader(session_root, cache_bytes=200 << 10)
    run = reader.runs[0]
    data_frames = [f for f in reader.index.frames if len(f.table.tensors)]
    assert len(data_frames) >= 10
    for i in range(40):
        assert run.value(i)[0] == i
        assert reader.blocks.nbytes <= 200 << 10 or len(reader.blocks) == 1


def test_merges_writers_and_names_runs_per_writer(session_root):
    for k in range(2):
        with DumpWriter(session_root, allow_existing=True) as w:
            run = w.begin_run(capture=False, run_name="run_1700000000000000_0")
            w.write(np.array([k], dtype=np.int32), "x", run=run)
            w.end_run(run)
    reader = DumpReader(session_root)
    assert len(reader.runs) == 2 and len(reader.writers) == 2
    assert sorted(int(r.get("x")[0][0]) for r in reader.runs) == [0, 1]
    with pytest.raises(errors.TfdumpUsageError, match="used by 2 writers"):
        reader.run("run_1700000000000000_0")
    run = reader.runs[1]
    assert reader.run("w%016x/run_1700000000000000_0" % run.writer_id) is run
    assert {r.key for r in reader.runs} == {(r.writer_id, r.run_id) for r in reader.runs}


def test_reads_a_store_while_its_writer_runs(session_root):
    w = DumpWriter(session_root)
    run = w.begin_run(capture=False)
    w.write(np.arange(3, dtype=np.float32), "a", run=run)
    w.end_run(run)
    w.flush()
    reader = DumpReader(session_root)
    assert [r.status for r in reader.runs] == ["complete"]
    first = reader.runs[0]
    record = first.records[0]
    run2 = w.begin_run(capture=False)
    w.write(np.arange(4, dtype=np.float32), "b", run=run2)
    w.flush()  # tensors on disk, run not ended: seen as truncated so far
    reader.refresh()
    assert [r.status for r in reader.runs] == ["complete", "truncated"]
    same(np.arange(4, dtype=np.float32), reader.runs[1].get("b")[0])
    w.end_run(run2)
    w.close()
    reader.refresh()
    assert [r.status for r in reader.runs] == ["complete", "complete"]
    # objects handed out before a refresh keep reading the right tensors
    same(np.arange(3, dtype=np.float32), record.value)
    same(np.arange(3, dtype=np.float32), first.get("a")[0])


def test_killed_writer_leaves_truncated_run(session_root):
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {SRC!r})
        import numpy as np
        from tfdump_fast import DumpWriter
        w = DumpWriter({session_root!r})
        done = w.begin_run(capture=False)
        w.write(np.ones(3, np.float32), "a", run=done)
        w.end_run(done)
        run = w.begin_run(capture=False)
        for i in range(50):
            w.write(np.full(100, i, np.float32), "loop", run=run)
        w.flush()
        os._exit(0)  # killed: no run_end, no writer_close
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    reader = DumpReader(session_root)
    assert [r.status for r in reader.runs] == ["complete", "truncated"]
    assert [float(v[0]) for v in reader.runs[1].get("loop")] == list(range(50))
    assert reader.runs[1].expected_tensors is None


def test_inconvertible_values_from_a_tfdbg_import():
    """Resource, variant (TensorList) and uninitialized tensors: golden store
    imported from a real tfdbg dump."""
    reader = DumpReader(os.path.join(GOLDEN, "tfdbg_import"))
    init, main = reader.runs
    (rv,) = init.select("rv")
    assert isinstance(rv.value, InconvertibleTensor) and not rv.value.initialized
    assert rv.value.kind == "uninitialized" and rv.value.shape == (1,)
    (v,) = init.select("v")
    assert v.value.kind == "resource" and v.value.value[0]["name"] == "v"
    assert v.value.value[0]["device"] == DEVICE
    (tl,) = main.select("tl")
    elements = tl.value.value
    assert tl.value.kind == "variant" and len(elements) == 1
    assert isinstance(elements[0], VariantElement) and elements[0].type_name == "tensorflow::TensorList"
    same(np.array([1.5, -2.0], np.float32), elements[0].tensors[0])
    same(np.array([3.0, 4.0], np.float32), elements[0].tensors[1])
    (tls,) = main.select("tls")
    assert [t.tolist() for t in tls.value.value[0].tensors] == [b"ab", b"", b"c\x00d"]
    assert "variant tensor" in repr(tl.value) and "TensorList" in repr(tl.value)
    # predicates see a non-numeric dtype, as tfdbg's InconvertibleTensorProto
    assert not has_inf_or_nan(None, tl.value)


# ---------------------------------------------------------------- golden files

def digest(value):
    h = hashlib.sha256()
    if value.dtype == object:
        for item in value.reshape(-1).tolist():
            h.update(len(item).to_bytes(8, "little"))
            h.update(item)
    else:
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def expected():
    with open(os.path.join(GOLDEN, "expected.json")) as f:
        return json.load(f)


def test_golden_writer_store(expected):
    reader = DumpReader(os.path.join(GOLDEN, "writer"))
    assert [r.name for r in reader.runs] == [r["name"] for r in expected["writer"]["runs"]]
    for run, exp in zip(reader.runs, expected["writer"]["runs"]):
        assert run.status == exp["status"]
        assert run.error == exp.get("error")
        if "global_step" in exp:
            assert run.global_step == exp["global_step"]
        if "graphs" in exp:
            assert [hashlib.sha256(g).hexdigest() for g in run.graphs] == exp["graphs"]
        assert len(run) == len(exp["tensors"])
        for rec, value, t in zip(run.records, run.values(), exp["tensors"]):
            assert rec.watch_key == t["watch_key"] and rec.device == t["device"]
            assert rec.wall_us == t["wall_us"] and list(rec.shape) == t["shape"]
            assert (value.dtype.name if value.dtype != object else "string") == t["dtype"]
            assert digest(value) == t["digest"], rec


def test_golden_tfdbg_import(expected):
    reader = DumpReader(os.path.join(GOLDEN, "tfdbg_import"))
    assert [r.name for r in reader.runs] == [r["name"] for r in expected["tfdbg"]["runs"]]
    for run, exp in zip(reader.runs, expected["tfdbg"]["runs"]):
        assert len(run) == exp["size"]
        got = {(r.watch_key, r.wall_us, r.device): v for r, v in zip(run.records, run.values())}
        for t in exp["tensors"]:
            value = got[(t["watch_key"], t["timestamp"], t["device"])]
            if t.get("inconvertible"):
                assert isinstance(value, InconvertibleTensor)
                assert value.initialized == t["initialized"] and value.tf_dtype == t["dtype"]
            else:
                assert (value.dtype.name if value.dtype != object else "string") == t["dtype"]
                assert list(value.shape) == t["shape"] and digest(value) == t["digest"]


def test_golden_hook_store_values():
    """Every value of a bridge-written store decodes, TensorList list blobs included."""
    reader = DumpReader(os.path.join(GOLDEN, "hook"))
    (run,) = reader.runs
    assert run.status == "complete" and run.graphs and run.core_metadata
    values = run.values()
    lists = [v for v in values if isinstance(v, InconvertibleTensor) and v.kind == "variant"]
    assert lists
    for v in lists:
        for element in v.value:
            assert element.type_name == "tensorflow::TensorList"
            assert all(isinstance(t, np.ndarray) and t.dtype == np.float32 for t in element.tensors)
    assert max(len(v.value[0].tensors) for v in lists) == 4  # the loop ran 4 times


def test_variant_payload_layouts_parse_and_reject_damage():
    """store.payloads against docs/FORMAT.md's variant structure and list blob."""
    import struct

    from tfdump_fast import _native
    from tfdump_fast.store.payloads import parse_list_blob, parse_variant_structure

    def desc(dtype, flags, dims):
        return struct.pack("<iHB", dtype, flags, len(dims)) + struct.pack("<%dq" % len(dims), *dims)

    inline = b"\x01\x02\x03"
    structure = (struct.pack("<Q", 2)
                 + struct.pack("<I", 10) + b"tensorflow" + struct.pack("<I", 1) + b"m"
                 + struct.pack("<I", 3)
                 + desc(1, 0, [2, 3]) + b"\x00" + struct.pack("<I", 1)
                 + desc(7, _native.FLAG_STRING, []) + b"\x01" + struct.pack("<Q", len(inline)) + inline
                 + desc(1, _native.FLAG_UNINITIALIZED, [4]) + b"\x02"
                 + struct.pack("<I", 0) + struct.pack("<I", 0) + struct.pack("<II", _native.TENSOR_LIST_MARKER, 0))
    first, second = parse_variant_structure(structure, 2)
    assert (first.type_name, first.metadata, first.list_blob) == (b"tensorflow", b"m", None)
    blob, text, empty = first.tensors
    assert (blob.dtype, blob.shape, blob.storage, blob.data) == (1, (2, 3), _native.STORAGE_BLOB, 1)
    assert (text.flags, text.storage, text.data) == (_native.FLAG_STRING, _native.STORAGE_INLINE, inline)
    assert (empty.storage, empty.data, empty.descriptor) == (_native.STORAGE_NONE, None, desc(1, 1, [4]))
    assert (second.type_name, second.tensors, second.list_blob) == (b"", None, 0)
    with pytest.raises(errors.TfdumpCorruptionError, match="refers to blob 1 of 1"):
        parse_variant_structure(structure, 1)
    with pytest.raises(errors.TfdumpCorruptionError, match="variant structure ends early"):
        parse_variant_structure(structure[:-3], 2)
    with pytest.raises(errors.TfdumpCorruptionError, match="variant structure has 1 trailing bytes"):
        parse_variant_structure(structure + b"\0", 2)

    h = bytes(range(16))
    list_blob = (struct.pack("<I", 2) + desc(2, 0, [5]) + b"\x00" + h + struct.pack("<Q", 40)
                 + desc(2, _native.FLAG_UNINITIALIZED, []) + b"\x02")
    stored, missing = parse_list_blob(list_blob)
    assert (stored.shape, stored.storage, stored.data) == ((5,), _native.STORAGE_BLOB, h)
    assert (missing.storage, missing.data) == (_native.STORAGE_NONE, None)
    with pytest.raises(errors.TfdumpCorruptionError, match="TensorList list blob ends early"):
        parse_list_blob(list_blob[:20])
    with pytest.raises(errors.TfdumpCorruptionError, match="unknown list blob tensor storage 1"):
        parse_list_blob(struct.pack("<I", 1) + desc(2, 0, []) + b"\x01")
