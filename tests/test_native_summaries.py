"""Summary debug ops computed off the step (tfdump_fast.summaries, csrc/bridge/summaries.cc).

Oracles are TF's own kernels: DebugNumericSummary, DebugNanCount and
DebugNumericSummaryV2 run directly in a session on the same values, and
tfdbg's DumpingDebugWrapperSession (file:// dumps) on the same graph.
"""

import os
import shutil

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tf1 = tf.compat.v1

from tensorflow.python import debug as tf_debug  # noqa: E402
from tensorflow.python.debug.lib import debug_data  # noqa: E402
from tensorflow.python.ops import gen_debug_ops  # noqa: E402

from tfdump_fast import DumpReader, convert, has_inf_or_nan  # noqa: E402
from tfdump_fast.errors import TfdumpUsageError  # noqa: E402
from tfdump_fast.hooks import DumpingDebugWrapperSession  # noqa: E402
from tfdump_fast.summaries import summary_has_inf_or_nan  # noqa: E402

HEALTH = {"CURT_HEALTH": 2, "CONCISE_HEALTH": 3, "FULL_HEALTH": 4, "SHAPE": 5}
INTS = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
FLOATS16 = ["float16", "bfloat16"]
# The dtypes TF registers each CPU kernel for (anything else: skipped by ours).
TF_KERNELS = {
    "DebugNumericSummary": set(INTS + ["bool", "float32", "float64"]),
    "DebugNanCount": set(INTS + FLOATS16 + ["float32", "float64"]),
    "v2": set(INTS + FLOATS16 + ["bool", "float32", "float64"]),
}
DTYPES = INTS + FLOATS16 + ["float32", "float64", "bool", "complex64", "complex128"]
# "large" is summarised on the writer threads, the small ones on the TF thread
# (bridge/summaries.cc: kInlineMaxElements).
SHAPES = {"rand": (3, 5), "empty": (0, 3), "scalar": (), "rank7": (1, 2, 1, 3, 1, 2, 2), "large": (40, 50)}


