"""The TensorFlow bridge: build, load, version checks, and capture through
real tf.compat.v1 Sessions into a real DumpWriter, read back with DumpReader
and checked against the Session's own outputs and against tfdbg's file://
dumps of the same graph."""

import collections
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import tfdump_fast  # noqa: E402
from tfdump_fast import DumpReader, DumpWriter, errors  # noqa: E402
from tfdump_fast.bridge import build_bridge, get_bridge, load_bridge_library  # noqa: E402

from tensorflow.core.framework import tensor_pb2  # noqa: E402
from tensorflow.core.util import event_pb2  # noqa: E402
from tensorflow.python.debug.lib import debug_data, debug_utils  # noqa: E402

tf1 = tf.compat.v1
from conftest import PKG_PARENT  # noqa: E402  (the package under test)


@pytest.fixture(scope="module")
def bridge():
    return get_bridge()


def _subprocess_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PKG_PARENT, env.get("PYTHONPATH")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(extra)
    return env


def _watch(urls, graph):
    options = tf1.RunOptions()
    debug_utils.watch_graph(options, graph, debug_urls=list(urls))
    return options


def _captured_run(writer, sess, fetches, feed_dict=None, extra_urls=()):
    """One Session.run captured into its own writer run; returns (outputs, run)."""
    run = writer.begin_run()
    try:
        out = sess.run(fetches, feed_dict=feed_dict, options=_watch(run.debug_urls + list(extra_urls),
                                                                    sess.graph))
    except BaseException as e:
        writer.end_run(run, status="failed", error=str(e))
        raise
    writer.end_run(run)
    return out, run


def _only_run(root):
    runs = DumpReader(root).runs
    assert len(runs) == 1
    return runs[0]


def _by_node(run):
    out = collections.defaultdict(list)
    for rec in run.records:
        out[rec.node_name].append(rec)
    return out


def _same_bits(value, expected):
    expected = np.asarray(expected)
    value = np.asarray(value)
    return value.shape == expected.shape and value.tobytes() == expected.tobytes()


# ------------------------------------------------------------------ build and load


def test_bridge_builds_loads_and_reports_its_tf_version(bridge):
    assert bridge.tf_version == tf.__version__
    assert bridge.max_slots >= 8
    assert os.path.isfile(bridge.path)
    assert get_bridge() is bridge  # cached per process
    assert set(bridge.stats()) == {"tensors_forwarded", "tensors_orphaned", "tensors_failed",
                                   "summaries_submitted", "summaries_skipped", "summaries_muted"}


