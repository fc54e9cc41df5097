"""convert / import_tfdbg / StoreDumpDir against real tfdbg dumps and
tfdbg's own reader, offline analyzer and wrapper session."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import PKG_PARENT  # noqa: E402  (the package under test)
from tfdump_fast import DumpReader, DumpWriter, convert, errors, import_tfdbg

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "data", "golden_v1")
DEVICE = "/job:localhost/replica:0/task:0/device:CPU:0"


def tree(root):
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def same_value(a, b):
    assert type(a) is type(b) or (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tolist() == b.tolist() if a.dtype == object else a.tobytes() == b.tobytes()
    else:  # InconvertibleTensorProto
        assert str(a) == str(b) and a.initialized == b.initialized


# ------------------------------------------------------------- without TF

def test_convert_stays_a_function_after_the_converter_module_is_imported(tmp_path):
    """``tfdump_fast.convert(...)`` (the README's call) must not turn into a
    module once something imports the implementation (StoreDumpDir does)."""
    code = ("import tfdump_fast.dumpdir, tfdump_fast.conversion, tfdump_fast; "
            "f = tfdump_fast.convert; print(callable(f), f.__module__)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [PKG_PARENT, os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "tfdump_fast.conversion"]


def test_import_then_convert_reproduces_tfdbg_files_byte_for_byte(tmp_path):
    """Every file of a real tfdbg dump (metadata, graphs, each dump Event:
    floats, strings, resources, variants, uninitialized) comes back identical."""
    store = str(tmp_path / "store")
    names = import_tfdbg(os.path.join(GOLDEN, "tfdbg"), store)
    assert names == sorted(os.listdir(os.path.join(GOLDEN, "tfdbg")))
    out = str(tmp_path / "out")
    dirs = convert(store, out)
    assert [os.path.basename(d) for d in dirs] == names
    original, converted = tree(os.path.join(GOLDEN, "tfdbg")), tree(out)
    assert sorted(original) == sorted(converted)
    assert [k for k in original if original[k] != converted[k]] == []


def converted_proto_digests(run_dir):
    """watch key -> sha256 of each dump's TensorProto, in execution order."""
    import hashlib

    from tfdump_fast import _tfproto as P

    out = {}
    for folder, _, files in os.walk(run_dir):
        for name in files:
            if name.startswith("_tfdbg_"):
                continue
            with open(os.path.join(folder, name), "rb") as f:
                event = P.decode_event(f.read())
            ts, _, k = name.rsplit("_", 1)[1].partition("-")
            out.setdefault(event["node_name"], []).append(
                ((int(ts), int(k or 0)), hashlib.sha256(event["tensor"]).hexdigest()))
    return {key: [d for _, d in sorted(v)] for key, v in out.items()}


def test_golden_hook_store_converts_to_the_protos_tfdbg_wrote(tmp_path):
    """A store written by the TF bridge (TensorList accumulators as list
    blobs) converts to exactly the TensorProtos tfdbg wrote for that step."""
    import json

    with open(os.path.join(GOLDEN, "expected.json")) as f:
        expected = json.load(f)["hook"]["tensor_protos"]
    (run_dir,) = convert(os.path.join(GOLDEN, "hook"), str(tmp_path / "o"))
    assert converted_proto_digests(run_dir) == expected


def test_golden_import_store_converts_back_to_the_golden_tfdbg_files(tmp_path):
    """The committed store (written by an earlier tfdump-fast) still converts
    to exactly the tfdbg dump it was imported from."""
    convert(os.path.join(GOLDEN, "tfdbg_import"), str(tmp_path / "o"))
    original, converted = tree(os.path.join(GOLDEN, "tfdbg")), tree(str(tmp_path / "o"))
    assert sorted(original) == sorted(converted)
    assert [k for k in original if original[k] != converted[k]] == []


def test_import_of_one_run_directory(tmp_path):
    run_dir = os.path.join(GOLDEN, "tfdbg", "run_1700000000000000_0")
    import_tfdbg(run_dir, str(tmp_path / "s"))
    (run,) = DumpReader(str(tmp_path / "s")).runs
    assert run.name == "run_1700000000000000_0" and len(run) == 5


def test_import_rejects_what_is_not_a_tfdbg_dump(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.TfdumpFormatError, match="not a tfdbg dump"):
        import_tfdbg(str(tmp_path / "empty"), str(tmp_path / "s"))
    with pytest.raises(errors.TfdumpIOError):
        import_tfdbg(str(tmp_path / "missing"), str(tmp_path / "s"))


def test_convert_refuses_to_mix_into_an_existing_run_directory(tmp_path):
    store = os.path.join(GOLDEN, "writer")
    out = str(tmp_path / "out")
    first = convert(store, out, runs=[0])
    with pytest.raises(errors.TfdumpUsageError, match="already exists"):
        convert(store, out, runs=[0])
    assert convert(store, out, runs=[0], overwrite=True) == first


def test_convert_reports_progress(tmp_path):
    calls = []
    convert(os.path.join(GOLDEN, "writer"), str(tmp_path / "o"), progress=lambda d, t: calls.append((d, t)))
    total = sum(len(r) for r in DumpReader(os.path.join(GOLDEN, "writer")).runs)
    assert calls and calls[-1] == (total, total)


def test_file_names_follow_tfdbg_and_collisions_get_suffixes(tmp_path):
    root = str(tmp_path / "s")
    with DumpWriter(root) as w:
        for i in range(3):  # three loop iterations within one microsecond
            w.write(np.array(i, dtype=np.int32), "while/body/add", wall_us=1_700_000_000_000_123)
        w.write(np.ones(2, np.float32), "dense/MatMul", 1, "DebugIdentity", wall_us=1_700_000_000_000_200)
    (run_dir,) = convert(root, str(tmp_path / "o"))
    dev = os.path.join(run_dir, "_tfdbg_device_,job_localhost,replica_0,task_0,device_CPU_0")
    assert sorted(os.listdir(os.path.join(dev, "while", "body"))) == [
        "add_0_DebugIdentity_1700000000000123", "add_0_DebugIdentity_1700000000000123-1",
        "add_0_DebugIdentity_1700000000000123-2"]
    assert os.listdir(os.path.join(dev, "dense")) == ["MatMul_1_DebugIdentity_1700000000000200"]


# ------------------------------------------------------------- with TF

tf = pytest.importorskip("tensorflow")
tf1 = tf.compat.v1
from tensorflow.python import debug as tf_debug  # noqa: E402
from tensorflow.python.debug.lib import debug_data  # noqa: E402


@pytest.fixture(scope="module")
def fresh_tfdbg(tmp_path_factory):
    """A tfdbg dump written now by this TensorFlow (same graph as the golden one)."""
    sys.path.insert(0, HERE)
    from make_golden import make_tfdbg_dump

    root = str(tmp_path_factory.mktemp("tfdbg"))
    make_tfdbg_dump(root)
    return root


def test_fresh_tfdbg_dump_round_trips_byte_for_byte(fresh_tfdbg, tmp_path):
    import_tfdbg(fresh_tfdbg, str(tmp_path / "s"))
    convert(str(tmp_path / "s"), str(tmp_path / "o"))
    a, b = tree(fresh_tfdbg), tree(str(tmp_path / "o"))
    assert sorted(a) == sorted(b) and [k for k in a if a[k] != b[k]] == []


def test_writer_store_converts_to_what_debugdumpdir_reads(tmp_path):
    import ml_dtypes

    root = str(tmp_path / "s")
    values = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3), "f64": np.array([np.nan, 1.0]),
        "f16": np.array([1.5], np.float16), "bf16": np.array([2.0, -1.0], ml_dtypes.bfloat16),
        "i8": np.array([-1, 2], np.int8), "u16": np.array([7], np.uint16), "i64": np.array(-5),
        "b": np.array([True, False]), "c64": np.array([1 + 2j], np.complex64),
        "s": np.array([b"x", b"", b"\x00y"], dtype=object), "e": np.zeros((0, 2), np.float32),
    }
    with DumpWriter(root) as w:
        run = w.begin_run(capture=False, metadata={"fetches": "['y']", "feed_keys": "None"})
        for name, v in values.items():
            w.write(v, "scope/" + name, run=run)
        w.end_run(run, metadata={"core_metadata": {"global_step": 3, "session_run_index": 1,
                                                   "executor_step_index": 2, "input_names": ["a:0"],
                                                   "output_names": ["y:0"], "target_nodes": ["t"]}})
    (run_dir,) = convert(root, str(tmp_path / "o"))
    dd = debug_data.DebugDumpDir(run_dir, validate=True)
    assert dd.size == len(values)
    assert dd.run_fetches_info == "['y']" and dd.run_feed_keys_info == "None"
    assert dd.core_metadata.global_step == 3 and dd.core_metadata.target_nodes == ["t"]
    for name, v in values.items():
        (got,) = dd.watch_key_to_data("scope/%s:0:DebugIdentity" % name)
        t = got.get_tensor()
        if name == "bf16":  # TF reads bfloat16 through its own dtype: compare bits
            assert t.view(np.uint16).tolist() == v.view(np.uint16).tolist()
            continue
        same_value(v, t)


