"""tfdbg v2 dumps into tfdump-fast (import_tfdbg2, `tfdump-fast import`), eager
stacks through the tfdbg2 conversion, and TensorBoard's Debugger V2 data
provider on converted TF2 dumps (skipped without tensorboard)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import tfdump_fast  # noqa: E402
from tfdump_fast import DumpReader, TfdumpFormatError, TfdumpUsageError  # noqa: E402
from tfdump_fast.tf2_reader import Tf2Dump  # noqa: E402

from conftest import PKG_PARENT  # noqa: E402
from test_tf2 import MODEL, nan_line, run_model  # noqa: E402


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """The Keras model of tests/tf2_keras_model.py, 4 steps (NaN at step 3),
    under tfdbg v2 (FULL_TENSOR) and under tfdump-fast."""
    base = tmp_path_factory.mktemp("tf2_import")
    run_model("tfdbg", base / "tfdbg", 4)
    run_model("ours", base / "ours", 4)
    return base


def tfdbg_reader(path):
    from tensorflow.python.debug.lib import debug_events_reader

    reader = debug_events_reader.DebugDataReader(str(path))
    reader.update()
    return reader


def tfdbg_contents(path):
    """(graph name, op, slot, value) per graph execution trace and (op type,
    slot, value) per eager output, as TF's DebugDataReader reads them."""
    with tfdbg_reader(path) as reader:
        traces = [(reader.graph_by_id(t.graph_id).name, t.op_name, t.output_slot,
                   reader.graph_execution_trace_to_tensor_value(t)) for t in reader.graph_execution_traces()]
        eager = [(e.op_type, slot, v) for e in reader.executions()
                 for slot, v in enumerate(reader.execution_to_tensor_values(e)) if v is not None]
        functions = [e.op_type for e in reader.executions() if e.graph_id]
    return traces, eager, functions


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x[:-1] == y[:-1]
        np.testing.assert_array_equal(x[-1], y[-1])


def test_import_tfdbg2_same_values_as_debug_data_reader_and_round_trip(dumps, tmp_path):
    traces, eager, functions = tfdbg_contents(dumps / "tfdbg")
    assert len(traces) > 100 and eager and len(functions) == 4

    names = tfdump_fast.import_tfdbg2(dumps / "tfdbg", tmp_path / "imported")
    dump = Tf2Dump(DumpReader(str(tmp_path / "imported")))
    assert len(names) == len(dump.reader.runs) == 5   # 4 function executions, then the eager ops after them
    assert [r.metadata["tf2_function"] for r in dump.executions()] == functions
    assert_same([(dump.graph_of(r).name, r.node_name, r.output_slot, r.value)
                 for r in dump.graph_execution_traces()], traces)
    assert_same([(r.node_name, r.output_slot, r.value) for r in dump.eager_records()], eager)
    # graphs with their ops and creation stacks; the NaN found at its step, op and line
    nan = dump.first_non_finite()
    assert dump.reader.runs.index(nan.run) == 3
    assert dump.op_of(nan).op_type == "Sqrt"
    assert dump.creation_site(nan)[:2] == (MODEL, nan_line())
    assert dump.source_line(MODEL, nan_line()).strip().startswith("return tf.math.sqrt(x)")
    # eager executions keep their stacks (the model script's fit line)
    assert all(dump.creation_site(r) is not None and dump.creation_site(r)[0] == MODEL
               for r in dump.eager_records())

    # round trip: convert(layout="tfdbg2") -> DebugDataReader reads the same tensors
    tfdump_fast.convert(str(tmp_path / "imported"), tmp_path / "back", layout="tfdbg2")
    traces_back, eager_back, functions_back = tfdbg_contents(tmp_path / "back")
    assert_same(traces_back, traces)
    assert_same(eager_back, eager)
    assert functions_back == functions

    # errors name the fix
    with pytest.raises(TfdumpUsageError, match="not empty"):
        tfdump_fast.import_tfdbg2(dumps / "tfdbg", tmp_path / "imported")
    with pytest.raises(TfdumpFormatError, match="import_tfdbg"):
        tfdump_fast.import_tfdbg2(tmp_path / "imported", tmp_path / "x")


