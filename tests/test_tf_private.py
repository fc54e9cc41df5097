"""TensorFlow private API the hook layer relies on, checked against the installed TensorFlow.

Every function of ``tfdump_fast._tf_private`` is exercised for the behaviour
the hook and the wrapper need, not just for existing. When a TensorFlow
upgrade breaks one of these, the failure names the private it relies on and
what changed: fix ``_tf_private`` (and its docstring) before anything else.
"""

import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tf1 = tf.compat.v1

from tensorflow.core.protobuf import config_pb2  # noqa: E402  (CallableOptions has no public name)
from tensorflow.python.training import basic_session_run_hooks  # noqa: E402

from tfdump_fast import _tf_private  # noqa: E402
from tfdump_fast.published import RAM_ROOT, PublishDirectory, add_publish_watch  # noqa: E402

TF = f"TensorFlow {tf.__version__}"


def small_graph():
    g = tf.Graph()
    with g.as_default():
        a = tf1.placeholder(tf.float32, [], name="a")
        b = tf.add(a, 1.0, name="b")
        c = tf.multiply(b, 2.0, name="c")
        noop = tf.no_op(name="noop")
        sp = tf1.sparse_placeholder(tf.float32, name="sp")
        tf1.train.get_or_create_global_step()
    return g, a, b, c, noop, sp


# ---------------------------------------------------------------- Session.run's view


def test_session_feeds_flattens_and_expands_like_session_run():
    """Relies on nest.flatten_dict_items and session._REGISTERED_EXPANSIONS."""
    g, a, b, _, _, sp = small_graph()
    value = tf1.SparseTensorValue(indices=[[0, 0]], values=[1.0], dense_shape=[2, 2])
    pairs = _tf_private.session_feeds({sp: value, (a, b): (1.0, 2.0), "c:0": 3.0})
    names = sorted(k.name if hasattr(k, "name") else k for k, _ in pairs)
    assert names == sorted(["sp/indices:0", "sp/values:0", "sp/shape:0", "a:0", "b:0", "c:0"]), (
        f"{TF} no longer flattens nested feed keys and expands a SparseTensor feed into its three "
        f"component tensors through _REGISTERED_EXPANSIONS: got {names}")
    by_name = {(k.name if hasattr(k, "name") else k): v for k, v in pairs}
    assert by_name["a:0"] == 1.0 and by_name["b:0"] == 2.0 and by_name["c:0"] == 3.0
    assert np.array_equal(by_name["sp/values:0"], [1.0])


def test_fetch_and_target_names_are_what_session_run_fetches():
    """Relies on session._FetchHandler(graph, fetches, feeds).fetches() / .targets()."""
    g, a, b, c, noop, _ = small_graph()
    fetches = {"x": b, "y": [c, noop, b], "z": ("c:0",)}
    outputs, targets = _tf_private.fetch_and_target_names(g, fetches, {a.ref(): 1.0})
    assert sorted(set(outputs)) == ["b:0", "c:0"] and targets == ["noop"], (
        f"{TF}: _FetchHandler no longer lists a fetch structure's tensors and target ops: "
        f"{outputs}, {targets}")
    other = tf.Graph()
    with other.as_default():
        foreign = tf.constant(1.0, name="foreign")
    with pytest.raises(Exception):
        _tf_private.fetch_and_target_names(g, foreign, {})  # Session.run would reject it too


def test_op_def_lists_debug_op_attributes():
    """Relies on op_def_registry.get(name) -> OpDef or None."""
    debug_identity = _tf_private.op_def("DebugIdentity")
    assert debug_identity is not None, f"{TF}: op_def_registry.get('DebugIdentity') found nothing"
    attrs = {a.name for a in debug_identity.attr}
    assert {"device_name", "tensor_name", "debug_urls", "gated_grpc"} <= attrs, attrs
    summary = _tf_private.op_def("DebugNumericSummary")
    assert "mute_if_healthy" in {a.name for a in summary.attr}
    assert _tf_private.op_def("NoSuchOpAnywhere") is None


# ---------------------------------------------------------------- sessions


def test_is_plain_session():
    """Relies on Session and InteractiveSession deriving from session.BaseSession."""
    g = small_graph()[0]
    with tf1.Session(graph=g) as sess:
        assert _tf_private.is_plain_session(sess)
    with g.as_default():
        interactive = tf1.InteractiveSession(graph=g)
        try:
            assert _tf_private.is_plain_session(interactive)
        finally:
            interactive.close()
        monitored = tf1.train.MonitoredSession()
        try:
            assert not _tf_private.is_plain_session(monitored)
        finally:
            monitored.close()
    assert not _tf_private.is_plain_session(object())