def test_golden_writer_store_converts_with_two_devices(tmp_path):
    import hashlib
    import json

    with open(os.path.join(GOLDEN, "expected.json")) as f:
        expected = json.load(f)["writer"]["runs"][0]
    (run_dir,) = convert(os.path.join(GOLDEN, "writer"), str(tmp_path / "o"), runs=[0])
    dd = debug_data.DebugDumpDir(run_dir, validate=True)
    assert sorted(dd.devices()) == sorted({t["device"] for t in expected["tensors"]})
    assert dd.size == len(expected["tensors"])
    for t in expected["tensors"]:
        data = dd.watch_key_to_data(t["watch_key"])  # (passing device_name hits a tfdbg bug)
        assert data[0].device_name == t["device"]
        datum = next(d for d in data if d.timestamp == t["wall_us"])
        value = datum.get_tensor()
        if t["dtype"] == "bfloat16":
            value = value.view(np.uint16)
        h = hashlib.sha256()
        if value.dtype == object:
            for item in value.reshape(-1).tolist():
                h.update(len(item).to_bytes(8, "little"))
                h.update(item)
        else:
            h.update(np.ascontiguousarray(value).tobytes())
        assert h.hexdigest() == t["digest"], t["watch_key"]


def _wrapper_graph():
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [None, 2], name="x")
        pred = tf1.placeholder(tf.bool, name="pred")
        s = tf1.placeholder(tf.string, [None], name="s")
        v = tf1.get_variable("v", initializer=tf.ones([2, 2]), use_resource=True)
        y = tf.matmul(x, v, name="y")
        c = tf.cond(pred, lambda: y * 2.0, lambda: tf.math.log(y - 10.0), name="c")
        loop = tf.while_loop(lambda i, a: i < 3, lambda i, a: (i + 1, a + 1.0), [tf.constant(0), c],
                             name="loop")
        j = tf.strings.join([s, tf.constant("!")], name="j")
        bad = tf.debugging.check_numerics(loop[1], "bad", name="chk")
        init = tf1.global_variables_initializer()
    return g, x, pred, s, [loop[1], j], bad, init


