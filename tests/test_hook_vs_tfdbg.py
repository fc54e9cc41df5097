"""Side by side: tfdbg's own DumpingDebugHook / DumpingDebugWrapperSession and ours.

The same graph runs once under tfdbg (file:// dumps) and once under
tfdump-fast; our store is converted to tfdbg's layout with
``tfdump_fast.convert`` and both are opened with tfdbg's ``DebugDumpDir``,
the oracle. They must show the same runs, the same watch keys (with the same
number of dumps each: while-loop iterations) and bit-identical values.
"""

import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tf1 = tf.compat.v1

from tensorflow.python import debug as tf_debug  # noqa: E402
from tensorflow.python.debug.lib import debug_data  # noqa: E402

from tfdump_fast.conversion import convert  # noqa: E402
from tfdump_fast.hooks import DumpingDebugHook, DumpingDebugWrapperSession  # noqa: E402


def build_graph():
    """Deterministic graph touching every kind of tensor tfdbg dumps."""
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [None, 3], name="x")
        w = tf1.get_variable("w", initializer=tf.constant([[1.0, -1.0], [0.5, 2.0], [0.0, 1.0]]),
                             use_resource=True)
        v = tf1.get_variable("v", initializer=tf.constant([1.0, -2.0]), use_resource=False)  # ref
        y = tf.matmul(x, w, name="y")
        loop = tf.while_loop(lambda i, a: i < 3, lambda i, a: (i + 1, a * 2.0 + 1.0),
                             [tf.constant(0, name="i0"), y], name="loop")
        branch = tf.cond(tf.reduce_sum(x) > 0, lambda: tf.identity(v) * 2.0, lambda: v - 1.0,
                         name="branch")
        text = tf.strings.join([tf.constant(["a", "bc"]), tf.strings.as_string(tf.reduce_sum(x))],
                               name="text")
        special = tf.math.log(tf.abs(y) - 2.0, name="special")  # -inf and nan
        counts = tf.cast(tf.shape(x), tf.int64, name="counts")
        gs = tf1.train.get_or_create_global_step()
        train = tf1.assign_add(gs, 1, name="train")
        init = tf1.global_variables_initializer()
    fetches = [loop, branch, text, special, counts, train]
    return g, x, fetches, init


FEEDS = [[[1.0, 2.0, 3.0]], [[-1.0, 0.5, -3.0], [2.0, 2.0, 2.0]]]


def tensors_by_key(dump_dir):
    dump = debug_data.DebugDumpDir(dump_dir)  # validates dumps against partition graphs
    out = {}
    for datum in dump.dumped_tensor_data:
        out.setdefault(datum.watch_key, []).append(datum.get_tensor())
    return dump, out


def same_value(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.dtype == object:
            return a.tolist() == b.tolist()
        return a.tobytes() == b.tobytes()  # bit-identical, NaN included
    if isinstance(a, debug_data.InconvertibleTensorProto):
        return (isinstance(b, debug_data.InconvertibleTensorProto)
                and a.initialized == b.initialized and str(a) == str(b))
    return type(a) is type(b) and a == b


def assert_same_dumps(tfdbg_root, ours_root, tmp_path):
    tfdbg_runs = sorted(os.path.join(tfdbg_root, d) for d in os.listdir(tfdbg_root))
    ours_runs = convert(ours_root, str(tmp_path / "converted"))
    assert len(ours_runs) == len(tfdbg_runs) > 0
    for theirs, ours in zip(tfdbg_runs, ours_runs):
        dump_a, a = tensors_by_key(theirs)
        dump_b, b = tensors_by_key(ours)
        assert a and sorted(a) == sorted(b)
        for key in a:
            assert len(a[key]) == len(b[key]), key
            for va, vb in zip(a[key], b[key]):
                assert same_value(va, vb), (key, va, vb)
        assert dump_a.run_fetches_info == dump_b.run_fetches_info
        assert dump_a.run_feed_keys_info == dump_b.run_feed_keys_info
        core_a, core_b = dump_a.core_metadata, dump_b.core_metadata
        assert (core_a.global_step, core_a.input_names, core_a.output_names, core_a.target_nodes) == \
            (core_b.global_step, core_b.input_names, core_b.output_names, core_b.target_nodes)
    return ours_runs


def run_hook(hook):
    g, x, fetches, _ = build_graph()
    with g.as_default():
        with tf1.train.MonitoredSession(hooks=[hook]) as sess:
            return [sess.run(fetches, feed_dict={x: feed}) for feed in FEEDS]


@pytest.mark.parametrize("watch_fn", [
    None,
    lambda fetches, feeds: tf_debug.WatchOptions(
        debug_ops=["DebugIdentity", "DebugNumericSummary", "DebugNanCount"],
        tensor_dtype_regex_allowlist="^(float|int)",
        tolerate_debug_op_creation_failures=True),
    lambda fetches, feeds: tf_debug.WatchOptions(node_name_regex_allowlist="^(loop|branch)/",
                                                 op_type_regex_allowlist="(Mul|Add|Identity.*)"),
], ids=["everything", "several-ops", "allowlists"])
def test_hook_matches_tfdbg(tmp_path, watch_fn):
    theirs = run_hook(tf_debug.DumpingDebugHook(str(tmp_path / "tfdbg"), watch_fn=watch_fn))
    ours = run_hook(DumpingDebugHook(str(tmp_path / "ours"), watch_fn=watch_fn))
    assert all(same_value(np.asarray(a), np.asarray(b))
               for ra, rb in zip(theirs, ours) for a, b in zip(ra[1:5], rb[1:5]))
    assert_same_dumps(str(tmp_path / "tfdbg"), str(tmp_path / "ours"), tmp_path)


def run_wrapper(make):
    g, x, fetches, init = build_graph()
    sess = tf1.Session(graph=g)
    wrapped = make(sess)
    wrapped.run(init)  # ref variable read before its Assign: uninitialized tensors
    for feed in FEEDS:
        wrapped.run(fetches, feed_dict={x: feed})
    return wrapped


def test_wrapper_matches_tfdbg_including_uninitialized(tmp_path):
    run_wrapper(lambda s: tf_debug.DumpingDebugWrapperSession(s, str(tmp_path / "tfdbg")))
    ours = run_wrapper(lambda s: DumpingDebugWrapperSession(s, str(tmp_path / "ours")))
    ours.flush()
    dirs = assert_same_dumps(str(tmp_path / "tfdbg"), str(tmp_path / "ours"), tmp_path)
    dump, tensors = tensors_by_key(dirs[0])
    uninitialized = [k for k, vals in tensors.items()
                     if any(isinstance(v, debug_data.InconvertibleTensorProto) and not v.initialized
                            for v in vals)]
    assert uninitialized  # the init run saw the ref variable before its assignment
    ours.close()