def test_raw_session_of_a_monitored_session_runs_undebugged():
    """Relies on _MonitoredSession._tf_sess()."""
    g, a, b, *_ = small_graph()
    with g.as_default():
        monitored = tf1.train.MonitoredSession()
        raw = _tf_private.raw_session(monitored)
        assert _tf_private.is_plain_session(raw), (
            f"{TF}: MonitoredSession._tf_sess() no longer returns the tf.compat.v1.Session: {raw!r}")
        assert raw.run(b, feed_dict={a: 2.0}) == 3.0
        monitored.close()
        assert _tf_private.raw_session(monitored) is None
    with tf1.Session(graph=g) as sess:
        assert _tf_private.raw_session(sess) is None


def test_make_callable_from_options_runs_with_debug_run_options(tmp_path):
    """Relies on BaseSession._make_callable_from_options(CallableOptions); the
    wrapper passes run_metadata= and fixes RunOptions (debug watches, partition
    graphs) in the options."""
    g, a, b, c, *_ = small_graph()
    with tf1.Session(graph=g) as sess:
        opts = config_pb2.CallableOptions(feed=["a:0"], fetch=["c:0"])
        opts.run_options.output_partition_graphs = True
        run = _tf_private.make_callable_from_options(sess, opts)
        run_metadata = tf1.RunMetadata()
        assert run(np.float32(1.0), run_metadata=run_metadata) == [4.0], (
            f"{TF}: _make_callable_from_options no longer runs a CallableOptions")
        assert len(run_metadata.partition_graphs) >= 1, (
            f"{TF}: a callable's fixed RunOptions no longer fill run_metadata")
    with g.as_default():
        monitored = tf1.train.MonitoredSession()
        try:
            with pytest.raises(AttributeError):
                _tf_private.make_callable_from_options(monitored, opts)
        finally:
            monitored.close()


def test_default_session_makes_any_object_the_default():
    """Relies on framework.stack.default_session (what Session.as_default returns)."""
    g = small_graph()[0]

    class Wrapper:
        graph = g

    wrapper = Wrapper()
    with g.as_default():
        with _tf_private.default_session(wrapper):
            assert tf1.get_default_session() is wrapper, (
                f"{TF}: stack.default_session no longer sets the default session")
        assert tf1.get_default_session() is not wrapper


# ---------------------------------------------------------------- MonitoredSession internals


class _Feeding(tf1.train.SessionRunHook):
    """Another hook: fetches c and feeds a, as LoggingTensorHook / FeedFnHook do."""

    def __init__(self, c, a):
        self.c, self.a = c, a

    def before_run(self, run_context):
        return tf1.train.SessionRunArgs(self.c, feed_dict={self.a: 5.0})


class _Probe(tf1.train.SessionRunHook):
    """Calls the frame readers from before_run / after_run, directly and one call deeper."""

    def __init__(self):
        self.seen = {}

    def before_run(self, run_context):
        self.seen["direct"] = _tf_private.hooked_session_calling_before_run()
        self.seen["nested"] = (lambda: _tf_private.hooked_session_calling_before_run())()
        return None

    def after_run(self, run_context, run_values):
        self.seen["args"] = _tf_private.hooked_run_args(run_context)
        self.seen["other_context"] = _tf_private.hooked_run_args(object())


def test_frame_readers_find_what_monitored_session_runs():
    """Relies on _HookedSession._call_hook_before_run (its `self`, calling
    before_run) and _HookedSession.run's locals run_context, actual_fetches
    and feed_dict (calling after_run)."""
    g, a, b, c, *_ = small_graph()
    probe = _Probe()
    feeding = _Feeding(c, a)
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[probe, feeding]) as sess:
            assert sess.run(b) == 6.0  # a fed by the other hook
            hooks = _tf_private.monitored_session_hooks(sess)
            assert probe in hooks and feeding in hooks, (
                f"{TF}: MonitoredSession no longer keeps its hooks in _hooks: {hooks!r}")
    owner = probe.seen["direct"]
    assert owner is not None and owner is probe.seen["nested"], (
        f"{TF}: _HookedSession._call_hook_before_run no longer calls before_run")
    owner_hooks = _tf_private.monitored_session_hooks(owner)
    assert owner_hooks is not None and probe in owner_hooks and feeding in owner_hooks, (
        f"{TF}: the _HookedSession calling before_run no longer has the hook list in _hooks")
    args = probe.seen["args"]
    assert args is not None, (
        f"{TF}: _HookedSession.run no longer has run_context and actual_fetches in its locals")
    fetches, feed_dict = args
    assert fetches["caller"] is b and fetches[feeding] is c, (
        f"{TF}: actual_fetches no longer maps 'caller' and each hook to its fetches: {fetches!r}")
    assert feed_dict is not None and feed_dict[a] == 5.0, (
        f"{TF}: _HookedSession.run's feed_dict no longer holds the hooks' merged feeds: {feed_dict!r}")
    assert probe.seen["other_context"] is None
    # Outside MonitoredSession: nothing, never an error.
    assert _tf_private.hooked_session_calling_before_run() is None
    assert _tf_private.hooked_run_args(object()) is None
    assert _tf_private.monitored_session_hooks(object()) is None