def _drive(wrapper_cls, root, debug_ops=("DebugIdentity",), allow=None):
    g, x, pred, s, out, bad, init = _wrapper_graph()
    with g.as_default():
        sess = tf1.Session(graph=g)
        sess.run(init)
        wrapped = wrapper_cls(sess, root, watch_fn=lambda fetches, feeds: tf_debug.WatchOptions(
            debug_ops=list(debug_ops), tensor_dtype_regex_allowlist=allow))
        wrapped.run(out, feed_dict={x: [[1, 2]], pred: True, s: [b"a", b"bc"]})
        wrapped.run(out, feed_dict={x: [[1, 2]], pred: False, s: [b"a"]})
        try:  # a failing run (log of a negative number)
            wrapped.run(bad, feed_dict={x: [[1, 2]], pred: False, s: [b"a"]})
        except tf.errors.InvalidArgumentError:
            pass
        if hasattr(wrapped, "close"):
            wrapped.close()
        sess.close()


@pytest.fixture(scope="module")
def wrapper_dumps(tmp_path_factory):
    """The same three runs dumped by tfdbg's and by our DumpingDebugWrapperSession."""
    from tfdump_fast.hooks import DumpingDebugWrapperSession

    base = tmp_path_factory.mktemp("wrap")
    ref, ours = str(base / "tfdbg"), str(base / "ours")
    _drive(tf_debug.DumpingDebugWrapperSession, ref)
    _drive(DumpingDebugWrapperSession, ours)
    return ref, ours, str(base)