def _values(dtype, shape, rng):
    np_dtype = tf.as_dtype(dtype).as_numpy_dtype
    n = int(np.prod(shape))
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype in INTS:
        info = np.iinfo(np_dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=np_dtype, endpoint=True)
    if dtype.startswith("complex"):
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np_dtype)
    v = (rng.standard_normal(n) * 3).astype(np.float64)
    if n >= 4:
        v[rng.choice(n, 4, replace=False)] = [np.nan, np.inf, -np.inf, 0.0]
    if n >= 100:  # mostly finite, to the end: many summands for mean and variance
        v[rng.choice(n, n // 10, replace=False)] = 0.0
    v = v.reshape(shape).astype(np_dtype)
    if n >= 8 and dtype in ("float32", "float64", "float16"):
        # subnormals: TF's kernels run with denormals flushed to zero
        tiny = np.finfo(np_dtype).tiny
        v.reshape(-1)[-4:] = np.array([tiny / 4, -tiny / 8, tiny, -tiny], dtype=np.float64).astype(np_dtype)
    return v


def _graph():
    g = tf.Graph()
    feeds = {}
    with g.as_default():
        for dtype in DTYPES:
            for case, shape in SHAPES.items():
                p = tf1.placeholder(dtype, shape=None, name=f"p_{dtype}_{case}")
                feeds[(dtype, case)] = (p, tf.identity(p, name=f"t_{dtype}_{case}"), shape)
    return g, feeds


def _reference(sess, feeds, feed_dict, debug_op, attrs):
    """TF's kernel output per watched node, for the dtypes it supports."""
    ops = {}
    with sess.graph.as_default():
        for (dtype, case), (_, t, _) in feeds.items():
            name = t.op.name
            if debug_op == "DebugNumericSummary" and dtype in TF_KERNELS[debug_op]:
                ops[name] = gen_debug_ops.debug_numeric_summary(t, tensor_name=name + ":0", **attrs)
            elif debug_op == "DebugNanCount" and dtype in TF_KERNELS[debug_op]:
                ops[name] = gen_debug_ops.debug_nan_count(t, tensor_name=name + ":0")
            elif debug_op in HEALTH and dtype in TF_KERNELS["v2"]:
                ops[name] = gen_debug_ops.debug_numeric_summary_v2(
                    t, tensor_debug_mode=HEALTH[debug_op], output_dtype=tf.float64)
    return sess.run(ops, feed_dict=feed_dict)


def _attr_string(attrs):
    return ";".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in attrs.items())


CONFIGS = [
    ("DebugNumericSummary", {}),
    ("DebugNumericSummary", {"lower_bound": -1.5, "upper_bound": 2.25}),
    ("DebugNumericSummary", {"mute_if_healthy": True}),
    ("DebugNumericSummary", {"lower_bound": 0.5, "mute_if_healthy": True}),
    ("DebugNanCount", {}),
    ("CURT_HEALTH", {}),
    ("CONCISE_HEALTH", {}),
    ("FULL_HEALTH", {}),
    ("SHAPE", {}),
]


def test_bit_exact_against_tf_kernels_on_every_dtype(tmp_path):
    """Every numeric dtype (and bool, complex), random values with nan and
    +-inf, empty, 0-d and rank-7 tensors, every attribute: the stored record
    is byte-identical to TF's kernel output; dtypes TF has no kernel for are
    skipped and counted; muted summaries are absent exactly when TF mutes."""
    rng = np.random.default_rng(7)
    g, feeds = _graph()
    feed_dict = {p: _values(dtype, shape, rng) for (dtype, _), (p, _, shape) in feeds.items()}
    fetches = [t for _, t, _ in feeds.values()]
    with tf1.Session(graph=g) as sess:
        references = [_reference(sess, feeds, feed_dict, debug_op,
                                 {k: v for k, v in attrs.items() if k != "mute_if_healthy"})
                      for debug_op, attrs in CONFIGS]
    for i, (debug_op, attrs) in enumerate(CONFIGS):
        spelled = f"{debug_op}({_attr_string(attrs)})" if attrs else debug_op
        root = str(tmp_path / str(i))
        wrapped = DumpingDebugWrapperSession(
            tf1.Session(graph=g), root, watch_fn=lambda f, fd, op=spelled: tf_debug.WatchOptions(
                debug_ops=[op], node_name_regex_allowlist="^t_"))
        wrapped.run(fetches, feed_dict=feed_dict)
        wrapped.flush()  # summaries are computed by the writer threads
        stats = wrapped.stats()
        wrapped.close()
        reference = references[i]
        run = DumpReader(root).runs[0]
        assert run.status == "complete"
        got = {r.node_name: r for r in run.records}
        assert {r.debug_op for r in run.records} <= {debug_op}
        muted = 0
        for node, ref in reference.items():
            if attrs.get("mute_if_healthy") and ref[2] == 0 and ref[3] == 0 and ref[7] == 0:
                assert node not in got, (spelled, node)
                muted += 1
                continue
            rec = got.pop(node)
            assert rec.dtype_name == ref.dtype.name and rec.shape == ref.shape, (spelled, node)
            assert rec.value.tobytes() == ref.tobytes(), (spelled, node, rec.value, ref)
        assert got == {}, (spelled, sorted(got))  # nothing for dtypes TF cannot summarise
        unsupported = len(feeds) - len(reference)
        assert unsupported > 0  # complex at least
        assert stats["summaries_skipped"] == unsupported, spelled
        assert stats["summaries_muted"] == muted == run.muted_tensors, spelled
        assert run.dropped_tensors == 0 and run.missing_tensors == 0
        assert DumpReader(root).verify() == []


def _loop_graph():
    """A ref variable (read uninitialized in the first run), a tf1 while loop
    (Enter / Merge / Switch / NextIteration ... internals, watched per
    iteration) with TensorLists (variants) and a resource variable, a nan."""
    v2 = tf1.control_flow_v2_enabled()
    tf1.disable_control_flow_v2()  # read while the loop is built; restored below
    try:
        return _build_loop_graph()
    finally:
        if v2:
            tf1.enable_control_flow_v2()


def _build_loop_graph():
    g = tf.Graph()
    with g.as_default():
        x = tf1.placeholder(tf.float32, [None], name="x")
        v = tf1.get_variable("v", initializer=tf.constant([1.0, -2.0]), use_resource=False)
        r = tf1.get_variable("r", initializer=tf.constant(2.0), use_resource=True)
        lst = tf.raw_ops.EmptyTensorList(element_shape=tf.constant([-1], tf.int32), max_num_elements=-1,
                                         element_dtype=tf.float32)

        def body(i, a, lst):
            a = a * r + 1.0
            return i + 1, a, tf.raw_ops.TensorListPushBack(input_handle=lst, tensor=a)

        _, a, lst = tf.while_loop(lambda i, a, lst: i < 3, body, [tf.constant(0), x, lst], name="loop")
        stacked = tf.raw_ops.TensorListStack(input_handle=lst, element_shape=tf.constant([-1]),
                                             element_dtype=tf.float32, name="stacked")
        y = tf.math.log(stacked, name="y")  # nan for negative inputs
        out = tf.reduce_sum(y, name="out") + tf.reduce_sum(tf1.identity(v, name="vread"))
        init = tf1.global_variables_initializer()
    return g, x, v, out, init


def _drive(wrapper_cls, root, debug_ops):
    g, x, v, out, init = _loop_graph()
    with g.as_default():
        sess = tf1.Session(graph=g)
        wrapped = wrapper_cls(sess, root, watch_fn=lambda f, fd: tf_debug.WatchOptions(debug_ops=list(debug_ops)))
        error = None
        for fetch, feed in ((init, None), (out, {x: [1.0, -4.0]})):  # init: v read uninitialized
            try:
                result = wrapped.run(fetch, feed_dict=feed)
            except tf.errors.OpError as exc:
                result = exc
            if isinstance(result, tf.errors.OpError):  # tfdbg's wrapper returns the error
                error = error or result
        if hasattr(wrapped, "flush"):
            wrapped.flush()
        stats = wrapped.stats() if hasattr(wrapped, "stats") else None
        if hasattr(wrapped, "close"):
            wrapped.close()
        sess.close()
    return error, stats


def test_loop_and_variant_graph_fails_under_tf_kernel_but_not_ours(tmp_path):
    error, _ = _drive(tf_debug.DumpingDebugWrapperSession, str(tmp_path / "ref"), ["DebugNumericSummary"])
    assert error is not None and "DebugNumericSummary" in str(error)
    error, stats = _drive(DumpingDebugWrapperSession, str(tmp_path / "ours"), ["DebugNumericSummary"])
    assert error is None
    assert stats["summaries_skipped"] > 0  # variants, resources
    runs = DumpReader(str(tmp_path / "ours")).runs
    assert [r.status for r in runs] == ["complete", "complete"]
    run = runs[1]
    keys = {k.node for k in run.watch_keys}
    assert {"loop/Enter", "loop/Merge", "loop/NextIteration", "y", "v"} <= keys
    assert len(run.get("loop/mul", 0, "DebugNumericSummary")) == 3  # every iteration
    # find: the summary of y counts a nan; y's own record is float64 counts
    hits = run.find(has_inf_or_nan)
    assert "y" in {h.node_name for h in hits}
    assert all(summary_has_inf_or_nan("DebugNumericSummary", h.value) for h in hits)


def test_convert_writes_what_tfdbg_writes(tmp_path):
    """Where TF's kernel works (floats, loop internals of float dtype, the
    uninitialized ref variable), convert writes tfdbg's file names and values,
    mute_if_healthy included."""
    allow = "float32"  # tfdbg's kernel fails the step on variants, resources
    for ops in (["DebugNumericSummary", "DebugNanCount"],
                ["DebugNumericSummary(mute_if_healthy=true;upper_bound=3.0)"]):
        ref, ours = str(tmp_path / "ref"), str(tmp_path / "ours")
        for cls, root in ((tf_debug.DumpingDebugWrapperSession, ref), (DumpingDebugWrapperSession, ours)):
            g, x, v, out, init = _loop_graph()
            with g.as_default():
                sess = tf1.Session(graph=g)
                wrapped = cls(sess, root, watch_fn=lambda f, fd: tf_debug.WatchOptions(
                    debug_ops=ops, tensor_dtype_regex_allowlist=allow, node_name_regex_allowlist="^(?!loop/).*"))
                wrapped.run(init)  # uninitialized ref variable
                wrapped.run(out, feed_dict={x: [1.0, -4.0]})
                if hasattr(wrapped, "close"):
                    wrapped.close()
                sess.close()
        ref_dirs = sorted(os.path.join(ref, d) for d in os.listdir(ref))
        our_dirs = convert(ours, str(tmp_path / "converted"))
        assert len(ref_dirs) == len(our_dirs) == 2
        uninitialized = dumps = 0
        for ref_dir, our_dir in zip(ref_dirs, our_dirs):
            da, db = debug_data.DebugDumpDir(ref_dir), debug_data.DebugDumpDir(our_dir)
            dumps += da.size
            assert _files(ref_dir) == _files(our_dir)
            for d in da.dumped_tensor_data:
                (mine,) = db.watch_key_to_data(d.watch_key)
                assert mine.get_tensor().tobytes() == d.get_tensor().tobytes(), d.watch_key
                if d.debug_op == "DebugNumericSummary" and d.get_tensor()[0] == 0:
                    uninitialized += 1
        assert dumps > 0
        if "mute_if_healthy" not in ops[0]:
            assert uninitialized > 0
        else:  # muted: the healthy ones are absent, the nan / out-of-bound ones are there
            assert 0 < dumps < 4 + 7  # DebugNumericSummary watches of the two runs
        for path in (ref, ours, str(tmp_path / "converted")):
            shutil.rmtree(path)


def _files(run_dir):
    """Dump file names without their timestamps, as (folder, name) pairs."""
    out = []
    for folder, _, names in os.walk(run_dir):
        for name in names:
            if not name.startswith("_tfdbg_"):
                out.append((os.path.relpath(folder, run_dir), name.rsplit("_", 1)[0]))
    return sorted(out)


def test_find_judges_summaries_by_their_counts(tmp_path):
    """An empty tensor's summary holds min=+inf and mean=nan but is healthy;
    a tensor with an inf is found through every mode that counts it."""
    g = tf.Graph()
    with g.as_default():
        p = tf1.placeholder(tf.float32, None, name="p")
        q = tf1.placeholder(tf.float32, None, name="q")
        a, b = tf.identity(p, name="healthy_empty"), tf.identity(q, name="with_inf")
        sess = tf1.Session(graph=g)
        root = str(tmp_path / "s")
        wrapped = DumpingDebugWrapperSession(sess, root, watch_fn=lambda f, fd: tf_debug.WatchOptions(
            debug_ops=["DebugNumericSummary", "DebugNanCount", "CURT_HEALTH", "CONCISE_HEALTH", "FULL_HEALTH",
                       "SHAPE"], node_name_regex_allowlist="^(healthy_empty|with_inf)$"))
        wrapped.run([a, b], feed_dict={p: np.zeros([0], np.float32), q: [1.0, np.inf]})
        wrapped.close()
        sess.close()
    run = DumpReader(root).runs[0]
    empty = run.get("healthy_empty", 0, "DebugNumericSummary")[0]
    assert np.isinf(empty[8]) and np.isnan(empty[10])  # TF's layout for an empty tensor
    hits = {(h.node_name, h.debug_op) for h in run.find(has_inf_or_nan)}
    assert hits == {("with_inf", op) for op in ("DebugNumericSummary", "CURT_HEALTH", "CONCISE_HEALTH",
                                                "FULL_HEALTH")}
    # called directly, the predicate agrees with the vectorized search
    assert {(r.node_name, r.debug_op) for r in run.records if has_inf_or_nan(r, r.value)} == hits
    assert run.find(has_inf_or_nan, first_n=1)[0].node_name == "with_inf"


@pytest.mark.parametrize("op, message", [
    ("CURT_HEALTH(x=1)", "health mode CURT_HEALTH takes no attributes"),
    ("DebugNumericSummary(lower_bound=low)", "lower_bound='low' is not a valid float"),
    ("DebugNumericSummary(mute_if_healthy=maybe)", "true or false"),
    ("FULL_HEALTHY", "unknown debug op 'FULL_HEALTHY'.*FULL_HEALTH"),
])
def test_bad_summary_debug_ops_are_named(tmp_path, op, message):
    g = tf.Graph()
    with g.as_default():
        c = tf.constant(1.0, name="c")
        sess = tf1.Session(graph=g)
        wrapped = DumpingDebugWrapperSession(sess, str(tmp_path), watch_fn=lambda f, fd: tf_debug.WatchOptions(
            debug_ops=[op]))
        with pytest.raises(TfdumpUsageError, match=message):
            wrapped.run(c)
        wrapped.close()
        sess.close()