def test_constant_fetch_hooks_are_tensorflow_hooks():
    """The names in CONSTANT_FETCH_HOOKS must still name TF's built-in hooks."""
    for name in _tf_private.CONSTANT_FETCH_HOOKS:
        cls = getattr(basic_session_run_hooks, name, None)
        assert cls is not None and issubclass(cls, tf1.train.SessionRunHook), (
            f"{TF}: basic_session_run_hooks has no hook class {name!r} any more; re-read which "
            "built-in hooks fetch the same things every run and update CONSTANT_FETCH_HOOKS")
        assert cls.__module__.startswith("tensorflow.")


def test_fetches_constantly(tmp_path):
    """Relies on SummarySaverHook._get_summary_op() being None without summaries."""
    assert _tf_private.fetches_constantly(tf1.train.SessionRunHook())
    assert _tf_private.fetches_constantly(tf1.train.StopAtStepHook(last_step=10))

    class UserHook(tf1.train.SessionRunHook):
        pass

    assert not _tf_private.fetches_constantly(UserHook())
    g, a, b, *_ = small_graph()
    with g.as_default():
        assert not _tf_private.fetches_constantly(tf1.train.LoggingTensorHook([b], every_n_iter=1))
        scaffold = tf1.train.Scaffold()
        scaffold.finalize()
        quiet = tf1.train.SummarySaverHook(save_steps=1, output_dir=str(tmp_path / "q"), scaffold=scaffold)
        assert _tf_private.fetches_constantly(quiet), (
            f"{TF}: SummarySaverHook._get_summary_op() is no longer None when the graph has no summaries")
    g, a, b, *_ = small_graph()
    with g.as_default():
        tf1.summary.scalar("b", b)
        scaffold = tf1.train.Scaffold()
        scaffold.finalize()
        loud = tf1.train.SummarySaverHook(save_steps=1, output_dir=str(tmp_path / "l"), scaffold=scaffold)
        assert not _tf_private.fetches_constantly(loud)


# ---------------------------------------------------------------- what TF publishes


def test_tf_publishes_graphs_and_core_metadata_for_a_watch_of_no_node_into_ram():
    """Not a Python private, but TensorFlow behaviour the hook relies on (see
    tfdump_fast.published): a file:// watch of a node no graph has makes TF
    publish a new executor's partition graphs and each run's core metadata,
    and a file://ram:// URL keeps them in TF's in-memory file system (no
    disk: nothing there can fail for want of space or permission)."""
    g, a, b, c, *_ = small_graph()
    published = PublishDirectory("test", lambda *args: pytest.fail(f"logged {args}"))
    publish_dir = published.for_url("memcbk://tfdump_slot_0")
    assert publish_dir.startswith("ram://") and tf.io.gfile.isdir(publish_dir), (
        f"{TF} has no usable in-memory ram:// file system")
    options = tf1.RunOptions()
    add_publish_watch(options.debug_options, publish_dir)
    with tf1.Session(graph=g) as sess:
        assert sess.run(c, feed_dict={a: 1.0}, options=options) == 4.0
        first_core, first_graphs = PublishDirectory.take(publish_dir)
        assert sess.run(c, feed_dict={a: 1.0}, options=options) == 4.0
        second_core, second_graphs = PublishDirectory.take(publish_dir)
    assert first_core is not None and first_graphs, (
        f"{TF} published no core metadata or graphs to the file://ram:// URL of a watch of no node")
    graph_def = tf1.GraphDef.FromString(first_graphs[0])
    assert "c" in {n.name for n in graph_def.node}
    assert not any(n.op.startswith("Debug") for n in graph_def.node)  # no debug op inserted
    assert first_core["executor_step_index"] == 0 and second_core["executor_step_index"] == 1
    assert second_core["session_run_index"] > first_core["session_run_index"]
    assert first_core["output_names"] == ["c:0"] and first_core["input_names"] == ["a:0"]
    assert second_graphs == []  # graphs only when the executor is built
    # take() removed every file: only directory entries remain in memory.
    assert [f for _, _, files in tf.io.gfile.walk(publish_dir) for f in files] == []
    published.remove()
    assert not tf.io.gfile.exists(published.root)