def test_hook_dump_converts_to_the_same_tensors_as_tfdbg(wrapper_dumps, tmp_path):
    """while loop, cond, strings, a resource, a failing run: same watch keys,
    same number of executions, bit-identical values; tfdbg validates it."""
    ref, ours, _ = wrapper_dumps
    reader = DumpReader(ours)
    assert [r.status for r in reader.runs] == ["complete", "complete", "failed"]
    dirs = convert(reader, str(tmp_path / "o"))
    ref_dirs = sorted(os.path.join(ref, d) for d in os.listdir(ref))
    assert len(dirs) == len(ref_dirs) == 3
    for a, b in zip(ref_dirs, dirs):
        da, db = debug_data.DebugDumpDir(a, validate=True), debug_data.DebugDumpDir(b, validate=True)
        keys = sorted(d.watch_key for d in da.dumped_tensor_data)
        assert keys == sorted(d.watch_key for d in db.dumped_tensor_data)
        assert da.run_fetches_info == db.run_fetches_info
        assert da.run_feed_keys_info == db.run_feed_keys_info
        for key in set(keys):
            va = [d.get_tensor() for d in da.watch_key_to_data(key)]
            vb = [d.get_tensor() for d in db.watch_key_to_data(key)]
            assert len(va) == len(vb)
            for x, y in zip(va, vb):
                if isinstance(x, debug_data.InconvertibleTensorProto):  # resource handles differ by hash
                    assert isinstance(y, debug_data.InconvertibleTensorProto)
                    continue
                same_value(x, y)
    # the loop ran three times: three dumps of each tensor of its body, in order
    run = reader.runs[0]
    body = [k for k in run.watch_keys if k.node.startswith("loop/body/") and "/add" in k.node]
    assert body and all(len(run.select(k.node, k.output_slot)) == 3 for k in body)
    counters = [k for k in body if run.select(k.node, k.output_slot)[0].dtype_name == "int32"
                and not k.node.endswith("/y")]
    assert [int(v) for v in run.get(counters[0].node, counters[0].output_slot)] == [1, 2, 3]


def test_while_loop_gradient_tensorlists_match_tfdbg(tmp_path):
    """The bridge's TensorList list blobs convert to tfdbg's exact protos."""
    sys.path.insert(0, HERE)
    from make_golden import _one_step

    from tfdump_fast.hooks import DumpingDebugWrapperSession

    ref, ours = str(tmp_path / "ref"), str(tmp_path / "ours")
    _one_step(lambda sess: tf_debug.DumpingDebugWrapperSession(sess, ref))
    _one_step(lambda sess: DumpingDebugWrapperSession(sess, ours))
    (ref_run,) = [os.path.join(ref, n) for n in os.listdir(ref)]
    reader = DumpReader(ours)
    variants = [r for r in reader.runs[0].records if r.dtype_name == "variant"]
    assert variants and all(v.value.kind == "variant" for v in variants)
    assert any(len(v.value.value[0].tensors) == 4 for v in variants)  # a full accumulator
    (run_dir,) = convert(reader, str(tmp_path / "o"))
    assert converted_proto_digests(run_dir) == converted_proto_digests(ref_run)


def test_debug_numeric_summary_matches_tfdbg(tmp_path):
    from tfdump_fast.hooks import DumpingDebugWrapperSession

    ref, ours = str(tmp_path / "ref"), str(tmp_path / "ours")
    _drive(tf_debug.DumpingDebugWrapperSession, ref, ("DebugNumericSummary",), "float32")
    _drive(DumpingDebugWrapperSession, ours, ("DebugNumericSummary",), "float32")
    da = debug_data.DebugDumpDir(os.path.join(ref, sorted(os.listdir(ref))[0]))
    run = DumpReader(ours).runs[0]
    assert {k.debug_op for k in run.watch_keys} == {"DebugNumericSummary"}
    for d in da.dumped_tensor_data:
        got = run.get(d.node_name, d.output_slot, "DebugNumericSummary")
        ref_vals = [x.get_tensor() for x in da.watch_key_to_data(d.watch_key)]
        assert [g.tobytes() for g in got] == [r.tobytes() for r in ref_vals]


