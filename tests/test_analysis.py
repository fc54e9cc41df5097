"""Graph-aware analysis and the commands built on it (issue 13): the global
step of every dumped run, trace to the origin op of a nan, node info and
fed inputs from the stored partition graphs, show with slices and lookups,
history / diff / plot across runs, scratch outputs skipped by the inf/nan
search, --json validated against the documented schemas, and the CLI
conventions (--version, python -m tfdump_fast, refused counts, CLI terms).

Real parts: TensorFlow sessions with the hook, the native writer, real files
and a real subprocess for ``python -m``."""

import json
import os
import subprocess
import sys

import jsonschema
import numpy as np
import pytest
import tensorflow as tf

from tfdump_fast import DumpReader, DumpWriter, DumpingDebugHook, convert
from tfdump_fast import _tfproto as P
from tfdump_fast.cli import main
from tfdump_fast.cli_schemas import SCHEMAS

from conftest import PKG_PARENT as SRC  # noqa: E402

tf1 = tf.compat.v1


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def run_json(capsys, schema, *argv):
    code, out, err = run_cli(capsys, *argv, "--json")
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMAS[schema])
    return code, doc


# ------------------------------------------------------------------ a real model with a nan

def log_model():
    """x -> sub -> Log (of non-positive values: nan and -inf) -> 3 dense
    layers -> loss, with a global step incremented by the train op."""
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [2, 3], name="x")
        shifted = tf.subtract(x, 1.0, name="shifted")
        h = tf.math.log(shifted, name="features/log")
        for i in range(3):
            w = tf1.get_variable("layer%d/w" % i, initializer=tf.constant(np.full((3, 3), 0.5, np.float32)))
            h = tf.nn.relu(tf.matmul(h, w, name="layer%d/MatMul" % i), name="layer%d/relu" % i)
        loss = tf.reduce_mean(h, name="loss")
        gs = tf1.train.get_or_create_global_step()
        train = tf1.assign_add(gs, 1, name="train")
    return g, x, loss, train


@pytest.fixture(scope="module")
def log_dump(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("logdump") / "dump")
    g, x, loss, train = log_model()
    feeds = [np.full((2, 3), 3.0, np.float32),                           # finite
             np.array([[3.0, 0.5, 2.0], [1.0, 4.0, 5.0]], np.float32),   # log(-0.5)=nan, log(0)=-inf
             np.full((2, 3), 2.0, np.float32)]
    with g.as_default():
        hook = DumpingDebugHook(root)   # no sample=: the global step is recorded anyway
        with tf1.train.MonitoredSession(hooks=[hook]) as sess:
            for feed in feeds:
                sess.run([loss, train], feed_dict={x: feed})
    return root


def test_global_step_is_recorded_for_every_dumped_run(log_dump, capsys, tmp_path):
    reader = DumpReader(log_dump)
    assert [r.global_step for r in reader.runs] == [0, 1, 2]
    assert [r.name for r in reader.runs_at_step(1)] == [reader.runs[1].name]
    code, doc = run_json(capsys, "ls", "ls", log_dump, "--step", "1")
    assert code == 0 and [r["global_step"] for r in doc["runs"]] == [1] and doc["runs"][0]["index"] == 1
    code, out, _ = run_cli(capsys, "ls", log_dump)
    assert [line.split()[-3] for line in out.splitlines()[1:4]] == ["0", "1", "2"]  # step, date, time
    code, doc = run_json(capsys, "show_run", "show", log_dump, "--step", "2")
    assert code == 0 and doc["run"]["name"] == reader.runs[2].name
    code, _, err = run_cli(capsys, "show", log_dump, "--step", "7")
    assert code == 2 and "no run at global step 7" in err and "0, 1, 2" in err
    # conversion writes it into the core metadata Event's step field
    dirs = convert(log_dump, str(tmp_path / "tfdbg"))
    steps = []
    for d in dirs:
        (core,) = [f for f in os.listdir(d) if f.startswith(P.CORE_METADATA_PREFIX)]
        with open(os.path.join(d, core), "rb") as f:
            steps.append([v for field, wire, v in P.iter_fields(f.read()) if field == 2 and wire == 0])
    assert steps == [[0], [1], [2]]