def test_tf_recreates_a_removed_ram_publish_directory_below_the_kept_root():
    """ram:// has no real directories: TF's recursive directory creation
    stops only at one that exists, and never ends (a stack overflow) when
    not even the URL's top level exists. The publish root (RAM_ROOT) is kept,
    so a slot directory removed under a running session (close() at exit
    while a daemon thread still trains) is recreated by TF instead."""
    g, a, b, c, *_ = small_graph()
    published = PublishDirectory("test", lambda *args: pytest.fail(f"logged {args}"))
    publish_dir = published.for_url("memcbk://tfdump_slot_1")
    options = tf1.RunOptions()
    add_publish_watch(options.debug_options, publish_dir)
    with tf1.Session(graph=g) as sess:
        sess.run(c, feed_dict={a: 1.0}, options=options)
        published.remove()
        assert tf.io.gfile.isdir(RAM_ROOT) and not tf.io.gfile.exists(publish_dir)
        assert sess.run(c, feed_dict={a: 1.0}, options=options) == 4.0
        core, _ = PublishDirectory.take(publish_dir)
    assert core is not None and core["executor_step_index"] == 1
    tf.io.gfile.rmtree(published.root)


# ---------------------------------------------------------------- StoreDumpDir's base classes


def test_debug_dump_dir_privates_that_store_dump_dir_relies_on_exist():
    """StoreDumpDir subclasses tfdbg's DebugDumpDir and DebugTensorDatum: it overrides their
    private loading steps and fills their private state. A real DebugDumpDir of a real tfdbg
    dump must still have every one of those names."""
    import glob

    from tensorflow.python.debug.lib import debug_data

    from tfdump_fast import dumpdir

    golden = os.path.join(os.path.dirname(__file__), "data", "golden_v1", "tfdbg")
    run_dir = sorted(glob.glob(os.path.join(golden, "run_*")))[0]
    real = debug_data.DebugDumpDir(run_dir)
    assert real.dumped_tensor_data, f"{TF}: DebugDumpDir read no tensors from the golden tfdbg dump {run_dir}"
    missing = [n for n in dumpdir.TFDBG_DUMP_DIR_PRIVATES if not hasattr(real, n)]
    assert not missing, (
        f"{TF}'s DebugDumpDir no longer has {missing}, which tfdump_fast.dumpdir.StoreDumpDir overrides or "
        "fills: update StoreDumpDir to the new loading steps")
    datum = real.dumped_tensor_data[0]
    missing = [n for n in dumpdir.TFDBG_TENSOR_DATUM_PRIVATES if not hasattr(datum, n)]
    assert not missing, (
        f"{TF}'s DebugTensorDatum no longer has {missing}, which tfdump_fast.dumpdir.StoreTensorDatum "
        "sets: update StoreTensorDatum")
    # And the subclass built from our store answers like the base class on the same tensors.
    store = dumpdir.StoreDumpDir(os.path.join(os.path.dirname(__file__), "data", "golden_v1", "hook"))
    assert store.dumped_tensor_data and all(isinstance(d, debug_data.DebugTensorDatum)
                                            for d in store.dumped_tensor_data)
    for d in store.dumped_tensor_data[:20]:
        assert d in store.watch_key_to_data(d.watch_key, device_name=d.device_name)


def test_on_coordinator_stop_runs_in_the_thread_closing_a_monitored_session_after_a_raise():
    """The flight recorder's "error" trigger: MonitoredSession.__exit__ after a
    raising run calls no after_run and no end(), but closes through the
    coordinator's request_stop, in the closing thread."""
    import threading

    calls = []

    class Hook(tf1.train.SessionRunHook):
        def after_create_session(self, session, coord):
            assert _tf_private.on_coordinator_stop(coord, lambda: calls.append(threading.get_ident())), TF

    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [], name="x")
        check = tf.debugging.assert_positive(x)
    with pytest.raises(tf.errors.InvalidArgumentError):
        with g.as_default(), tf1.train.MonitoredSession(hooks=[Hook()]) as sess:
            sess.run(check, feed_dict={x: -1.0})
    assert calls and calls[0] == threading.get_ident(), \
        f"{TF}: closing a MonitoredSession no longer calls coord.request_stop() in the closing thread"