def test_offline_analyzer_reads_a_converted_run(wrapper_dumps, tmp_path):
    _, ours, _ = wrapper_dumps
    run_dir = convert(ours, str(tmp_path / "o"), runs=[0])[0]
    proc = subprocess.run(
        [sys.executable, "-m", "tensorflow.python.debug.cli.offline_analyzer", "--dump_dir=" + run_dir,
         "--ui_type=readline"], input="lt\npt y:0\nexit\n", capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dumped tensor(s)" in proc.stdout and "MatMul" in proc.stdout
    assert 'Tensor "y:0:DebugIdentity"' in proc.stdout


# ------------------------------------------------------------- StoreDumpDir

def test_store_dump_dir_behaves_like_debugdumpdir(wrapper_dumps, tmp_path):
    from tfdump_fast.dumpdir import StoreDumpDir

    _, ours, _ = wrapper_dumps
    reader = DumpReader(ours)
    run_dir = convert(reader, str(tmp_path / "o"), runs=[0])[0]
    ref = debug_data.DebugDumpDir(run_dir, validate=True)
    view = StoreDumpDir(reader, run=0)
    assert isinstance(view, debug_data.DebugDumpDir)
    assert view.size == ref.size and view.t0 == ref.t0 and view.devices() == ref.devices()
    assert view.core_metadata == ref.core_metadata
    assert view.run_fetches_info == ref.run_fetches_info and view.run_feed_keys_info == ref.run_feed_keys_info
    assert sorted(view.nodes()) == sorted(ref.nodes())
    assert view.loaded_partition_graphs()
    rel = lambda paths, root: [os.path.relpath(p, root) for p in paths]  # noqa: E731
    for d in ref.dumped_tensor_data:
        args = (d.node_name, d.output_slot, d.debug_op)
        for x, y in zip(ref.get_tensors(*args), view.get_tensors(*args)):
            same_value(x, y)
        assert ref.get_rel_timestamps(*args) == view.get_rel_timestamps(*args)
        assert ref.get_dump_sizes_bytes(*args) == view.get_dump_sizes_bytes(*args)
        assert rel(ref.get_tensor_file_paths(*args), run_dir) == \
            rel(view.get_tensor_file_paths(*args), view._dump_root)
        assert ref.node_op_type(d.node_name) == view.node_op_type(d.node_name)
        assert ref.node_inputs(d.node_name) == view.node_inputs(d.node_name)
        assert sorted(ref.debug_watch_keys(d.node_name)) == sorted(view.debug_watch_keys(d.node_name))
        assert ref.node_exists(d.node_name) and view.node_exists(d.node_name)
    # time order (tfdbg orders equal timestamps by directory listing, we by execution)
    assert [d.timestamp for d in ref.dumped_tensor_data] == [d.timestamp for d in view.dumped_tensor_data]
    assert sorted((d.extended_timestamp, d.watch_key) for d in ref.dumped_tensor_data) == \
        sorted((d.extended_timestamp, d.watch_key) for d in view.dumped_tensor_data)
    assert len(view.find(lambda d, t: True, first_n=5)) == 5
    assert ref.transitive_inputs("y") == view.transitive_inputs("y")


def test_store_dump_dir_find_inf_nan(tmp_path):
    from tfdump_fast.dumpdir import StoreDumpDir

    root = str(tmp_path / "s")
    with DumpWriter(root) as w:
        w.write(np.array([1.0, 2.0], np.float32), "ok")
        w.write(np.array([np.nan], np.float32), "bad/a")
        w.write(np.array([np.inf], np.float64), "bad/b")
    view = StoreDumpDir(root, validate=False)
    assert [d.node_name for d in view.find(debug_data.has_inf_or_nan)] == ["bad/a", "bad/b"]
    assert [d.node_name for d in view.find(debug_data.has_inf_or_nan, exclude_node_names="bad/a")] == ["bad/b"]
    assert [d.node_name for d in view.find(debug_data.has_inf_or_nan, first_n=1)] == ["bad/a"]
    assert [t.tolist() for t in view.get_tensors("bad/b", 0, "DebugIdentity")] == [[np.inf]]


def test_tfdbg_analyzer_runs_on_a_store_dump_dir(wrapper_dumps, tmp_path):
    """tfdbg's offline analyzer commands, on the store, without converting."""
    from tensorflow.python.debug.cli import analyzer_cli, cli_config

    from tfdump_fast.dumpdir import StoreDumpDir

    _, ours, _ = wrapper_dumps
    view = StoreDumpDir(ours, run=0)
    analyzer = analyzer_cli.DebugAnalyzer(view, cli_config.CLIConfig(config_file_path=str(tmp_path / "cfg")))
    listed = "\n".join(analyzer.list_tensors([]).lines)
    assert "dumped tensor(s)" in listed and "MatMul" in listed
    printed = "\n".join(analyzer.print_tensor(["y:0"]).lines)
    assert 'Tensor "y:0:DebugIdentity"' in printed and "3." in printed
    info = "\n".join(analyzer.node_info(["y"]).lines)
    assert "Op: " in info and "MatMul" in info and "recipient" in info