def test_wrapper_records_the_global_step_and_no_step_is_unknown_not_0(tmp_path, capsys):
    from tfdump_fast.hooks import DumpingDebugWrapperSession

    g, x, loss, train = log_model()
    feed = {x: np.full((2, 3), 3.0, np.float32)}
    with g.as_default(), tf1.Session(graph=g) as sess:
        sess.run(tf1.global_variables_initializer())
        sess.run(train)   # global step 1 before the first dumped run
        wrapped = DumpingDebugWrapperSession(sess, str(tmp_path / "w"))
        for _ in range(2):
            wrapped.run([loss, train], feed_dict=feed)
        wrapped.close()
    assert [r.global_step for r in DumpReader(str(tmp_path / "w")).runs] == [1, 2]
    # a graph without a global step: unknown (the core metadata's 0 is the debug options', not a step)
    g = tf.Graph()
    with g.as_default():
        y = tf.constant([1.0, 2.0], name="y")
        hook = DumpingDebugHook(str(tmp_path / "h"))
        with tf1.train.MonitoredSession(hooks=[hook]) as sess:
            sess.run(y)
    (run,) = DumpReader(str(tmp_path / "h")).runs
    assert run.global_step is None and run.core_metadata["global_step"] == 0
    code, out, _ = run_cli(capsys, "ls", tmp_path / "h")
    assert code == 0 and out.splitlines()[1].split()[-3] == "-"


def test_trace_names_log_as_the_origin(log_dump, capsys):
    code, doc = run_json(capsys, "trace", "trace", log_dump)
    assert code == 1
    t = doc["trace"]
    assert t["run"] == DumpReader(log_dump).runs[1].name and t["global_step"] == 1
    assert t["origin"]["op"] == "Log" and t["origin"]["tensor"] == "features/log:0"
    (inp,) = t["origin"]["inputs"]
    assert inp["tensor"] == "shifted:0" and inp["op"] == "Sub" and inp["bad"] is False
    assert inp["stats"]["min"] == -0.5 and inp["stats"]["nan"] == 0
    assert t["origin"]["record"]["nonfinite"]["count"] == 2
    # from the loss, several layers downstream, upstream to the same origin
    code, doc = run_json(capsys, "trace", "trace", log_dump, "1", "--from", "loss")
    path = doc["trace"]["path"]
    assert [s["op"] for s in path] == ["Mean", "Relu", "MatMul", "Relu", "MatMul", "Relu", "MatMul", "Log"]
    assert doc["trace"]["origin"]["op"] == "Log"
    code, out, _ = run_cli(capsys, "trace", log_dump, "1", "--from", "loss")
    assert code == 1 and "origin: features/log:0 (op Log): its inputs are finite, its output is not" in out
    assert "input shifted:0 (Sub): nan=0 inf=0 min=-0.5" in out
    code, out, _ = run_cli(capsys, "trace", log_dump, "0")
    assert code == 0 and "no tensor with inf or nan in 1 run(s)" in out


def test_node_info_and_fed_inputs_by_graph_name(log_dump, capsys):
    run = DumpReader(log_dump).runs[1]
    info = run.node_info("layer1/MatMul:0")
    assert info.op == "MatMul" and info.kernel_op in ("MatMul", "_MklMatMul") and info.device.endswith("CPU:0")
    assert info.inputs[0] == "layer0/relu:0" and info.consumers == ["layer1/relu"]
    graph = run.graph()
    (arg,) = graph.arg_nodes_of("x")
    assert graph.feed_of(arg) == "x:0" and graph.node("shifted").inputs[0] == arg + ":0"
    code, doc = run_json(capsys, "show_tensor", "show", log_dump, "1", "x")
    assert code == 0 and doc["tensor"] == "x (fed as %s)" % arg
    assert doc["shown"][0]["value"] == [[3.0, 0.5, 2.0], [1.0, 4.0, 5.0]]
    code, doc = run_json(capsys, "show_run", "show", log_dump, "1")
    ops = {k["tensor"]: (k["op"], k["feed"]) for k in doc["watch_keys"]}
    assert ops["features/log:0"] == ("Log", None) and ops[arg + ":0"] == ("_Arg", "x:0")