# ---------------------------------------------------------------- TF2 capture (tfdump_fast.tf2)

# These need eager execution, which other test files turn off for the whole
# pytest process: they run in one fresh pytest process (see test_tf2.py).
from test_tf2 import IN_EAGER_CHILD, eager_child, run_eager_tests  # noqa: E402

TF2_EAGER_TESTS = ("test_op_callbacks_see_traced_graph_ops_and_eager_ops_on_this_thread",
                   "test_concrete_function_callbacks_get_each_traced_function",
                   "test_executing_eagerly_outside_functions_is_false_while_building_a_tf1_graph",
                   "test_in_xla_context_tells_jit_compiled_traces",
                   "test_add_graph_op_and_run_eager_op_build_and_run_a_registered_op")


@pytest.mark.skipif(IN_EAGER_CHILD, reason="this is the fresh process")
def test_tf2_privates_in_a_fresh_eager_process():
    run_eager_tests(os.path.abspath(__file__), TF2_EAGER_TESTS)


def test_op_callback_skip_ops_are_tfdbg_v2s_control_flow_and_call_ops():
    skip = _tf_private.op_callback_skip_ops()
    assert {"Identity", "While", "If", "StatefulPartitionedCall"} <= skip
    assert all(isinstance(t, str) for t in skip)


@eager_child
def test_op_callbacks_see_traced_graph_ops_and_eager_ops_on_this_thread():
    seen = []

    def cb(op_type, inputs, attrs, outputs, op_name=None, graph=None):
        seen.append((op_type if isinstance(op_type, str) else op_type.decode(), op_name, graph))

    @tf.function
    def f(x):
        return tf.sin(x)

    _tf_private.add_op_callback(cb)
    try:
        f(tf.constant([1.0]))
        tf.exp(tf.constant(1.0))
    finally:
        _tf_private.remove_op_callback(cb)
    _tf_private.remove_op_callback(cb)   # absent: no error
    graph_ops = [(t, n) for t, n, g in seen if g is not None]
    assert ("Sin", "Sin") in graph_ops
    eager = [t for t, n, g in seen if g is None]
    assert any(t.startswith("__inference_f_") for t in eager) and "Exp" in eager


@eager_child
def test_concrete_function_callbacks_get_each_traced_function():
    got = []
    callbacks = _tf_private.concrete_function_callbacks()
    callbacks.append(got.append)
    try:
        @tf.function
        def g(x):
            return x + 1.0

        g(tf.constant(1.0))
    finally:
        callbacks.remove(got.append)
    assert len(got) == 1 and hasattr(got[0], "graph")
    name = got[0].name
    assert (name.decode() if isinstance(name, bytes) else name).startswith("__inference_g_")


@eager_child
def test_executing_eagerly_outside_functions_is_false_while_building_a_tf1_graph():
    assert _tf_private.executing_eagerly_outside_functions() is True
    with tf.Graph().as_default():
        assert _tf_private.executing_eagerly_outside_functions() is False


@eager_child
def test_in_xla_context_tells_jit_compiled_traces():
    found = {}

    def cb(op_type, inputs, attrs, outputs, op_name=None, graph=None):
        if graph is not None:
            found.setdefault(graph.name, _tf_private.in_xla_context(graph))

    @tf.function(jit_compile=True)
    def xla_f(x):
        return x * 2.0

    @tf.function
    def plain_f(x):
        return x * 2.0

    _tf_private.add_op_callback(cb)
    try:
        xla_f(tf.constant(1.0))
        plain_f(tf.constant(1.0))
    finally:
        _tf_private.remove_op_callback(cb)
    assert found == {"xla_f": True, "plain_f": False}


@eager_child
def test_add_graph_op_and_run_eager_op_build_and_run_a_registered_op():
    from tfdump_fast.bridge import get_bridge

    get_bridge()   # registers TfdumpCaptureV2

    @tf.function
    def f(x):
        y = x * 2.0
        op = _tf_private.add_graph_op("TfdumpCaptureV2", "cap", y, context_id="t", op_name="mul",
                                      output_slot=0, tensor_debug_mode=7, tensor_id=-1)
        assert op.type == "TfdumpCaptureV2" and op.get_attr("op_name") == b"mul"
        return op.outputs[0]

    assert f(tf.constant(3.0)).numpy() == 6.0
    out = _tf_private.run_eager_op("TfdumpCaptureV2", tf.constant([1, 2]), (
        "context_id", "eager", "op_name", "x", "output_slot", 0, "tensor_debug_mode", 7, "tensor_id", -1))
    assert out[0].numpy().tolist() == [1, 2]