def test_cli_help_and_print_path(bridge):
    env = _subprocess_env()
    env.pop("TFDUMP_FAST_BRIDGE_LIB", None)
    helped = subprocess.run([sys.executable, "-m", "tfdump_fast.bridge", "--help"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--rebuild" in helped.stdout and "--print-path" in helped.stdout
    printed = subprocess.run([sys.executable, "-m", "tfdump_fast.bridge", "--print-path"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert printed.returncode == 0, printed.stderr
    if not os.environ.get("TFDUMP_FAST_BRIDGE_LIB"):
        assert printed.stdout.strip() == bridge.path
        assert "compiling" not in printed.stderr  # cached: no second build


def test_concurrent_processes_build_the_cache_once(tmp_path):
    env = _subprocess_env(TFDUMP_FAST_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("TFDUMP_FAST_BRIDGE_LIB", None)
    script = "from tfdump_fast.bridge import get_bridge; print(get_bridge().path)"
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    assert all(rc == 0 for _out, _err, rc in results), results
    paths = {out.strip() for out, _err, _rc in results}
    assert len(paths) == 1 and os.path.isfile(paths.pop())
    notices = sum(err.count("tfdump-fast: compiling the TensorFlow bridge") for _out, err, _rc in results)
    assert notices == 1  # the second process waited on the lock and loaded the first one's build
    leftovers = [p.name for p in (tmp_path / "cache").rglob("*") if p.name.startswith(".tmp-")]
    assert not leftovers


def test_library_built_for_another_tf_version_is_refused_naming_both(tmp_path, bridge):
    fake = build_bridge(tmp_path / "libfake.so", extra_flags=['-DTFDUMP_FAKE_TF_VERSION="0.0.1-fake"'],
                        quiet=True)
    script = textwrap.dedent(f"""
        import os
        from tfdump_fast.bridge import get_bridge, load_bridge_library
        try:
            get_bridge()
        except ImportError as e:
            print("ENV:", type(e).__name__, e)
        else:
            print("ENV: loaded")
        del os.environ["TFDUMP_FAST_BRIDGE_LIB"]
        try:
            load_bridge_library({str(fake)!r})
        except ImportError as e:
            print("DIRECT:", type(e).__name__, e)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=_subprocess_env(TFDUMP_FAST_BRIDGE_LIB=str(fake)))
    assert proc.returncode == 0, proc.stderr
    env_line = [ln for ln in proc.stdout.splitlines() if ln.startswith("ENV:")][0]
    assert "TfdumpBridgeError" in env_line
    assert "0.0.1-fake" in env_line and tf.__version__ in env_line
    assert "unset TFDUMP_FAST_BRIDGE_LIB" in env_line
    direct = [ln for ln in proc.stdout.splitlines() if ln.startswith("DIRECT:")][0]
    assert "0.0.1-fake" in direct and "python -m tfdump_fast.bridge --rebuild" in direct


def test_unloadable_library_is_a_bridge_error_with_the_fix(tmp_path, bridge):
    src = tmp_path / "bad.c"
    src.write_text("extern void tfdump_no_such_symbol(void);\n"
                   "void *tfdump_bridge_get_api(void) { tfdump_no_such_symbol(); return 0; }\n")
    lib = tmp_path / "libbad.so"
    cc = subprocess.run(["gcc", "-shared", "-fPIC", str(src), "-o", str(lib)], capture_output=True)
    if cc.returncode != 0:
        pytest.skip("no C compiler to build the broken library")
    with pytest.raises(errors.TfdumpBridgeError) as info:
        load_bridge_library(lib)
    msg = str(info.value)
    assert isinstance(info.value, ImportError)
    assert "tfdump_no_such_symbol" in msg and tf.__version__ in msg
    assert "python -m tfdump_fast.bridge --rebuild" in msg
    not_a_lib = tmp_path / "notalib.so"
    not_a_lib.write_text("hello")
    with pytest.raises(errors.TfdumpBridgeError, match="cannot be loaded"):
        load_bridge_library(not_a_lib)


def test_the_bridge_source_list_names_every_file_the_bridge_needs():
    # csrc/bridge/SOURCES is what setup.py ships and bridge.py compiles and
    # hashes: a file missing from it breaks installed builds (or leaves stale
    # caches), so every bridge file and every local header it includes is listed.
    import re
    from pathlib import Path

    csrc = Path(__file__).resolve().parents[1] / "csrc"
    lines = (csrc / "bridge" / "SOURCES").read_text().splitlines()
    listed = {ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}
    assert all((csrc / name).is_file() for name in listed), listed
    assert {f"bridge/{p.name}" for p in (csrc / "bridge").iterdir() if p.name != "SOURCES"} <= listed
    for name in listed:
        for inc in re.findall(r'^#include "([^"]+)"', (csrc / name).read_text(), re.M):
            assert inc.startswith("tensorflow/") or inc in listed, (name, inc)


def test_compile_errors_and_a_missing_compiler_are_reported(tmp_path, monkeypatch):
    with pytest.raises(errors.TfdumpBridgeError) as info:
        build_bridge(tmp_path / "x.so", extra_flags=["-include", "/nonexistent/tfdump_missing.h"], quiet=True)
    msg = str(info.value)
    assert "command:" in msg and "tfdump_missing.h" in msg
    assert not list(tmp_path.glob("*.so"))  # no partial library left behind
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(errors.TfdumpBridgeError, match="C\\+\\+ compiler"):
        build_bridge(tmp_path / "y.so", quiet=True)


# ------------------------------------------------------------------ values

ml_dtypes = pytest.importorskip("ml_dtypes")


def _dtype_graph():
    """Constants of every dtype the bridge handles; returns (graph, {name: tensor}, init ops)."""
    rng = np.random.default_rng(7)
    g = tf.Graph()
    t = {}
    with g.as_default():
        floats = rng.standard_normal(12).astype(np.float32)
        floats[:4] = [np.nan, np.inf, -np.inf, -0.0]
        t["f32"] = tf.constant(floats.reshape(3, 4), name="f32")
        t["f64"] = tf.constant(rng.standard_normal((2, 5)), name="f64")
        t["f16"] = tf.constant(np.array([1.5, -2.25, 65504, np.nan], np.float16), name="f16")
        t["bf16"] = tf.constant(np.array([1.0, 3.140625, -7.5], ml_dtypes.bfloat16), name="bf16")
        for bits in (8, 16, 32, 64):
            for kind in ("int", "uint"):
                npd = np.dtype(f"{kind}{bits}")
                info = np.iinfo(npd)
                t[f"{kind}{bits}"] = tf.constant(np.array([info.min, 1, info.max], npd), name=f"{kind}{bits}")
        t["bool"] = tf.constant([True, False, True], name="bool")
        t["c64"] = tf.constant(np.array([1 + 2j, -3.5 - 0.25j], np.complex64), name="c64")
        t["c128"] = tf.constant(np.array([1e300 + 1j, -0.0j]), name="c128")
        t["qint8"] = tf.constant(np.array([-128, 3, 127], np.int8), dtype=tf.qint8, name="qint8")
        t["quint8"] = tf.constant(np.array([0, 3, 255], np.uint8), dtype=tf.quint8, name="quint8")
        t["qint32"] = tf.constant(np.array([-2**31, 3], np.int32), dtype=tf.qint32, name="qint32")
        t["scalar"] = tf.constant(np.float64(2.5), name="scalar")
        t["empty"] = tf.constant(np.zeros((0, 3), np.float32), name="empty")
        t["empty_str"] = tf.constant([], dtype=tf.string, shape=[0], name="empty_str")
        t["large"] = tf.constant(rng.standard_normal((256, 300)).astype(np.float32), name="large")
        t["strings"] = tf.constant([b"hello", b"", b"\x00\xff\x80binary"], name="strings")
        t["scalar_str"] = tf.constant(b"just one", name="scalar_str")
        t["many_strings"] = tf.constant([b"s%d" % i * (i % 7) for i in range(300)], name="many_strings")
        t["big_string"] = tf.constant([bytes(range(256)) * 400], name="big_string")
        t["rv"] = tf1.Variable(2.0, name="rv", use_resource=True)
        t["uninit"] = tf1.Variable(np.ones((2, 2), np.float32), name="uninit", use_resource=False)
        t["tl"] = tf.raw_ops.TensorListFromTensor(tensor=t["f32"], element_shape=tf.constant([4]), name="tl")
        t["tl_str"] = tf.raw_ops.TensorListFromTensor(tensor=t["strings"], element_shape=tf.constant([], tf.int32),
                                                      name="tl_str")
        t["tl_reserved"] = tf.raw_ops.TensorListReserve(element_shape=tf.constant([2], tf.int32),
                                                        num_elements=3, element_dtype=tf.float32,
                                                        name="tl_reserved")
        t["tl_set"] = tf.raw_ops.TensorListSetItem(input_handle=t["tl_reserved"], index=1,
                                                   item=tf.constant([5.0, 6.0]), name="tl_set")
        t["variant_vec"] = tf.stack([t["tl"], t["tl_str"]], name="variant_vec")
        t["tl_nested"] = tf.raw_ops.TensorListFromTensor(tensor=t["variant_vec"], element_shape=tf.constant([], tf.int32),
                                                         name="tl_nested")
    return g, t


VARIANT_NODES = ("tl", "tl_str", "tl_reserved", "tl_set", "variant_vec", "tl_nested")


@pytest.mark.parametrize("zero_copy_threshold", [0, 64 << 10], ids=["all-zero-copy", "default"])
def test_every_dtype_round_trips_bit_exact(tmp_path, bridge, zero_copy_threshold):
    g, t = _dtype_graph()
    plain = {k: v for k, v in t.items() if k not in VARIANT_NODES + ("rv", "uninit")}
    root = str(tmp_path / "dump")
    before = bridge.stats()
    with tf1.Session(graph=g) as sess, DumpWriter(root, zero_copy_threshold=zero_copy_threshold) as w:
        sess.run(t["rv"].initializer)
        targets = [t[k].op for k in VARIANT_NODES] + [t["rv"].handle.op, t["uninit"].op]
        (out, _), _run = _captured_run(w, sess, (plain, targets))
    after = bridge.stats()
    run = _only_run(root)
    recs = _by_node(run)
    assert after["tensors_failed"] == before["tensors_failed"]
    assert after["tensors_forwarded"] - before["tensors_forwarded"] >= len(run)

    for name, expected in out.items():
        (rec,) = recs[name]
        assert rec.dtype == t[name].dtype.as_datatype_enum, name
        if t[name].dtype == tf.string:
            got = np.asarray(rec.value, dtype=object)
            assert got.shape == np.shape(expected), name
            assert [bytes(x) for x in got.ravel()] == [bytes(x) for x in np.asarray(expected).ravel()], name
        else:
            assert _same_bits(rec.value, expected), name

    (rv,) = recs["rv"]
    assert rv.value.kind == "resource" and rv.value.value[0]["name"] == "rv"
    (uninit,) = recs["uninit"]
    assert uninit.value.kind == "uninitialized" and uninit.shape == (2, 2)
    assert uninit.dtype == tf.float32.as_datatype_enum and uninit.nbytes == 0

    (tl,) = recs["tl"]
    (el,) = tl.value.value
    assert el.type_name == "tensorflow::TensorList"
    assert len(el.tensors) == 3
    assert all(_same_bits(x, row) for x, row in zip(el.tensors, out["f32"]))
    (tl_str,) = recs["tl_str"]
    assert [bytes(np.asarray(x).item()) for x in tl_str.value.value[0].tensors] == list(out["strings"])
    (tl_set,) = recs["tl_set"]
    assert [np.asarray(x).tolist() for x in tl_set.value.value[0].tensors] == [[5.0, 6.0]]
    (vec,) = recs["variant_vec"]
    assert [e.type_name for e in vec.value.value] == ["tensorflow::TensorList"] * 2
    (nested,) = recs["tl_nested"]
    inner = nested.value.value[0].tensors
    assert len(inner) == 2 and all(x.kind == "variant" for x in inner)
    assert all(_same_bits(x, row) for x, row in zip(inner[0].value[0].tensors, out["f32"]))


# --------------------------------------------------------- tfdbg's file:// dumps as oracle


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _string_list_content(items):
    """What Tensor::AsProtoTensorContent writes for a list of strings."""
    items = [bytes(x) for x in items]
    return b"".join(_varint(len(x)) for x in items) + b"".join(items)


_PROTO_FIELDS = {np.dtype(np.float32): "float_val", np.dtype(np.float64): "double_val",
                 np.dtype(np.int32): "int_val", np.dtype(np.int64): "int64_val", np.dtype(np.bool_): "bool_val"}


def _tensor_proto(value, as_field=False):
    """Rebuild from a reader value the TensorProto that TF makes of the tensor:
    Tensor::AsProtoTensorContent (tfdbg's dumps), or Tensor::AsProtoField
    (``as_field``: how VariantTensorData stores a variant's inner tensors)."""
    from tfdump_fast.reader import InconvertibleTensor

    p = tensor_pb2.TensorProto()
    p.tensor_shape.SetInParent()
    content = b""
    if isinstance(value, InconvertibleTensor):
        p.dtype = value.tf_dtype
        shape = value.shape
        if value.kind == "variant":
            if as_field:
                for e in value.value:
                    p.variant_val.add().ParseFromString(_variant_element_bytes(e))
            else:
                content = _string_list_content(_variant_element_bytes(e) for e in value.value)
        elif value.kind == "resource":
            if as_field:
                for h in value.raw:
                    p.resource_handle_val.add().ParseFromString(h)
            else:
                content = _string_list_content(value.raw)
    else:
        arr = np.asarray(value)
        shape = arr.shape
        if arr.dtype == object:
            p.dtype = tf.string.as_datatype_enum
            if as_field:
                p.string_val.extend(bytes(x) for x in arr.ravel())
            else:
                content = _string_list_content(arr.ravel())
        else:
            p.dtype = tf.as_dtype(arr.dtype).as_datatype_enum
            if as_field:
                getattr(p, _PROTO_FIELDS[arr.dtype]).extend(arr.ravel().tolist())
            else:
                content = arr.tobytes()
    for d in shape:
        p.tensor_shape.dim.add(size=d)
    if content:
        p.tensor_content = content
    return p


def _variant_element_bytes(element):
    proto = tensor_pb2.VariantTensorDataProto(type_name=element.type_name, metadata=element.metadata)
    for sub in element.tensors:
        proto.tensors.add().CopyFrom(_tensor_proto(sub, as_field=True))
    return proto.SerializeToString()


def _tfdbg_proto(datum):
    event = event_pb2.Event()
    with open(datum.file_path, "rb") as f:
        event.ParseFromString(f.read())
    return event.summary.value[0].tensor


def _comparable(rec_value, tfdbg_proto):
    """Both sides as bytes of the same canonical form."""
    from tfdump_fast.reader import InconvertibleTensor

    if tfdbg_proto.dtype == tf.string.as_datatype_enum:  # tfdbg uses string_val for strings
        shape = tuple(d.size for d in tfdbg_proto.tensor_shape.dim)
        return (shape, tuple(np.asarray(rec_value, dtype=object).ravel().tolist())), \
               (shape, tuple(tfdbg_proto.string_val))
    if isinstance(rec_value, InconvertibleTensor) and rec_value.kind == "uninitialized":
        ours = tensor_pb2.TensorProto(dtype=rec_value.tf_dtype)
        ours.tensor_shape.SetInParent()
        for d in rec_value.shape:
            ours.tensor_shape.dim.add(size=d)
        return ours.SerializeToString(), tfdbg_proto.SerializeToString()
    return _tensor_proto(rec_value).SerializeToString(), tfdbg_proto.SerializeToString()


def _loop_graph(iterations=200, parallel_iterations=10):
    g = tf.Graph()
    with g.as_default():
        x = tf1.get_variable("x", initializer=np.linspace(-1, 1, 64).astype(np.float32).reshape(8, 8),
                             use_resource=True)
        w = tf1.get_variable("w", initializer=(np.eye(8) * 0.5 + 0.01).astype(np.float32), use_resource=True)

        def body(i, h):
            return i + 1, tf.tanh(tf.matmul(h, w))

        _, h_final = tf.while_loop(lambda i, h: i < iterations, body, [tf.constant(0), x],
                                   parallel_iterations=parallel_iterations)
        loss = tf.reduce_sum(h_final * h_final, name="loss")
        grads = tf.gradients(loss, [x, w], name="grads")
    return g, loss, grads


def test_while_loop_with_gradient_matches_tfdbg_file_dump(tmp_path, bridge):
    g, loss, grads = _loop_graph()
    root = str(tmp_path / "dump")
    dump_dir = str(tmp_path / "tfdbg")
    with tf1.Session(graph=g) as sess:
        sess.run(tf1.global_variables_initializer())
        with DumpWriter(root) as w:
            ours_out, _run = _captured_run(w, sess, [loss, grads])
        # The oracle: tfdbg's own file:// dump of a second, identical run (the
        # graph has no side effects, so every tensor has the same value).
        theirs_out = sess.run([loss, grads], options=_watch(["file://" + dump_dir], g))
    assert np.asarray(ours_out[0]).tobytes() == np.asarray(theirs_out[0]).tobytes()

    run = _only_run(root)
    dump = debug_data.DebugDumpDir(dump_dir)
    ours = collections.defaultdict(list)
    for rec in run.records:
        ours[(rec.node_name, rec.output_slot, rec.debug_op)].append(rec)
    theirs = collections.defaultdict(list)
    for datum in dump.dumped_tensor_data:
        theirs[(datum.node_name, datum.output_slot, datum.debug_op)].append(datum)

    assert set(ours) == set(theirs)
    assert {k: len(v) for k, v in ours.items()} == {k: len(v) for k, v in theirs.items()}
    n_variant = 0
    for key, recs in ours.items():
        # Iterations of one node may run concurrently (parallel_iterations):
        # compare the multiset of values, not their order.
        pairs = [_comparable(r.value, _tfdbg_proto(d)) for r, d in zip(recs, theirs[key])]
        assert sorted(p[0] for p in pairs) == sorted(p[1] for p in pairs), key
        n_variant += sum(r.dtype == tf.variant.as_datatype_enum for r in recs)
    assert n_variant > 200  # the gradient's TensorList accumulators, once per iteration


def _list_mutation_graph():
    """TensorList states changed in place by TF's list kernels when nothing
    else holds the list: pushes, a set-item inside the list, a pop, a push
    after the pop, and a reserved list (invalid elements) filled by set-item."""
    g = tf.Graph()
    with g.as_default():
        f32 = tf.float32
        # Fed, so that grappler cannot fold the list ops into constants.
        x = tf1.placeholder(f32, [6, 2], name="x")
        vals = [tf.identity(x[i], name=f"v{i}") for i in range(6)]
        shape = tf.constant([2], tf.int32)
        lst = tf.raw_ops.EmptyTensorList(element_shape=shape, max_num_elements=-1, element_dtype=f32, name="l0")
        for i in range(3):
            lst = tf.raw_ops.TensorListPushBack(input_handle=lst, tensor=vals[i], name=f"push{i}")
        lst = tf.raw_ops.TensorListSetItem(input_handle=lst, index=0, item=vals[3], name="set0")
        lst, popped = tf.raw_ops.TensorListPopBack(input_handle=lst, element_shape=shape, element_dtype=f32,
                                                   name="pop")
        lst = tf.raw_ops.TensorListPushBack(input_handle=lst, tensor=vals[4], name="push_after_pop")
        lst = tf.raw_ops.TensorListSetItem(input_handle=lst, index=1, item=vals[5], name="set1")
        stacked = tf.raw_ops.TensorListStack(input_handle=lst, element_dtype=f32, element_shape=shape,
                                             name="stacked")
        res = tf.raw_ops.TensorListReserve(element_shape=shape, num_elements=2, element_dtype=f32, name="res")
        res = tf.raw_ops.TensorListSetItem(input_handle=res, index=1, item=vals[0], name="res_set1")
        res = tf.raw_ops.TensorListSetItem(input_handle=res, index=0, item=vals[1], name="res_set0")
        res_stacked = tf.raw_ops.TensorListStack(input_handle=res, element_dtype=f32, element_shape=shape,
                                                 name="res_stacked")
    return g, x, [stacked, popped, res_stacked]


def test_lists_changed_in_place_are_recorded_as_they_were_when_dumped(tmp_path, bridge):
    """The bridge keeps shadows of list containers rather than the lists
    (holding them would force TF to copy every list it changes). Every dumped
    state must still be the one the debug op saw: same values as tfdbg's
    file:// dump, which serializes each list on the spot."""
    g, x, fetches = _list_mutation_graph()
    feed = {x: np.arange(12, dtype=np.float32).reshape(6, 2)}
    root = str(tmp_path / "dump")
    runs = 8  # in-place or copying depends on thread timing: several runs
    with tf1.Session(graph=g) as sess:
        with DumpWriter(root) as w:
            for _ in range(runs):
                _captured_run(w, sess, fetches, feed_dict=feed)
        for i in range(runs):
            sess.run(fetches, feed_dict=feed, options=_watch([f"file://{tmp_path}/tfdbg{i}"], g))
    ours_runs = DumpReader(root).runs
    assert len(ours_runs) == runs
    n_lists = 0
    for i, run in enumerate(ours_runs):
        dump = debug_data.DebugDumpDir(str(tmp_path / f"tfdbg{i}"))
        theirs = {(d.node_name, d.output_slot): d for d in dump.dumped_tensor_data}
        ours = {(r.node_name, r.output_slot): r for r in run.records}
        assert set(ours) == set(theirs)
        for key, rec in ours.items():
            a, b = _comparable(rec.value, _tfdbg_proto(theirs[key]))
            assert a == b, key
            n_lists += rec.dtype == tf.variant.as_datatype_enum
    assert n_lists >= runs * 9  # l0, 3 pushes, 2 set-items, pop, push, and the reserved lists


# ------------------------------------------------------------------ threads and slots


def test_concurrent_session_runs_land_in_their_own_runs(tmp_path, bridge):
    g = tf.Graph()
    with g.as_default():
        p = tf1.placeholder(tf.float32, shape=[4], name="p")
        y = tf.add(p * 2.0, 1.0, name="y")
        z = tf.reduce_sum(y, name="z")
    root = str(tmp_path / "dump")
    n_threads, n_steps = 4, 5
    errors_seen = []
    with tf1.Session(graph=g) as sess, DumpWriter(root) as w:
        def worker(i):
            try:
                for _ in range(n_steps):
                    feed = np.full(4, float(i), np.float32)
                    run = w.begin_run(metadata={"thread": i})
                    sess.run(z, feed_dict={p: feed}, options=_watch(run.debug_urls, g))
                    w.end_run(run)
            except BaseException as e:  # pragma: no cover - reported below
                errors_seen.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert not errors_seen
    runs = DumpReader(root).runs
    assert len(runs) == n_threads * n_steps
    for run in runs:
        i = run.metadata["thread"]
        recs = _by_node(run)
        assert _same_bits(recs["y"][0].value, np.full(4, 2.0 * i + 1, np.float32))
        assert _same_bits(recs["z"][0].value, np.float32(4 * (2.0 * i + 1)))
        assert len(run) == len(runs[0])


def test_many_executor_threads_capture_every_tensor(tmp_path, bridge):
    chains = 48
    g = tf.Graph()
    with g.as_default():
        # Fed, so that Grappler cannot fold the chains into constants.
        base = tf1.placeholder(tf.float32, shape=[16], name="base")
        outs = []
        for c in range(chains):
            x = tf.add(base, float(c), name=f"c{c}")
            for s in range(4):
                x = tf.add(x, 1.0, name=f"c{c}_add{s}")
            outs.append(x)
        total = tf.add_n(outs, name="total")
        _, looped = tf.while_loop(lambda i, v: i < 50, lambda i, v: (i + 1, v * 1.0001),
                                  [tf.constant(0), total], parallel_iterations=16)
    config = tf1.ConfigProto(inter_op_parallelism_threads=8, intra_op_parallelism_threads=2)
    root = str(tmp_path / "dump")
    before = bridge.stats()
    with tf1.Session(graph=g, config=config) as sess, DumpWriter(root, workers=2) as w:
        for _ in range(3):
            _captured_run(w, sess, looped, feed_dict={base: np.zeros(16, np.float32)})
    after = bridge.stats()
    runs = DumpReader(root).runs
    assert len(runs) == 3
    assert after["tensors_forwarded"] - before["tensors_forwarded"] == sum(len(r) for r in runs)
    assert after["tensors_orphaned"] == before["tensors_orphaned"]
    assert after["tensors_failed"] == before["tensors_failed"]
    for run in runs:
        assert sorted(rec.seq for rec in run.records) == list(range(len(run)))
        assert run.expected_tensors == len(run) and run.dropped_tensors == 0
        recs = _by_node(run)
        for c in range(chains):
            assert _same_bits(recs[f"c{c}_add3"][0].value, np.full(16, c + 4, np.float32))
        assert len(run) == len(runs[0])


def test_key_ids_are_per_engine_across_writers_sharing_executors(tmp_path, bridge):
    g = tf.Graph()
    with g.as_default():
        base = tf1.placeholder(tf.int32, shape=[3], name="base")
        nodes = [tf.add(base, i, name=f"n{i}") for i in range(12)]
        total = tf.add_n(nodes, name="total")
    root_a, root_b = str(tmp_path / "a"), str(tmp_path / "b")
    with tf1.Session(graph=g) as sess, DumpWriter(root_a) as wa, DumpWriter(root_b) as wb:
        # Give writer B different key ids for the same watch keys.
        run = wb.begin_run(capture=False)
        for i in range(5):
            wb.write(np.zeros(1, np.float32), f"unrelated{i}", run=run)
        wb.end_run(run)
        for _ in range(2):
            for w in (wa, wb):
                # Both writers get slot 0, i.e. the same URL, so TF reuses one
                # cached executor and the very same DebugNodeKey objects.
                run = w.begin_run()
                sess.run(total, feed_dict={base: np.zeros(3, np.int32)}, options=_watch(run.debug_urls, g))
                w.end_run(run)
    for root in (root_a, root_b):
        captured = [run for run in DumpReader(root).runs if "total" in _by_node(run)]
        assert len(captured) == 2
        for run in captured:
            recs = _by_node(run)
            for i in range(12):
                assert _same_bits(recs[f"n{i}"][0].value, np.full(3, i, np.int32)), (root, i)


def test_tensors_arriving_after_release_are_orphaned_not_fatal(tmp_path, bridge):
    g = tf.Graph()
    with g.as_default():
        y = tf.add(tf.constant([1.0, 2.0], name="a"), 1.0, name="y")
    with tf1.Session(graph=g) as sess, DumpWriter(str(tmp_path / "dump")) as w:
        run = w.begin_run()
        stale = _watch(run.debug_urls, g)
        w.end_run(run)
        before = bridge.stats()
        assert np.allclose(sess.run(y, options=stale), [2.0, 3.0])  # must not abort or hang
        after = bridge.stats()
    assert after["tensors_orphaned"] - before["tensors_orphaned"] >= 1
    assert after["tensors_forwarded"] == before["tensors_forwarded"]


def test_slots_are_lowest_free_first_stable_and_bounded(tmp_path, bridge):
    with DumpWriter(str(tmp_path / "dump")) as w:
        runs = []
        with pytest.raises(errors.TfdumpError, match="busy"):
            for _ in range(bridge.max_slots + 1):
                runs.append(w.begin_run())
        assert 1 <= len(runs) <= bridge.max_slots
        urls = [r.debug_urls[0] for r in runs]
        assert len(set(urls)) == len(urls)
        assert all(u.startswith("memcbk://tfdump_slot_") for u in urls)
        freed = runs[len(runs) // 2]
        w.end_run(freed)
        again = w.begin_run()
        assert again.debug_urls == freed.debug_urls  # the lowest free slot, same URL
        for r in runs:
            if r is not freed:
                w.end_run(r)
        w.end_run(again)


def test_ending_a_run_while_its_callbacks_arrive_waits_for_them(tmp_path, bridge):
    # release_slot (inside end_run) must wait for callbacks that already saw
    # the run's binding, on every executor thread, and make later ones
    # orphans: no tensor fails, none is lost uncounted, the process survives.
    g = tf.Graph()
    with g.as_default():
        base = tf1.placeholder(tf.float32, shape=[1024], name="base")
        outs = [tf.add(base, float(c), name=f"c{c}") for c in range(8)]
        _, looped = tf.while_loop(lambda i, v: i < 400, lambda i, v: (i + 1, v * 1.0001),
                                  [tf.constant(0), tf.add_n(outs)], parallel_iterations=8)
    config = tf1.ConfigProto(inter_op_parallelism_threads=4, intra_op_parallelism_threads=1)
    feed = {base: np.zeros(1024, np.float32)}
    with tf1.Session(graph=g, config=config) as sess:
        with DumpWriter(str(tmp_path / "full")) as w:
            before = bridge.stats()
            _captured_run(w, sess, looped, feed_dict=feed)
            per_run = bridge.stats()["tensors_forwarded"] - before["tensors_forwarded"]
        assert per_run > 1000
        with DumpWriter(str(tmp_path / "cut"), policy="block", queue_bytes=1 << 20,
                        frame_bytes=256 << 10) as w:
            before = bridge.stats()
            run = w.begin_run()
            options = _watch(run.debug_urls, g)
            started = threading.Event()
            result = []

            def step():
                started.set()
                result.append(sess.run(looped, feed_dict=feed, options=options))

            th = threading.Thread(target=step)
            th.start()
            started.wait()
            # Once the step's callbacks are arriving (some blocked on the queue).
            while th.is_alive() and bridge.stats()["tensors_forwarded"] - before["tensors_forwarded"] < 200:
                time.sleep(0.001)
            w.end_run(run)
            th.join()
            after = bridge.stats()
    assert len(result) == 1
    assert after["tensors_failed"] == before["tensors_failed"]
    forwarded = after["tensors_forwarded"] - before["tensors_forwarded"]
    orphaned = after["tensors_orphaned"] - before["tensors_orphaned"]
    assert forwarded + orphaned == per_run
    cut = _only_run(str(tmp_path / "cut"))
    assert 0 < len(cut) <= forwarded