def test_history_diff_and_plot_across_runs(log_dump, capsys, tmp_path):
    code, doc = run_json(capsys, "history", "history", log_dump, "layer0/MatMul/ReadVariableOp")
    assert code == 0 and [r["global_step"] for r in doc["rows"]] == [0, 1, 2]
    assert all(r["stats"]["min"] == r["stats"]["max"] == 0.5 for r in doc["rows"])
    code, doc = run_json(capsys, "history", "history", log_dump, "features/log:0", "--from-step", "1")
    assert [(r["global_step"], r["stats"]["nan"], r["stats"]["inf"]) for r in doc["rows"]] == [(1, 1, 1), (2, 0, 0)]
    code, doc = run_json(capsys, "diff", "diff", log_dump, "0", "2")
    changed = {c["watch_key"]: c for c in doc["changed"]}
    assert changed["shifted:0:DebugIdentity"]["max_abs_diff"] == 1.0    # 2 - 1 vs 3 - 1
    assert "layer0/MatMul/ReadVariableOp:0:DebugIdentity" not in changed and doc["unchanged"] >= 3
    code, doc = run_json(capsys, "diff", "diff", log_dump, "0", "1")
    assert changed and {c["watch_key"]: c for c in doc["changed"]}["features/log:0:DebugIdentity"][
        "max_abs_diff"] == "inf"
    code, out, _ = run_cli(capsys, "diff", log_dump, "0", "2")
    assert code == 0 and "shifted:0:DebugIdentity" in out and "changed" in out

    png = tmp_path / "log.png"
    code, doc = run_json(capsys, "plot", "plot", log_dump, "1", "features/log:0", "-o", png)
    assert code == 0 and doc["history_runs"] == 3 and os.path.samefile(doc["output"], png)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(str(png))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_plot_without_matplotlib_says_how_to_get_it(log_dump, capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib -> ImportError
    code, _, err = run_cli(capsys, "plot", log_dump, "features/log:0", "-o", tmp_path / "x.png")
    assert code == 2 and "pip install 'tfdump-fast[plot]'" in err and not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------ a store written by hand

def batch_norm_graph() -> bytes:
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [2, 2, 2, 3], name="x")
        tf1.nn.fused_batch_norm(x, tf.ones([3]), tf.zeros([3]), is_training=True, name="bn")
        tf.identity(tf.zeros([3, 4]), name="mlp/hidden")                      # the other dumped nodes
        tf.reduce_mean(tf.zeros([2, 4]), axis=0, name="model/sigma_estimate/Mean")
    graph_def = g.as_graph_def()
    (bn,) = [n for n in graph_def.node if n.op == "FusedBatchNormV3"]
    for n in graph_def.node:
        n.device = "/job:localhost/replica:0/task:0/device:CPU:0"
    return graph_def.SerializeToString(), bn.name


@pytest.fixture
def store(tmp_path):
    root = str(tmp_path / "store")
    graph, bn = batch_norm_graph()
    with DumpWriter(root) as w:
        for step in range(3):
            run = w.begin_run(capture=False, metadata={"global_step": 10 + step})
            w.write(np.arange(12, dtype=np.float32).reshape(3, 4) * (step + 1), "mlp/hidden", run=run)
            w.write(np.array([1.0, np.nan, np.inf, -np.inf], np.float32), "model/sigma_estimate/Mean", run=run)
            w.write(np.full(3, np.nan, np.float32), bn, output_slot=5, run=run)   # oneDNN scratch
            w.write(np.ones(3, np.float32), bn, output_slot=0, run=run)
            w.end_run(run, attachments=[graph])
    return root, bn


