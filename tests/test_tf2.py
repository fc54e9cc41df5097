"""TF2 capture (tfdump_fast.enable_dump_debug_info): Keras fit, tfdbg v2 parity,
nested tf.functions, tf.data, eager ops, sampling, XLA, argument checks.

Keras runs and the tfdbg v2 comparison run in subprocesses (fresh seeds, one
op-callback state per process); the rest runs here with capture enabled only
inside each test (op callbacks are per thread and removed by disable).
"""

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import tfdump_fast  # noqa: E402
from tfdump_fast import DumpReader, TfdumpUsageError, tf2  # noqa: E402
from tfdump_fast.tf2_reader import Tf2Dump  # noqa: E402

from conftest import PKG_PARENT  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "tf2_keras_model.py")

# Tests that enable capture in this process need eager execution, which other
# test files of the suite turn off for the whole pytest process
# (tf.compat.v1.disable_eager_execution): they run in one fresh pytest process,
# started by test_eager_tests_in_a_fresh_process.
IN_EAGER_CHILD = os.environ.get("TFDUMP_EAGER_CHILD") == "1"
eager_child = pytest.mark.skipif(not IN_EAGER_CHILD, reason="runs in the fresh process of "
                                 "test_eager_tests_in_a_fresh_process")
EAGER_TESTS = ("test_nested_functions_tf_data_and_eager_ops", "test_filters_sampling_and_disable",
               "test_xla_compiled_function_is_refused_clearly_and_still_runs",
               "test_argument_errors_name_the_fix", "test_health_mode_eager_ops_and_skipped_dtypes",
               "test_circular_buffer_writes_the_last_executions_on_nan_and_at_disable")
#: tfdbg v2's modes besides FULL_TENSOR that TF2 capture implements
SUMMARY_MODES = ("CURT_HEALTH", "CONCISE_HEALTH", "FULL_HEALTH", "SHAPE", "NO_TENSOR")