def test_cli_import_detects_a_tfdbg2_dump(dumps, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([PKG_PARENT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "tfdump_fast", "import", str(dumps / "tfdbg"),
                           str(tmp_path / "cli")], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tfdbg v2" in proc.stdout and "5 run(s)" in proc.stdout, proc.stdout
    dump = Tf2Dump(DumpReader(str(tmp_path / "cli")))
    assert dump.op_of(dump.first_non_finite()).op_type == "Sqrt"
    # and back: convert --layout tfdbg2 with a summary mode, --json as cli_schemas says
    proc = subprocess.run([sys.executable, "-m", "tfdump_fast", "convert", str(tmp_path / "cli"),
                           str(tmp_path / "v2"), "--layout", "tfdbg2", "--tensor-debug-mode", "CURT_HEALTH",
                           "--json"], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    jsonschema = pytest.importorskip("jsonschema")
    from tfdump_fast.cli_schemas import SCHEMAS
    jsonschema.validate(out, SCHEMAS["convert"])
    assert {os.path.basename(f).rsplit(".", 1)[1] for f in out["files"]} >= {"execution", "graph_execution_traces"}
    with tfdbg_reader(tmp_path / "v2") as reader:
        curt = [t.debug_tensor_value for t in reader.graph_execution_traces()]
    assert curt and all(len(v) == 2 for v in curt) and any(v[1] == 1 for v in curt)


def test_converted_eager_stacks_read_by_debug_data_reader(dumps, tmp_path):
    dump = Tf2Dump(DumpReader(str(dumps / "ours")))
    eager = dump.eager_records()
    assert eager and all(dump.creation_site(r) is not None for r in eager)
    tfdump_fast.convert(str(dumps / "ours"), tmp_path / "v2", layout="tfdbg2")
    with tfdbg_reader(tmp_path / "v2") as reader:
        execs = [e for e in reader.executions() if e.output_tensor_ids]
        assert [e.op_type for e in execs] == [r.node_name for r in eager if r.output_slot == 0]
        for e, rec in zip(execs, [r for r in eager if r.output_slot == 0]):
            _, stack = reader.read_execution_stack_trace(e)
            assert [tuple(f) for f in stack] == [tuple(f) for f in dump.eager_stack(rec)]
        # every eager op ran inside the model script's fit call
        for e in execs:
            assert MODEL in [f[0] for f in reader.read_execution_stack_trace(e)[1]]


@pytest.mark.parametrize("mode", ["FULL_HEALTH", "CONCISE_HEALTH"])
def test_tensorboard_debugger_v2_data_provider_reads_converted_dump(dumps, tmp_path, monkeypatch, mode):
    """TensorBoard's own Debugger V2 backend: executions, graph execution
    traces, the NaN alert and the op's creation stack (FULL_TENSOR traces hang
    it in TF 2.21, for tfdbg v2's own dumps too: see tf2_conversion.py)."""
    pytest.importorskip("tensorboard")
    import threading

    from tensorboard.plugins.debugger_v2 import debug_data_multiplexer as mux

    # load once, synchronously, instead of tensorboard's 30 s reload thread
    monkeypatch.setattr(mux, "run_repeatedly_in_background",
                        lambda target, interval_sec: (target(), (threading.Event(), None))[1])
    dump = Tf2Dump(DumpReader(str(dumps / "ours")))
    tfdump_fast.convert(str(dumps / "ours"), tmp_path / "v2", layout="tfdbg2", tensor_debug_mode=mode)
    m = mux.DebuggerV2EventMultiplexer(str(tmp_path / "v2"))
    run = next(iter(m.Runs()))
    execs = m.ExecutionDigests(run, 0, -1)
    functions = [d for d in execs["execution_digests"] if d["op_type"].startswith("__inference_")]
    assert len(functions) == len(dump.executions()) == 4
    float_traces = [r for r in dump.graph_execution_traces() if r.value.dtype.kind == "f"]
    digests = m.GraphExecutionDigests(run, 0, -1)
    assert digests["num_digests"] == len(float_traces)
    alerts = m.Alerts(run, 0, -1)
    first = alerts["alerts"][0]
    assert alerts["alerts_breakdown"] == {"InfNanAlert": alerts["num_alerts"]}
    assert first["op_type"] == "Sqrt" and first["num_nan"] == 1 and first["size"] == 12
    data = m.GraphExecutionData(run, first["graph_execution_trace_index"],
                                first["graph_execution_trace_index"] + 1)
    trace = data["graph_executions"][0]
    assert trace["op_name"].endswith("Sqrt")
    nan_rec = dump.first_non_finite()
    summary = trace["debug_tensor_value"]
    assert summary[{"CONCISE_HEALTH": 4, "FULL_HEALTH": 7}[mode]] == 1   # the NaN count
    op = m.GraphOpInfo(run, trace["graph_id"], trace["op_name"])
    frames = m.StackFrames(run, op["stack_frame_ids"])["stack_frames"]
    assert [MODEL, nan_line()] in [[f[1], f[2]] for f in frames]
    assert nan_rec.node_name == trace["op_name"]
    files = m.SourceFileList(run)
    assert any(f[1] == MODEL for f in files)