def test_show_slices_lists_nonfinite_elements_and_finds_names(store, capsys):
    root, _ = store
    code, doc = run_json(capsys, "show_tensor", "show", root, "0", "mlp/hidden:0[1]")
    assert code == 0 and doc["shown"][0]["value"] == [4.0, 5.0, 6.0, 7.0] and doc["slice"] == "1"
    code, doc = run_json(capsys, "show_tensor", "show", root, "0", "mlp/hidden:0[1:3, 0]")
    assert doc["shown"][0]["value"] == [4.0, 8.0] and doc["shown"][0]["stats"]["max"] == 8.0
    code, out, _ = run_cli(capsys, "show", root, "mlp/hidden:0[::-1, -1]")   # a lone tensor: last run
    assert code == 0 and "[33., 21.,  9.]" in out and "slice shape [3]" in out
    code, out, _ = run_cli(capsys, "show", root, "0", "sigma_estimate")     # a name scope
    assert code == 0 and "model/sigma_estimate/Mean:0:DebugIdentity" in out
    assert "non-finite elements: 3; first at [1]=nan, [2]=inf, [3]=-inf" in out
    assert "nan=1 inf=2 min=1 max=1 mean=1 std=0" in out
    code, doc = run_json(capsys, "show_tensor", "show", root, "0", "sig.*Me", "--regex")
    assert doc["tensor"] == "model/sigma_estimate/Mean:0"
    assert doc["shown"][0]["nonfinite"]["first"] == [{"index": [1], "value": "nan"}, {"index": [2], "value": "inf"},
                                                     {"index": [3], "value": "-inf"}]
    code, _, err = run_cli(capsys, "show", root, "0", "mlp/hiden")
    assert code == 2 and "did you mean mlp/hidden" in err
    code, _, err = run_cli(capsys, "show", root, "0", ".", "--regex")
    assert code == 2 and "tensors of run" in err and "name one exactly" in err
    code, _, err = run_cli(capsys, "show", root, "0", "mlp/hidden:0[7]")
    assert code == 2 and "does not fit shape [3, 4]" in err
    code, _, err = run_cli(capsys, "show", root, "0", "mlp/hidden:0[__import__('os')]")
    assert code == 2 and "cannot read the index" in err


def test_inf_nan_search_skips_batch_norm_scratch_by_default(store, capsys):
    root, bn = store
    run = DumpReader(root).runs[0]
    assert [r.watch_key for r in run.find(__import__("tfdump_fast").has_inf_or_nan)] == [
        "model/sigma_estimate/Mean:0:DebugIdentity"]
    assert [r.tensor_name for r in run.find(__import__("tfdump_fast").has_inf_or_nan, include_scratch=True)] == [
        "model/sigma_estimate/Mean:0", bn + ":5"]
    # the Python API keeps tfdbg's exclude semantics (node names) unless told
    find = __import__("tfdump_fast").has_inf_or_nan
    assert [r.tensor_name for r in run.find(find, include_scratch=True, exclude="FusedBatchNormV3")][-1] == bn + ":5"
    assert [r.tensor_name for r in run.find(find, include_scratch=True, exclude="FusedBatchNormV3",
                                            exclude_by=("node", "op"))] == ["model/sigma_estimate/Mean:0"]
    # StoreDumpDir is tfdbg's DebugDumpDir: its find looks at every tensor, as tfdbg's does
    from tensorflow.python.debug.lib import debug_data

    from tfdump_fast.dumpdir import StoreDumpDir

    found = StoreDumpDir(root, run=0).find(debug_data.has_inf_or_nan)
    assert sorted(d.watch_key for d in found) == sorted([bn + ":5:DebugIdentity",
                                                         "model/sigma_estimate/Mean:0:DebugIdentity"])
    code, doc = run_json(capsys, "find", "find", root, "0")
    assert code == 1 and [h["watch_key"] for h in doc["runs"][0]["hits"]] == [
        "model/sigma_estimate/Mean:0:DebugIdentity"]
    code, doc = run_json(capsys, "find", "find", root, "0", "--include-scratch", "--exclude", "^model/")
    assert [h["watch_key"] for h in doc["runs"][0]["hits"]] == [bn + ":5:DebugIdentity"]
    # --exclude by node:slot and by op type
    for pattern in (bn + ":5", "FusedBatchNormV3"):
        code, doc = run_json(capsys, "find", "find", root, "0", "--include-scratch", "--exclude", "^model/",
                             "--exclude", pattern)
        assert code == 0 and doc["found"] is False and doc["runs"] == []
    code, doc = run_json(capsys, "trace", "trace", root)
    assert doc["trace"]["first_bad"]["tensor"] == "model/sigma_estimate/Mean:0"