def run_eager_tests(path, names):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TFDUMP_EAGER_CHILD="1",
               PYTHONPATH=os.pathsep.join([PKG_PARENT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path,
                           "-k", " or ".join(names)], env=env, cwd=os.path.dirname(path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert f"{len(names)} passed" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.skipif(IN_EAGER_CHILD, reason="this is the fresh process")
def test_eager_tests_in_a_fresh_process():
    run_eager_tests(os.path.abspath(__file__), EAGER_TESTS)


def run_model(which, root, steps):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([PKG_PARENT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, MODEL, which, str(root), str(steps)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture
def capture(tmp_path):
    root = tmp_path / "dump"
    started = []

    def start(**kw):
        tf2.enable_dump_debug_info(root, **kw)
        started.append(True)
        return root

    yield start
    tf2.disable_dump_debug_info()


def nan_line():
    with open(MODEL) as f:
        return next(i for i, line in enumerate(f, 1) if "NaN_LINE" in line)


def test_keras_fit_nan_found_at_its_step_with_op_and_creation_line(tmp_path):
    root = tmp_path / "ours"
    stats = json.loads(run_model("ours", root, 6).stdout.strip().splitlines()[-1])
    assert stats["tensors_submitted"] > 0 and stats["tensors_failed"] == 0
    dump = Tf2Dump(DumpReader(str(root)))
    execs = dump.executions()
    assert len(execs) == 6   # one run per Keras step (steps_per_execution=1)
    assert [r.metadata["batch"] for r in execs] == list(range(6))
    assert all(r.metadata["epoch"] == 0 and r.metadata["keras_mode"] == "train" for r in execs)
    assert [r.metadata["global_step"] for r in execs] == list(range(6))
    assert len({r.metadata["tf2_function"] for r in execs}) == 1
    assert dump.graph_of_run(execs[0]) is not None
    rec = dump.first_non_finite()
    assert rec is not None
    assert rec.run.metadata["batch"] == 3   # NAN_STEP of the model script
    assert dump.op_of(rec).op_type == "Sqrt"
    assert rec.node_name.endswith("Sqrt")
    file, line, _ = dump.creation_site(rec)
    assert os.path.samefile(file, MODEL) and line == nan_line()
    assert "tf.math.sqrt" in dump.source_line(file, line)
    # the steps before hold no inf/nan
    for r in execs[:3]:
        assert not r.find(tfdump_fast.has_inf_or_nan)


def test_same_instrumented_tensors_and_values_as_tfdbg_v2(tmp_path):
    from tensorflow.python.debug.lib import debug_events_reader

    run_model("ours", tmp_path / "ours", 2)
    run_model("tfdbg", tmp_path / "tfdbg", 2)
    ours = defaultdict(list)
    dump = Tf2Dump(DumpReader(str(tmp_path / "ours")))
    for run in dump.reader.runs:
        for rec in run:
            g = dump.graph_of(rec)
            if g is not None:
                ours[(g.name, rec.node_name, rec.output_slot)].append(rec.value)
    theirs = defaultdict(list)
    with debug_events_reader.DebugDataReader(str(tmp_path / "tfdbg")) as reader:
        reader.update()
        for trace in reader.graph_execution_traces():
            key = (reader.graph_by_id(trace.graph_id).name, trace.op_name, trace.output_slot)
            theirs[key].append(reader.graph_execution_trace_to_tensor_value(trace))
    assert len(theirs) > 50
    assert set(ours) == set(theirs)
    for key, values in theirs.items():
        if key[0].startswith("Dataset_"):
            # tf.data functions run ahead of the steps, on parallel threads: how
            # many elements they made, and in which order, depends on timing in
            # both tools; the fewer must all be among the more
            mine = Counter(_value_key(v) for v in ours[key])
            other = Counter(_value_key(v) for v in values)
            fewer, more = (mine, other) if sum(mine.values()) <= sum(other.values()) else (other, mine)
            assert not fewer - more, key
            continue
        assert len(ours[key]) == len(values), key
        for a, b in zip(ours[key], values):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(key))


def _value_key(value):
    arr = np.asarray(value)
    return (arr.dtype.str, arr.shape, arr.tobytes())


@eager_child
def test_nested_functions_tf_data_and_eager_ops(capture, caplog):
    root = capture()

    @tf.function
    def inner(x):
        return tf.sin(x) * 2.0

    @tf.function
    def outer(x):
        ds = tf.data.Dataset.range(3).map(lambda v: tf.cast(v, tf.float32) * 2.0)
        total = ds.reduce(0.0, lambda a, b: a + b)
        return inner(x) + total

    x = tf.constant([1.0, 2.0])
    outer_line = sys._getframe().f_lineno + 1
    outer(x)
    outer(x)
    exp_line = sys._getframe().f_lineno + 1
    eager = tf.exp(tf.constant([0.0, 1.0]))
    tfdump_fast.disable_dump_debug_info()
    assert not [m for m in caplog.messages if "tfdump-fast" in m]

    from test_meta_events import check_events, check_values
    from conftest import scan_store

    _, events = scan_store(str(root))
    assert {"tf2_graph", "tf2_source_file", "tf2_eager_stack"} <= check_events(events)   # as FORMAT.md's table says
    check_values(events)
    dump = tfdump_fast.Tf2Dump(DumpReader(str(root)))
    assert [r.node_name for r in dump.eager_records()].count("Exp") == 1
    names = {g.name: g for g in dump.graphs.values()}
    assert {"outer", "inner", "Dataset_map_lambda", "reduce_lambda"} <= set(names)
    assert names["inner"].outer_context_id == names["outer"].context_id
    assert names["Dataset_map_lambda"].outer_context_id == names["outer"].context_id
    execs = dump.executions()
    assert len(execs) == 2 and execs[0].metadata["tf2_function"].startswith("__inference_outer")
    for run in execs:
        by = {(dump.graph_of(r).name if dump.graph_of(r) else None, r.node_name): r for r in run}
        np.testing.assert_allclose(by[("inner", "Sin")].value, np.sin([1.0, 2.0]), rtol=1e-6)
        assert by[("reduce_lambda", "add")].value in (0.0, 2.0, 6.0)
        # the dataset's map function ran 3 times per execution
        assert sum(1 for r in run if dump.graph_of(r) and dump.graph_of(r).name == "Dataset_map_lambda"
                   and r.node_name == "mul") == 3
        # the function's outputs, as tfdbg v2's execution outputs
        out = [r for r in run if r.debug_op.startswith("TfdumpCaptureV2.eager@")]
        assert [r.node_name for r in out] == [run.metadata["tf2_function"]]
        np.testing.assert_allclose(out[0].value, np.sin([1.0, 2.0]) * 2 + 6.0, rtol=1e-6)
    # eager ops after the last function: their own run
    last = dump.reader.runs[-1]
    assert last.metadata["tf2_function"] is None
    exp = [r for r in last if r.node_name == "Exp"]
    assert len(exp) == 1 and np.array_equal(exp[0].value, eager.numpy())
    # eager stacks: the line that executed each eager op / function
    this_file = os.path.abspath(__file__)
    assert dump.creation_site(exp[0]) == (this_file, exp_line, "test_nested_functions_tf_data_and_eager_ops")
    assert dump.source_line(this_file, exp_line).strip().startswith("eager = tf.exp(")
    calls = [dump.creation_site(r) for run in execs for r in run if r.node_name.startswith("__inference_outer")]
    assert [c[1] for c in calls] == [outer_line, outer_line + 1]
    assert all(f[0] != tfdump_fast.tf2.__file__ for f in dump.creation_stack(exp[0]))


@eager_child
def test_filters_sampling_and_disable(capture):
    root = capture(sample=2, op_regex="(Mul|Sin)$", tensor_dtypes=[tf.float32])

    @tf.function
    def f(x):
        return tf.sin(x) * 3.0 + tf.cast(tf.size(x), tf.float32)

    for _ in range(4):
        f(tf.constant([0.5]))
    stats = tf2.disable_dump_debug_info()
    assert tf2.disable_dump_debug_info() is None   # idempotent
    f(tf.constant([0.5]))                          # capture ops left in the graph only forward
    dump = Tf2Dump(DumpReader(str(root)))
    execs = dump.executions()
    assert [r.metadata["tf2_execution"] for r in execs] == [0, 2]   # one per window of 2
    for run in execs:
        graph_ops = sorted(dump.op_of(r).op_type for r in run if dump.graph_of(r) is not None)
        assert graph_ops == ["Mul", "Sin"]
    assert stats["tensors_unbound"] > 0


@eager_child
def test_xla_compiled_function_is_refused_clearly_and_still_runs(capture, caplog):
    root = capture()

    @tf.function(jit_compile=True)
    def f(x):
        return x * 2.0 + 1.0

    with caplog.at_level("WARNING", logger="tfdump_fast"):
        y = f(tf.constant([1.0]))
    assert y.numpy().tolist() == [3.0]
    assert any("XLA" in m and "NOT captured" in m for m in caplog.messages)
    tf2.disable_dump_debug_info()
    from test_meta_events import check_events
    from conftest import scan_store

    assert tf2.XLA_EVENT in check_events(scan_store(str(root))[1])
    reader = DumpReader(str(root))
    assert [e["graph_name"] for e in reader.events(tf2.XLA_EVENT)] == ["f"]
    dump = Tf2Dump(reader)
    assert all(dump.graph_of(r) is None for run in reader.runs for r in run)


@eager_child
def test_argument_errors_name_the_fix(tmp_path):
    with pytest.raises(TfdumpUsageError, match="CURT_HEALTH"):
        tf2.enable_dump_debug_info(tmp_path / "a", tensor_debug_mode="FULL_NUMERICS")
    with pytest.raises(TfdumpUsageError, match="not one of tfdbg v2's modes"):
        tf2.enable_dump_debug_info(tmp_path / "a", tensor_debug_mode="LOUD")
    with pytest.raises(TfdumpUsageError, match="circular_buffer_size"):
        tf2.enable_dump_debug_info(tmp_path / "a", circular_buffer_size=1.5)
    with pytest.raises(TfdumpUsageError, match="pass one"):
        tf2.enable_dump_debug_info(tmp_path / "a", circular_buffer_size=3, keep_last=3)
    tf2.enable_dump_debug_info(tmp_path / "a")
    try:
        with pytest.raises(TfdumpUsageError, match="already enabled"):
            tf2.enable_dump_debug_info(tmp_path / "b")
    finally:
        tf2.disable_dump_debug_info()


def test_convert_tfdbg2_is_read_by_tensorflows_debug_data_reader(tmp_path):
    from tensorflow.python.debug.lib import debug_events_reader

    root = tmp_path / "ours"
    run_model("ours", root, 4)
    dump = Tf2Dump(DumpReader(str(root)))
    files = tfdump_fast.convert(str(root), tmp_path / "v2", layout="tfdbg2")
    assert {os.path.basename(f).rsplit(".", 1)[1] for f in files} >= {
        "metadata", "source_files", "stack_frames", "graphs", "execution", "graph_execution_traces"}
    ours = [(dump.graph_of(r).name, r.node_name, r.output_slot, r.value)
            for r in dump.graph_execution_traces()]
    with debug_events_reader.DebugDataReader(str(tmp_path / "v2")) as reader:
        reader.update()
        traces = reader.graph_execution_traces()
        assert len(traces) == len(ours)
        for trace, (graph, op, slot, value) in zip(traces, ours):
            assert (reader.graph_by_id(trace.graph_id).name, trace.op_name, trace.output_slot) == (
                graph, op, slot)
            np.testing.assert_array_equal(reader.graph_execution_trace_to_tensor_value(trace), value)
        # the NaN's op, its type and its creation line through tfdbg v2's reader
        sqrt = next(t for t in traces if t.op_name.endswith("Sqrt")
                    and np.isnan(reader.graph_execution_trace_to_tensor_value(t)).any())
        assert sqrt.op_type == "Sqrt"
        graph = reader.graph_by_id(sqrt.graph_id)
        op = graph.get_op_creation_digest(sqrt.op_name)
        frames = [reader._stack_frame_by_id[i] for i in op.stack_frame_ids]   # noqa: SLF001
        assert (MODEL, nan_line()) in {(f[1], f[2]) for f in frames}
        execs = reader.executions()
        functions = [e for e in execs if e.op_type.startswith("__inference_")]
        assert len(functions) == 4
        assert reader.graph_by_id(functions[0].graph_id) is not None
        with pytest.raises(TfdumpUsageError, match="not empty"):
            tfdump_fast.convert(str(root), tmp_path / "v2", layout="tfdbg2")


# -- tensor_debug_mode other than FULL_TENSOR, circular_buffer_size


@pytest.fixture(scope="module")
def mode_dumps(tmp_path_factory):
    """The Keras model trained 4 steps (NaN at step 3) under each summary mode,
    ours and tfdbg v2's, in one child process: ROOT/<MODE>/{ours,tfdbg}."""
    root = tmp_path_factory.mktemp("modes")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([PKG_PARENT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, MODEL, "modes", str(root), "4", *SUMMARY_MODES], env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, json.loads(proc.stdout.strip().splitlines()[-1])


def _tfdbg_traces(path):
    """{(graph name, op name, slot): [debug_tensor_value as float64 array]}, and
    the function executions' debug_tensor_values, through TF's DebugDataReader."""
    from tensorflow.python.debug.lib import debug_events_reader

    traces = defaultdict(list)
    with debug_events_reader.DebugDataReader(str(path)) as reader:
        reader.update()
        for t in reader.graph_execution_traces():
            value = t.debug_tensor_value   # None in NO_TENSOR mode
            traces[(reader.graph_by_id(t.graph_id).name, t.op_name, t.output_slot)].append(
                None if value is None else np.asarray(value, dtype=np.float64))
        functions = [(e.op_type.rsplit("_", 1)[0], e.debug_tensor_values) for e in reader.executions()
                     if e.op_type.startswith("__inference_")]
    return traces, functions


def _assert_same_traces(ours, theirs):
    assert set(ours) == set(theirs)
    for key, values in theirs.items():
        if key[0].startswith("Dataset_"):   # ran ahead on parallel threads: see the FULL_TENSOR test
            mine, other = Counter(map(_value_key, ours[key])), Counter(map(_value_key, values))
            fewer, more = (mine, other) if sum(mine.values()) <= sum(other.values()) else (other, mine)
            assert not fewer - more, key
            continue
        assert len(ours[key]) == len(values), key
        for a, b in zip(ours[key], values):   # bit-exact, tensor id in slot 0 included
            np.testing.assert_array_equal(a, b, err_msg=str(key))


@pytest.mark.parametrize("mode", SUMMARY_MODES)
def test_summary_modes_same_tensors_and_values_as_tfdbg_v2(mode_dumps, mode, tmp_path):
    root, stats = mode_dumps
    assert stats[mode]["tensors_submitted"] > 0 and stats[mode]["tensors_failed"] == 0
    dump = Tf2Dump(DumpReader(str(root / mode / "ours")))
    ours = defaultdict(list)
    for run in dump.reader.runs:
        for rec in run:
            g = dump.graph_of(rec)
            if g is None:
                continue
            value = np.asarray(rec.value)
            if mode == "NO_TENSOR":
                assert value.dtype == np.float32 and value.shape == (0,)
                value = None   # what DebugDataReader returns for it
            else:
                assert value.dtype == np.float64 and value.ndim == 1
                # slot 0: tfdbg v2's id of the tensor, as its GraphOpCreation numbers it
                assert value[0] == dump.op_of(rec).first_tensor_id + rec.output_slot
            ours[(g.name, rec.node_name, rec.output_slot)].append(value)
    theirs, their_functions = _tfdbg_traces(root / mode / "tfdbg")
    assert len(theirs) > 20
    _assert_same_traces(ours, theirs)

    # the NaN of step 3, judged by the counts (SHAPE and NO_TENSOR carry none)
    rec = dump.first_non_finite()
    if mode in ("SHAPE", "NO_TENSOR"):
        assert rec is None
    else:
        assert rec is not None and rec.run.metadata["batch"] == 3
        assert dump.op_of(rec).op_type == "Sqrt"
        assert dump.reader.runs[0].find(tfdump_fast.has_inf_or_nan) == []

    # converted: DebugDataReader returns what it returns for tfdbg v2's own dump
    tfdump_fast.convert(str(root / mode / "ours"), tmp_path / "v2", layout="tfdbg2")
    converted, functions = _tfdbg_traces(tmp_path / "v2")
    _assert_same_traces(converted, theirs)
    assert len(functions) == 4 and len(their_functions) == 4
    for (name, values), (their_name, their_values) in zip(functions, their_functions):
        values, their_values = values or (), their_values or ()   # None: no value recorded
        assert name == their_name and len(values) == len(their_values)
        for a, b in zip(values, their_values):
            assert (a is None) == (b is None)
            np.testing.assert_array_equal(np.asarray(a, dtype=float), np.asarray(b, dtype=float))


@eager_child
def test_health_mode_eager_ops_and_skipped_dtypes(capture, tmp_path):
    root = capture(tensor_debug_mode="CONCISE_HEALTH")

    @tf.function
    def f(x):
        return tf.math.log(x), tf.size(x)   # the int32 output is not summarised

    f(tf.constant([1.0, 0.0, -1.0]))
    tf.exp(tf.constant([0.0, 1.0]))
    stats = tf2.disable_dump_debug_info()
    assert stats["tensors_failed"] == 0
    dump = Tf2Dump(DumpReader(str(root)))
    graph = {r.node_name: r for r in dump.graph_execution_traces()}
    assert "Size" not in graph   # int32: tfdbg v2 does not instrument it either
    log_id = dump.op_of(graph["Log"]).first_tensor_id
    # [tensor id, element count, -inf, +inf, nan] as DebugNumericSummaryV2
    np.testing.assert_array_equal(graph["Log"].value, [log_id, 3, 1, 0, 1])
    assert dump.first_non_finite().node_name == "Log"
    eager = {(r.node_name, r.output_slot): r for r in dump.eager_records()}
    np.testing.assert_array_equal(eager[("Exp", 0)].value, [-1, 2, 0, 0, 0])   # eager: id -1, as tfdbg v2
    function = next(k for k in eager if k[0].startswith("__inference_f"))[0]
    np.testing.assert_array_equal(eager[(function, 0)].value, [-1, 3, 1, 0, 1])
    assert eager[(function, 1)].debug_op.endswith(".NO_TENSOR")   # int32 output: its place only
    # tfdbg v2 keeps that place as an empty TensorProto: DebugDataReader reads None
    from tensorflow.python.debug.lib import debug_events_reader

    tfdump_fast.convert(str(root), tmp_path / "v2", layout="tfdbg2")
    with debug_events_reader.DebugDataReader(str(tmp_path / "v2")) as reader:
        reader.update()
        ex = next(e for e in reader.executions() if e.op_type == function)
        assert ex.debug_tensor_values == ([-1.0, 3.0, 1.0, 0.0, 1.0], None)


@eager_child
def test_circular_buffer_writes_the_last_executions_on_nan_and_at_disable(capture):
    from tfdump_fast.flight import TRIGGER_EVENT

    root = capture(circular_buffer_size=3)

    @tf.function
    def f(x):
        return tf.math.sqrt(x) * 2.0

    for i in range(12):
        f(tf.constant([-1.0 if i == 5 else 1.0]))   # NaN at execution 5
    tf2.disable_dump_debug_info()
    reader = DumpReader(str(root))
    # the trigger wrote executions 2..5; disable wrote the last 3 runs (10, 11 and
    # the open run after them); 0, 1 and 6..9 were never written
    assert [r.metadata["tf2_execution"] for r in reader.runs] == [2, 3, 4, 5, 10, 11, 12]
    triggers = list(reader.events(TRIGGER_EVENT))
    assert [t["reason"] for t in triggers] == ["inf_nan", "manual"]
    assert triggers[0]["tensor"]["node"] == "Sqrt"
    assert triggers[1]["message"] == "disable_dump_debug_info"
    hit = Tf2Dump(reader).first_non_finite()
    assert hit.node_name == "Sqrt" and hit.run.metadata["tf2_execution"] == 5
    for run in reader.runs[:-1]:   # full tensors of every written execution
        assert [r.node_name for r in run if r.node_name == "Sqrt"] == ["Sqrt"]


def test_circular_buffer_written_at_interpreter_exit(tmp_path):
    """As tfdbg v2 writes its buffer at exit: a program that never disables."""
    root = tmp_path / "dump"
    script = f"""
import tensorflow as tf
import tfdump_fast
tfdump_fast.enable_dump_debug_info({str(root)!r}, circular_buffer_size=2)
f = tf.function(lambda x: x * 2.0)
for _ in range(5):
    f(tf.constant([1.0]))
"""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([PKG_PARENT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reader = DumpReader(str(root))
    # executions 0..4 ran; the last 2 ended runs (4 and the open run after it) are written
    assert [r.metadata["tf2_execution"] for r in reader.runs] == [4, 5]
    assert [e["message"] for e in reader.events("flight_recorder_trigger")] == ["disable_dump_debug_info"]
    assert [r.node_name for r in reader.runs[0] if r.node_name == "mul"] == ["mul"]