def test_every_command_prints_json_of_its_schema(store, capsys, tmp_path):
    root, _ = store
    assert run_json(capsys, "ls", "ls", root)[1]["runs"][2]["global_step"] == 12
    assert run_json(capsys, "show_run", "show", root, "1")[1]["run"]["global_step"] == 11
    assert run_json(capsys, "show_tensor", "show", root, "mlp/hidden", "--step", "11", "--all")[1]["executions"] == 1
    assert run_json(capsys, "find", "find", root)[1]["found"] is True
    assert run_json(capsys, "trace", "trace", root)[0] == 1
    assert len(run_json(capsys, "history", "history", root, "mlp/hidden")[1]["rows"]) == 3
    assert run_json(capsys, "diff", "diff", root, "0", "1")[1]["changed"][0]["max_abs_diff"] == 11.0
    assert run_json(capsys, "plot", "plot", root, "mlp/hidden", "-o", tmp_path / "h.png")[0] == 0
    conv = run_json(capsys, "convert", "convert", root, tmp_path / "c", "--no-progress")[1]
    assert len(conv["run_dirs"]) == 3
    assert len(run_json(capsys, "import", "import", tmp_path / "c", tmp_path / "i", "--no-progress")[1]["runs"]) == 3
    assert run_json(capsys, "stats", "stats", root, "--top", "2")[1]["by_op_type"][0]["op"] == "Identity"  # mlp/hidden, the largest
    assert run_json(capsys, "verify", "verify", root, "--no-progress")[1]["ok"] is True


def test_cli_conventions(store, capsys, tmp_path):
    root, _ = store
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("tfdump-fast 0.")
    for argv, text in ((["stats", root, "--top", "0"], "--top must be a positive integer, not 0"),
                       (["diff", root, "0", "1", "--top", "-3"], "--top must be a positive integer, not -3"),
                       (["show", root, "0", "mlp/hidden", "--max-elements", "-1"],
                        "--max-elements must be a positive integer, not -1"),
                       (["find", root, "--first", "-1"], "--first must be an integer >= 0, not -1")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2 and text in capsys.readouterr().err
    run_cli(capsys, "convert", root, tmp_path / "c", "--no-progress")
    code, _, err = run_cli(capsys, "convert", root, tmp_path / "c", "--no-progress")
    assert code == 2 and "--overwrite" in err and "overwrite=True" not in err
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "tfdump_fast", "ls", root, "--json"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    jsonschema.validate(json.loads(proc.stdout), SCHEMAS["ls"])


def test_low_level_runs_take_the_step_of_their_core_metadata(tmp_path):
    """A run written through the low-level path (no hook metadata) takes the
    global step its core metadata names, 0 included; -1 (unset) is unknown."""
    with DumpWriter(str(tmp_path / "d")) as w:
        for step in (0, 5, -1):
            run = w.begin_run(capture=False)
            w.write(np.zeros(2, np.float32), "t", run=run)
            w.end_run(run, metadata={"core_metadata": {"global_step": step, "session_run_index": 0,
                                                       "executor_step_index": 0, "input_names": [],
                                                       "output_names": [], "target_nodes": []}})
    assert [r.global_step for r in DumpReader(str(tmp_path / "d")).runs] == [0, 5, None]
